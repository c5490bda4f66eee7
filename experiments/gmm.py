"""The paper's GMM experiment: a 2-component mixture refitted on its own samples.

  python -m experiments.gmm --seeds=64
  python -m experiments.gmm --regime=replace,accumulate-subsample,mix --real_fraction=0.1,0.5
  python -m experiments.gmm --preset=small     # a CPU-sized run in seconds
"""

from absl import app, flags

from collapse_jax import cli, gmm

_D = gmm.GMMConfig()
FLAGS = flags.FLAGS
cli.define_common_flags(_D, 'runs/gmm', gmm.SMALL)
flags.DEFINE_integer('samples', _D.samples, 'Samples each generation is fitted on.')
flags.DEFINE_integer('components', _D.components, 'Mixture components fitted.')
flags.DEFINE_float('tol', _D.tol, 'EM stops when the mean log-likelihood changes less.')
flags.DEFINE_integer('max_iter', _D.max_iter, 'EM iterations at most.')
flags.DEFINE_float('reg_covar', _D.reg_covar, 'Added to covariance diagonals.')
flags.DEFINE_integer('heldout', _D.heldout, 'Held-out original samples scored each generation.')
flags.DEFINE_string('true_means', ';'.join(','.join(str(v) for v in m) for m in _D.true_means),
                    "Means of the true mixture's components, 'x,y;x,y'.")
flags.DEFINE_float('true_std', _D.true_std, 'Standard deviation of each true component.')

_FIELDS = {f: f for f in cli.COMMON + ('samples', 'components', 'tol', 'max_iter', 'reg_covar',
                                        'heldout', 'true_std')}


def main(argv):
  del argv

  def run():
    cfg = cli.preset_config(gmm.GMMConfig, {'paper': {}, 'small': gmm.SMALL}, FLAGS.preset,
                            FLAGS, _FIELDS)
    gmm.run(gmm.GMMConfig(**{**vars(cfg), **cli.regime_fields(FLAGS),
                             'true_means': cli.parse_points('true_means', FLAGS.true_means)}),
            FLAGS.workdir)
  cli.main(run)


if __name__ == '__main__':
  app.run(main)
