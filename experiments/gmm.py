"""The paper's GMM experiment: a 2-component mixture refitted on its own samples.

  python -m experiments.gmm --seeds=64
  python -m experiments.gmm --regime=replace,accumulate-subsample,mix --real_fraction=0.1,0.5
  python -m experiments.gmm --preset=small     # a CPU-sized run in seconds
"""

import os

from absl import app, flags, logging

from collapse_jax import cli, driver, gmm

_D = gmm.GMMConfig()
FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', 'runs/gmm', 'Where checkpoints, metrics.csv and figures go; '
                    'rerunning with the same flags resumes there.')
flags.DEFINE_enum('preset', 'paper', ['paper', 'small'], 'paper: the paper\'s protocol; '
                  f'small: {gmm.SMALL}. Flags given explicitly override the preset.')
flags.DEFINE_integer('seeds', _D.seeds, 'Independent runs, all in one program.')
flags.DEFINE_integer('generations', _D.generations, 'Generations after the first fit.')
flags.DEFINE_integer('samples', _D.samples, 'Samples each generation is fitted on.')
flags.DEFINE_list('regime', list(_D.regimes), f'Comma-separated regimes: {", ".join(driver.REGIMES)}.')
flags.DEFINE_list('real_fraction', [str(f) for f in _D.real_fractions],
                  'Comma-separated fractions of real data, for the regimes mix and fresh.')
flags.DEFINE_integer('components', _D.components, 'Mixture components fitted.')
flags.DEFINE_float('tol', _D.tol, 'EM stops when the mean log-likelihood changes less.')
flags.DEFINE_integer('max_iter', _D.max_iter, 'EM iterations at most.')
flags.DEFINE_float('reg_covar', _D.reg_covar, 'Added to covariance diagonals.')
flags.DEFINE_integer('heldout', _D.heldout, 'Held-out original samples scored each generation.')
flags.DEFINE_string('true_means', ';'.join(','.join(str(v) for v in m) for m in _D.true_means),
                    "Means of the true mixture's components, 'x,y;x,y'.")
flags.DEFINE_float('true_std', _D.true_std, 'Standard deviation of each true component.')
flags.DEFINE_integer('checkpoint_every', _D.checkpoint_every, 'Generations between checkpoints.')
flags.DEFINE_integer('cpu_devices', os.cpu_count() or 1, 'On a CPU, split it into this many '
                     'devices so the batch of runs uses every core (0: leave it as it is).')
flags.DEFINE_integer('first_seed', _D.first_seed, 'Seeds are first_seed, first_seed + 1, ...')

_FIELDS = {f: f for f in ('seeds', 'generations', 'samples', 'components', 'tol', 'max_iter',
                          'reg_covar', 'heldout', 'true_std', 'checkpoint_every', 'first_seed')}


def main(argv):
  del argv
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # checkpointing is chatty at INFO
  cli.split_cpu(FLAGS.cpu_devices)
  try:
    cfg = cli.preset_config(gmm.GMMConfig, {'paper': {}, 'small': gmm.SMALL}, FLAGS.preset,
                            FLAGS, _FIELDS)
    cfg = gmm.GMMConfig(**{
        **vars(cfg), 'regimes': tuple(FLAGS.regime),
        'real_fractions': cli.parse_floats('real_fraction', FLAGS.real_fraction),
        'true_means': cli.parse_points('true_means', FLAGS.true_means)})
    gmm.run(cfg, FLAGS.workdir)
  except driver.ConfigError as e:
    cli.fail(e)


if __name__ == '__main__':
  app.run(main)
