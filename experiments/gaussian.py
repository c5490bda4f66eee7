"""The paper's theory, simulated: a Gaussian refitted on M of its own samples.

  python -m experiments.gaussian                   # 1,000 seeds x 1,000 generations, M = 100 .. 10,000
  python -m experiments.gaussian --estimator=mle --dims=5 --samples=50,500
  python -m experiments.gaussian --preset=small    # a CPU-sized run in seconds
"""

import os

from absl import app, flags, logging

from collapse_jax import cli, driver, gaussian

_D = gaussian.GaussianConfig()
FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', 'runs/gaussian', 'Where checkpoints, curves.csv and figures go; '
                    'rerunning with the same flags resumes there.')
flags.DEFINE_enum('preset', 'paper', ['paper', 'small'], "paper: the paper's protocol; "
                  f'small: {gaussian.SMALL}. Flags given explicitly override the preset.')
flags.DEFINE_integer('seeds', _D.seeds, 'Independent runs, all in one program.')
flags.DEFINE_integer('generations', _D.generations, 'Generations after the first fit.')
flags.DEFINE_list('samples', [str(m) for m in _D.samples],
                  'Comma-separated sample sizes M: each generation fits M samples.')
flags.DEFINE_integer('dims', _D.dims, 'Dimension of the Gaussian.')
flags.DEFINE_enum('estimator', _D.estimator, list(gaussian.ESTIMATORS),
                  'Covariance divisor: unbiased (M - 1, the paper\'s Theorem 3.1) or mle (M).')
flags.DEFINE_list('regime', list(_D.regimes), f'Comma-separated regimes: {", ".join(driver.REGIMES)}.')
flags.DEFINE_list('real_fraction', [str(f) for f in _D.real_fractions],
                  'Comma-separated fractions of real data, for the regimes mix and fresh.')
flags.DEFINE_float('true_mean', _D.true_mean, 'Mean of the true distribution, in every dimension.')
flags.DEFINE_float('true_std', _D.true_std, 'Standard deviation of the true distribution.')
flags.DEFINE_integer('checkpoint_every', _D.checkpoint_every, 'Generations between checkpoints.')
flags.DEFINE_integer('cpu_devices', os.cpu_count() or 1, 'On a CPU, split it into this many '
                     'devices so the batch of runs uses every core (0: leave it as it is).')
flags.DEFINE_integer('first_seed', _D.first_seed, 'Seeds are first_seed, first_seed + 1, ...')
flags.DEFINE_bool('per_seed_csv', _D.per_seed_csv, 'Also write metrics.csv, one row per seed '
                  'and generation (large: about 80 MB per million rows).')

_FIELDS = {f: f for f in ('seeds', 'generations', 'dims', 'estimator', 'true_mean', 'true_std',
                          'checkpoint_every', 'first_seed', 'per_seed_csv', 'samples')}


def main(argv):
  del argv
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # checkpointing is chatty at INFO
  cli.split_cpu(FLAGS.cpu_devices)
  try:
    cfg = cli.preset_config(gaussian.GaussianConfig, {'paper': {}, 'small': gaussian.SMALL},
                            FLAGS.preset, FLAGS, _FIELDS)
    cfg = gaussian.GaussianConfig(**{
        **vars(cfg), 'regimes': tuple(FLAGS.regime),
        'samples': cli.parse_ints('samples', FLAGS.samples if FLAGS['samples'].present
                                  else cfg.samples),
        'real_fractions': cli.parse_floats('real_fraction', FLAGS.real_fraction)})
    gaussian.run(cfg, FLAGS.workdir)
  except driver.ConfigError as e:
    cli.fail(e)


if __name__ == '__main__':
  app.run(main)
