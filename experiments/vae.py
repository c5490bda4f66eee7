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

from collapse_jax import data
from collapse_jax.core import cli
from collapse_jax.families import vae

_D = vae.VAEConfig()
FLAGS = flags.FlagValues()
cli.define_common_flags(FLAGS, _D, 'runs/vae', vae.PRESETS)
data.define_flag(FLAGS)
flags.DEFINE_string('mnist_dir', _D.mnist_dir, 'Directory of the MNIST IDX files (gzip or '
                    "not); empty: the data directory's mnist/.", flag_values=FLAGS)
flags.DEFINE_string('classifier_cache', _D.classifier_cache, 'Where the digit classifier '
                    'is kept once trained.', flag_values=FLAGS)
flags.DEFINE_integer('samples', _D.samples, 'Images each generation trains on.', flag_values=FLAGS)
flags.DEFINE_integer('latent', _D.latent, 'Latent dimensions.', flag_values=FLAGS)
flags.DEFINE_integer('epochs', _D.epochs, 'Epochs per generation.', flag_values=FLAGS)
flags.DEFINE_integer('batch', _D.batch, 'Batch size.', flag_values=FLAGS)
flags.DEFINE_float('lr', _D.lr, 'Adam learning rate.', flag_values=FLAGS)
flags.DEFINE_float('weight_decay', _D.weight_decay, 'L2 weight decay added to the gradient.',
                   flag_values=FLAGS)
flags.DEFINE_integer('eval_images', _D.eval_images, 'Generated images measured per generation.',
                     flag_values=FLAGS)
flags.DEFINE_integer('test_images', _D.test_images, 'Real test images for the negative ELBO.',
                     flag_values=FLAGS)
flags.DEFINE_integer('preferred_digit', _D.preferred_digit, "The reward's digit: --score=reward "
                     'is log P(digit | image) under the digit classifier.', flag_values=FLAGS)
flags.DEFINE_bool('fresh_batches', _D.fresh_batches, 'Under replace, decode every batch of a '
                  "synthetic generation fresh from the previous generation (the released "
                  'notebook); --nofresh_batches: train on a fixed set of --samples images '
                  'decoded once (as other regimes do).', flag_values=FLAGS)

_FIELDS = {f: f for f in cli.COMMON + ('samples', 'latent', 'epochs', 'batch', 'lr',
                                        'weight_decay', 'eval_images', 'test_images', 'fresh_batches',
                                        'data_dir', 'mnist_dir', 'classifier_cache',
                                        'preferred_digit')}


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""

  def run():
    cfg = cli.preset_config(vae.VAEConfig, vae.PRESETS, FLAGS.preset,
                            FLAGS, _FIELDS)
    fields = {**vars(cfg), **cli.regime_fields(FLAGS, vae.VAEConfig)}
    vae.run(vae.VAEConfig(**fields), FLAGS.workdir)
  cli.main(FLAGS, run, argv)


if __name__ == '__main__':
  main()
