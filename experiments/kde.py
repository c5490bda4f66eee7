"""A Gaussian kernel density estimator refitted on its own samples, on 2-D targets.

  python -m experiments.kde                 # moons, h = 0.1, N = 1,000, 1,000 seeds x 100 gens
  python -m experiments.kde --target=circles --bandwidth_rule=silverman
  python -m experiments.kde --regime=replace,accumulate-subsample,fresh --real_fraction=0.1
  python -m experiments.kde --target=blobs --regime=verify --score=truth --keep_fraction=0.5,0.9
  python -m experiments.kde --preset=small  # a CPU-sized run, about a minute
"""

from absl import flags

from collapse_jax.core import cli
from collapse_jax.families import kde

FLAGS = flags.FlagValues()
cli.define_flags(FLAGS, kde.KDEConfig, 'runs/kde', kde.PRESETS)


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""
  cli.experiment_main(FLAGS, kde.KDEConfig, kde.PRESETS, kde.run, argv)


if __name__ == '__main__':
  main()
