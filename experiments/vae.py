"""The paper's VAE experiment: a convolutional VAE on MNIST, each generation trained
from scratch on images decoded from the previous generation's prior samples.

  python -m experiments.vae --mnist_dir=../shared/data/mnist           # 8 seeds x 20 generations
  python -m experiments.vae --preset=small --mnist_dir=../shared/data/mnist   # minutes on a CPU
"""

import os

from absl import app, flags, logging

from collapse_jax import cli, driver, vae

_D = vae.VAEConfig()
FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', 'runs/vae', 'Where checkpoints, metrics.csv and figures go; '
                    'rerunning with the same flags resumes there.')
flags.DEFINE_enum('preset', 'paper', ['paper', 'small'], "paper: the paper's protocol; "
                  f'small: {vae.SMALL}. Flags given explicitly override the preset.')
flags.DEFINE_string('mnist_dir', _D.mnist_dir, 'Directory of the MNIST IDX files (gzip or '
                    'not); empty: tensorflow-datasets.')
flags.DEFINE_string('classifier_cache', _D.classifier_cache, 'Where the digit classifier '
                    'is kept once trained.')
flags.DEFINE_integer('seeds', _D.seeds, 'Independent runs, trained together.')
flags.DEFINE_integer('generations', _D.generations, 'Generations after the first.')
flags.DEFINE_integer('samples', _D.samples, 'Images each generation trains on.')
flags.DEFINE_integer('latent', _D.latent, 'Latent dimensions.')
flags.DEFINE_integer('epochs', _D.epochs, 'Epochs per generation.')
flags.DEFINE_integer('batch', _D.batch, 'Batch size.')
flags.DEFINE_float('lr', _D.lr, 'Adam learning rate.')
flags.DEFINE_float('weight_decay', _D.weight_decay, 'L2 weight decay added to the gradient.')
flags.DEFINE_integer('eval_images', _D.eval_images, 'Generated images measured per generation.')
flags.DEFINE_integer('test_images', _D.test_images, 'Real test images for the negative ELBO.')
flags.DEFINE_list('regime', list(_D.regimes), f'Comma-separated regimes: {", ".join(driver.REGIMES)}.')
flags.DEFINE_list('real_fraction', [str(f) for f in _D.real_fractions],
                  'Comma-separated fractions of real data, for the regimes mix and fresh.')
flags.DEFINE_integer('checkpoint_every', _D.checkpoint_every, 'Generations between checkpoints.')
flags.DEFINE_integer('cpu_devices', os.cpu_count() or 1, 'On a CPU, split it into this many '
                     'devices so the batch of runs uses every core (0: leave it as it is).')
flags.DEFINE_integer('first_seed', _D.first_seed, 'Seeds are first_seed, first_seed + 1, ...')

_FIELDS = {f: f for f in ('seeds', 'generations', 'samples', 'latent', 'epochs', 'batch', 'lr',
                          'weight_decay', 'eval_images', 'test_images', 'checkpoint_every',
                          'first_seed', 'mnist_dir', 'classifier_cache')}


def main(argv):
  del argv
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # checkpointing is chatty at INFO
  cli.split_cpu(FLAGS.cpu_devices)
  try:
    cfg = cli.preset_config(vae.VAEConfig, {'paper': {}, 'small': vae.SMALL}, FLAGS.preset,
                            FLAGS, _FIELDS)
    cfg = vae.VAEConfig(**{
        **vars(cfg), 'regimes': tuple(FLAGS.regime),
        'real_fractions': cli.parse_floats('real_fraction', FLAGS.real_fraction)})
    vae.run(cfg, FLAGS.workdir)
  except driver.ConfigError as e:
    cli.fail(e)


if __name__ == '__main__':
  app.run(main)
