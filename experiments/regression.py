"""Linear regression refitted on its own labels: model collapse in closed form.

  python -m experiments.regression                  # d = 100, T = 500, 1,000 seeds x 100 gens
  python -m experiments.regression --preset=small   # d = 10, T = 50, OLS and ridge 0.1: a CPU run
  python -m experiments.regression --ridge=0,0.1,1 --alpha=1.5   # penalties in one program
  python -m experiments.regression --inputs=same --regime=replace,accumulate,mix --real_fraction=0.1

Generation 0 fits least squares to T samples (x, x w* + noise); generation n to T samples
labelled by generation n - 1's fit plus fresh noise. Under replace the test error grows by
sigma^2 d / (T - d - 1) a generation; kept, the data hold it below pi^2/6 times the first.
"""

from absl import flags

from collapse_jax.core import cli
from collapse_jax.families import regression

_D = regression.RegressionConfig()
FLAGS = flags.FlagValues()
cli.define_common_flags(FLAGS, _D, 'runs/regression', regression.PRESETS)
flags.DEFINE_integer('samples', _D.samples, 'Samples T each generation is fitted on.',
                     flag_values=FLAGS)
flags.DEFINE_integer('dims', _D.dims, 'Input dimensions d.', flag_values=FLAGS)
flags.DEFINE_float('alpha', _D.alpha, "The inputs' spectrum: variances lam_i = i^-alpha "
                   '(0: isotropic; the scaling-law studies take alpha > 1).', flag_values=FLAGS)
flags.DEFINE_float('noise', _D.noise,
                   'Standard deviation sigma of the label noise, real and synthetic.',
                   flag_values=FLAGS)
flags.DEFINE_list('ridge', [f'{r:g}' for r in _D.ridges], 'Comma-separated ridge penalties, '
                  'all in one compiled program (0: ordinary least squares); each fit minimises '
                  'the mean squared error plus ridge x |w|^2.', flag_values=FLAGS)
flags.DEFINE_enum('inputs', _D.inputs, list(regression.INPUTS), 'fresh: new inputs every '
                  'generation; same: one design of T inputs, drawn from --design_seed, for every '
                  'generation and seed.', flag_values=FLAGS)
flags.DEFINE_integer('design_seed', _D.design_seed, 'The seed of the design of --inputs=same.',
                     flag_values=FLAGS)
flags.DEFINE_float('reward_target', _D.reward_target, '--score=reward: the reward of a sample '
                   'is -(y - c)^2 for its label y and c this value.', flag_values=FLAGS)

_FIELDS = {f: f for f in cli.COMMON + ('samples', 'dims', 'alpha', 'noise', 'inputs',
                                        'design_seed', 'reward_target')}


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""

  def run():
    cfg = cli.preset_config(regression.RegressionConfig, regression.PRESETS, FLAGS.preset, FLAGS,
                            _FIELDS)
    ridges = FLAGS.ridge if FLAGS['ridge'].present else cfg.ridges
    regression.run(regression.RegressionConfig(
        **{**vars(cfg), **cli.regime_fields(FLAGS, regression.RegressionConfig),
           'ridges': cli.parse_floats('ridge', ridges)}), FLAGS.workdir)
  cli.main(FLAGS, run, argv)


if __name__ == '__main__':
  main()
