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

from collapse_jax.core import cli
from collapse_jax.families import flow

FLAGS = flags.FlagValues()
cli.define_flags(FLAGS, flow.FlowConfig, 'runs/flow', flow.PRESETS)


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""
  cli.experiment_main(FLAGS, flow.FlowConfig, flow.PRESETS, flow.run, argv)


if __name__ == '__main__':
  main()
