"""Flow matching on 2-D targets, each generation trained from scratch on the last one's samples.

  python -m experiments.flow                 # ring, replace: 16 seeds x 40 generations (GPU-sized)
  python -m experiments.flow --preset=small  # replace, fresh 0.5, augment 0.1, 0.5: a CPU, minutes
  python -m experiments.flow --target=moons --regime=replace,fresh --real_fraction=0.25,0.5
  python -m experiments.flow --regime=augment --synthetic_ratio=0.1,0.5
  python -m experiments.flow --regime=verify --score=self   # ranked by the flow's own log density

A velocity MLP v(x, t) is fitted by conditional flow matching (linear paths from N(0, I))
and sampled by integrating dx/dt = v in --ode_steps Euler or midpoint steps. Each generation
is measured against the truth by MMD^2, sliced W2, k-NN precision and recall, and the
mass in each of the target's 8 regions.
"""

from absl import flags

from collapse_jax.core import cli, regimes
from collapse_jax.families import flow

_D = flow.FlowConfig()
FLAGS = flags.FlagValues()
cli.define_common_flags(FLAGS, _D, 'runs/flow', flow.PRESETS)
flags.DEFINE_enum('target', _D.target, list(flow.TARGETS), 'The truth: 8 Gaussians on a ring of '
                  'radius 2, two moons, or a 4 x 4 checkerboard over [-2, 2]^2.', flag_values=FLAGS)
flags.DEFINE_float('noise', _D.noise, 'ring: the standard deviation of each Gaussian; moons: of '
                   'the noise around the half circles (the checkerboard has none).',
                   flag_values=FLAGS)
flags.DEFINE_integer('samples', _D.samples, 'Samples each generation draws and trains on.',
                     flag_values=FLAGS)
flags.DEFINE_integer('hidden', _D.hidden, 'Width of the velocity MLP.', flag_values=FLAGS)
flags.DEFINE_integer('layers', _D.layers, 'Hidden layers of the velocity MLP.', flag_values=FLAGS)
flags.DEFINE_integer('time_features', _D.time_features, 'Sinusoidal features of t (even).',
                     flag_values=FLAGS)
flags.DEFINE_integer('steps', _D.steps, 'Adam steps per generation.', flag_values=FLAGS)
flags.DEFINE_integer('batch', _D.batch, 'Rows per step, drawn with probability proportional '
                     'to their weights.', flag_values=FLAGS)
flags.DEFINE_float('lr', _D.lr, 'Adam learning rate, decayed along a cosine to a twentieth.',
                   flag_values=FLAGS)
flags.DEFINE_integer('ode_steps', _D.ode_steps, 'Solver steps from noise to a sample (and back, '
                     'for the log density).', flag_values=FLAGS)
flags.DEFINE_enum('solver', _D.solver, list(flow.SOLVERS), 'The ODE solver.', flag_values=FLAGS)
flags.DEFINE_bool('warm_start', _D.warm_start, 'Under replace, train each generation on from the '
                  "previous generation's weights instead of from scratch.", flag_values=FLAGS)
flags.DEFINE_integer('eval_samples', _D.eval_samples, 'Samples measured per generation (at '
                     'most --samples), against as many of the truth.', flag_values=FLAGS)
flags.DEFINE_integer('knn', _D.knn, 'k of the k-NN balls of precision and recall.',
                     flag_values=FLAGS)
flags.DEFINE_float('mmd_bandwidth', _D.mmd_bandwidth, 'Bandwidth of the Gaussian kernel of the '
                   'MMD.', flag_values=FLAGS)
flags.DEFINE_float('cover_fraction', _D.cover_fraction, 'A region counts as covered when it '
                   'holds at least this share of its true mass (1/8).', flag_values=FLAGS)
flags.DEFINE_list('reward_target', [], "--score=reward: the reward is -|x - c|^2 for this point "
                  "c, 'x,y' (empty: the centre of the target's region 0).", flag_values=FLAGS)

_FIELDS = {f: f for f in cli.COMMON + (
    'target', 'noise', 'samples', 'hidden', 'layers', 'time_features', 'steps', 'batch', 'lr',
    'ode_steps', 'solver', 'warm_start', 'eval_samples', 'knn', 'mmd_bandwidth',
    'cover_fraction')}
_FLAG = {'regimes': 'regime', 'real_fractions': 'real_fraction', **regimes.OPTION_FLAGS}


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""

  def run():
    cfg = cli.preset_config(flow.FlowConfig, flow.PRESETS, FLAGS.preset, FLAGS, _FIELDS)
    given = cli.regime_fields(FLAGS, flow.FlowConfig)
    if not FLAGS['regime'].present:  # the preset's regimes and settings, where not given
      preset = flow.PRESETS[FLAGS.preset]
      given = {k: v for k, v in given.items() if FLAGS[_FLAG[k]].present or k not in preset}
    fields = {**vars(cfg), **given}
    if FLAGS['reward_target'].present:
      fields['reward_target'] = cli.parse_floats('reward_target', FLAGS.reward_target)
    flow.run(flow.FlowConfig(**fields), FLAGS.workdir)
  cli.main(FLAGS, run, argv)


if __name__ == '__main__':
  main()
