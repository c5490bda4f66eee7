"""The paper's VAE experiment: a convolutional VAE on MNIST, each generation trained
from scratch on images decoded from the previous generation's prior samples.

  python -m experiments.vae                     # 8 seeds x 20 generations
  python -m experiments.vae --preset=small      # minutes on a CPU
  python -m experiments.vae --data_dir=DIR      # MNIST in DIR/mnist (default: $COLLAPSE_JAX_DATA)
  python -m experiments.vae --preset=small --regime=replace,verify,curate --keep_fraction=0.5 \
      --score=gen0                              # verify: the best half by generation 0's ELBO
  python -m experiments.vae --regime=curate --score=reward --preferred_digit=0 --reward_scale=1,4

MNIST comes from the data directory (python -m collapse_jax.data download mnist fills it).
"""

from absl import flags

from collapse_jax.core import cli
from collapse_jax.families import vae

FLAGS = flags.FlagValues()
cli.define_flags(FLAGS, vae.VAEConfig, 'runs/vae', vae.PRESETS)


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""
  cli.experiment_main(FLAGS, vae.VAEConfig, vae.PRESETS, vae.run, argv)


if __name__ == '__main__':
  main()
