"""The paper's GMM experiment: a 2-component mixture refitted on its own samples.

  python -m experiments.gmm --seeds=64            # the released notebook's protocol: truth N(0, I)
  python -m experiments.gmm --preset=two-blobs    # truth: two unit Gaussians at (-2, 0) and (2, 0)
  python -m experiments.gmm --regime=replace,accumulate-subsample,mix --real_fraction=0.1,0.5
  python -m experiments.gmm --preset=small        # a CPU-sized run in seconds
"""

from absl import flags

from collapse_jax.core import cli
from collapse_jax.families import gmm


def _points(points) -> str:
  return ';'.join(','.join(f'{v:g}' for v in p) for p in points)


_D = gmm.GMMConfig()
FLAGS = flags.FlagValues()
cli.define_common_flags(FLAGS, _D, 'runs/gmm', gmm.PRESETS)
flags.DEFINE_integer('samples', _D.samples, 'Samples each generation is fitted on.',
                     flag_values=FLAGS)
flags.DEFINE_integer('components', _D.components, 'Mixture components fitted.', flag_values=FLAGS)
flags.DEFINE_float('tol', _D.tol, 'EM stops when the mean log-likelihood changes less.',
                   flag_values=FLAGS)
flags.DEFINE_integer('max_iter', _D.max_iter, 'EM iterations at most.', flag_values=FLAGS)
flags.DEFINE_float('reg_covar', _D.reg_covar, 'Added to covariance diagonals.', flag_values=FLAGS)
flags.DEFINE_integer('heldout', _D.heldout, 'Held-out original samples scored each generation.',
                     flag_values=FLAGS)
flags.DEFINE_list('true_weights', [], "Weights of the true mixture's components, summing to 1 "
                  '(empty: equal).', flag_values=FLAGS)
flags.DEFINE_string('true_means', _points(_D.true_means),
                    "Means of the true mixture's components, 'x,y;x,y'.", flag_values=FLAGS)
flags.DEFINE_string('true_covs', '', "Covariances of the true mixture's components, each D x D "
                    "row-major, 'a,b,c,d;a,b,c,d' (empty: true_std^2 I for every component).",
                    flag_values=FLAGS)
flags.DEFINE_float('true_std', _D.true_std, 'Standard deviation of each true component, when '
                   '--true_covs is empty.', flag_values=FLAGS)
flags.DEFINE_list('reward_target', [], "--score=reward: the reward is -|x - c|^2 for this point "
                  'c (empty: 1 in every dimension).', flag_values=FLAGS)

_FIELDS = {f: f for f in cli.COMMON + ('samples', 'components', 'tol', 'max_iter', 'reg_covar',
                                        'heldout', 'true_std')}


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""

  def run():
    cfg = cli.preset_config(gmm.GMMConfig, gmm.PRESETS, FLAGS.preset, FLAGS, _FIELDS)
    truth = {'true_weights': cli.parse_floats('true_weights', FLAGS.true_weights),
             'true_means': cli.parse_points('true_means', FLAGS.true_means),
             'true_covs': cli.parse_points('true_covs', FLAGS.true_covs),
             'reward_target': cli.parse_floats('reward_target', FLAGS.reward_target)}
    truth = {k: v for k, v in truth.items() if FLAGS[k].present}  # else the preset's
    gmm.run(gmm.GMMConfig(**{**vars(cfg), **cli.regime_fields(FLAGS, gmm.GMMConfig), **truth}),
            FLAGS.workdir)
  cli.main(FLAGS, run, argv)


if __name__ == '__main__':
  main()
