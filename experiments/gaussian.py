"""The paper's theory, simulated: a Gaussian refitted on M of its own samples.

  python -m experiments.gaussian                   # 1,000 seeds x 1,000 generations, M = 100 .. 10,000
  python -m experiments.gaussian --estimator=unbiased --dims=5 --samples=50,500
  python -m experiments.gaussian --dims=100 --samples=10 --generations=100   # M <= d: singular fits
  python -m experiments.gaussian --preset=small    # a CPU-sized run in seconds
"""

from absl import flags

from collapse_jax.core import cli
from collapse_jax.families import gaussian

_D = gaussian.GaussianConfig()
FLAGS = flags.FlagValues()
cli.define_common_flags(FLAGS, _D, 'runs/gaussian', gaussian.PRESETS)
flags.DEFINE_list('samples', [str(m) for m in _D.samples],
                  'Comma-separated sample sizes M: each generation fits M samples.',
                  flag_values=FLAGS)
flags.DEFINE_integer('dims', _D.dims, 'Dimension of the Gaussian.', flag_values=FLAGS)
flags.DEFINE_enum('estimator', _D.estimator, list(gaussian.ESTIMATORS),
                  'Covariance divisor: mle (M, as the released figure code, np.std) or unbiased '
                  "(M - 1, the paper's Theorem 3.1).", flag_values=FLAGS)
flags.DEFINE_float('true_mean', _D.true_mean, 'Mean of the true distribution, in every dimension.',
                   flag_values=FLAGS)
flags.DEFINE_float('true_std', _D.true_std, 'Standard deviation of the true distribution.',
                   flag_values=FLAGS)
flags.DEFINE_float('reward_target', _D.reward_target, '--score=reward: the reward is '
                   '-|x - c|^2 for c this value in every dimension.', flag_values=FLAGS)
flags.DEFINE_bool('per_seed_csv', _D.per_seed_csv, 'Also write metrics.csv, one row per seed '
                  'and generation (large: about 80 MB per million rows).', flag_values=FLAGS)

_FIELDS = {f: f for f in cli.COMMON + ('samples', 'dims', 'estimator', 'true_mean', 'true_std',
                                        'reward_target', 'per_seed_csv')}


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""

  def run():
    cfg = cli.preset_config(gaussian.GaussianConfig, gaussian.PRESETS,
                            FLAGS.preset, FLAGS, _FIELDS)
    samples = FLAGS.samples if FLAGS['samples'].present else cfg.samples
    gaussian.run(gaussian.GaussianConfig(**{**vars(cfg), **cli.regime_fields(FLAGS, gaussian.GaussianConfig),
                                            'samples': cli.parse_ints('samples', samples)}),
                 FLAGS.workdir)
  cli.main(FLAGS, run, argv)


if __name__ == '__main__':
  main()
