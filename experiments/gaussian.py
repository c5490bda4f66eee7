"""The paper's theory, simulated: a Gaussian refitted on M of its own samples.

  python -m experiments.gaussian                   # 1,000 seeds x 1,000 generations, M = 100 .. 10,000
  python -m experiments.gaussian --estimator=unbiased --dims=5 --samples=50,500
  python -m experiments.gaussian --dims=100 --samples=10 --generations=100   # M <= d: singular fits
  python -m experiments.gaussian --preset=small    # a CPU-sized run in seconds
"""

from absl import flags

from collapse_jax.core import cli
from collapse_jax.families import gaussian

FLAGS = flags.FlagValues()
cli.define_flags(FLAGS, gaussian.GaussianConfig, 'runs/gaussian', gaussian.PRESETS)


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""
  cli.experiment_main(FLAGS, gaussian.GaussianConfig, gaussian.PRESETS, gaussian.run, argv)


if __name__ == '__main__':
  main()
