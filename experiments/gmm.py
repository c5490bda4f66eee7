"""The paper's GMM experiment: a 2-component mixture refitted on its own samples.

  python -m experiments.gmm --seeds=64            # the released notebook's protocol: truth N(0, I)
  python -m experiments.gmm --preset=two-blobs    # truth: two unit Gaussians at (-2, 0) and (2, 0)
  python -m experiments.gmm --regime=replace,accumulate-subsample,mix --real_fraction=0.1,0.5
  python -m experiments.gmm --preset=small        # a CPU-sized run in seconds
"""

from absl import flags

from collapse_jax.core import cli
from collapse_jax.families import gmm

FLAGS = flags.FlagValues()
cli.define_flags(FLAGS, gmm.GMMConfig, 'runs/gmm', gmm.PRESETS)


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""
  cli.experiment_main(FLAGS, gmm.GMMConfig, gmm.PRESETS, gmm.run, argv)


if __name__ == '__main__':
  main()
