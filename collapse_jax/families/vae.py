"""The paper's convolutional VAE on MNIST, trained generation after generation on its own samples.

Images are rows of 784 pixels in [0, 1] (x_NxD, D = 784), so the driver's
regimes apply unchanged; the network sees them as 28 x 28 x 1 (NHWC).
"""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from collapse_jax import data
from collapse_jax.core import checkpoints, experiment, files, knobs, plots, protocol, validation
from collapse_jax.core.settings import setting
from collapse_jax.data import mnist
from collapse_jax.nets.conv_vae import PIXELS, VAE, Classifier, neg_elbo_B

# ---------------------------------------------------------------- training

@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The paper's optimiser: Adam, lr 1e-3, weight decay 1e-5 (added to the gradient,
  as PyTorch's Adam does), batch 256, 30 epochs, loss summed over the batch."""
  latent: int = 20
  epochs: int = 30
  batch: int = 256
  lr: float = 1e-3
  weight_decay: float = 1e-5

  def optimizer(self):
    return optax.chain(optax.add_decayed_weights(self.weight_decay), optax.adam(self.lr))


def init(model: VAE, key):
  return model.init(key, jnp.zeros((1, PIXELS)), jax.random.key(0))['params']


def train_step(model: VAE, tx, params, opt_state, x_BxD, key, w_B=None):
  """One Adam step on a batch (rows weighted by w_B: 0 pads a short last batch); returns
  the new state and the batch's loss per image."""
  w_B = jnp.ones(x_BxD.shape[0]) if w_B is None else w_B
  loss_fn = lambda p: jnp.sum(w_B * neg_elbo_B(model, p, x_BxD, key))
  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss / jnp.sum(w_B)


def _train(cfg: TrainConfig, rows: int, batches, key):
  """A VAE trained from scratch for cfg.epochs epochs of ceil(rows / batch) steps, the
  last short when the batch does not divide `rows` (a PyTorch DataLoader's epoch).

  batches(epoch_key) -> (s, step_key) -> x_BxD: an epoch's batches. Returns (params,
  {'train_loss': mean loss per image over the last epoch}).
  """
  model, tx = VAE(cfg.latent), cfg.optimizer()
  init_key, data_key = jax.random.split(key)
  params = init(model, init_key)
  opt_state = tx.init(params)
  steps = -(-rows // cfg.batch)

  def epoch(e, state):
    params, opt_state, _ = state
    epoch_key = jax.random.fold_in(data_key, e)
    batch = batches(epoch_key)

    def step(s, state):
      params, opt_state, total = state
      step_key = jax.random.fold_in(epoch_key, s)
      w_B = (s * cfg.batch + jnp.arange(cfg.batch) < rows).astype(jnp.float32)
      params, opt_state, loss = train_step(model, tx, params, opt_state,
                                           batch(s, jax.random.fold_in(step_key, 1)), step_key, w_B)
      return params, opt_state, total + loss * jnp.sum(w_B)
    return jax.lax.fori_loop(0, steps, step, (params, opt_state, 0.0))

  params, _, total = jax.lax.fori_loop(0, cfg.epochs, epoch, (params, opt_state, 0.0))
  return params, {'train_loss': total / rows}


def epoch_order(key, w_N, rows: int):
  """`rows` row indices drawn without replacement, in proportion to the weights w_N (0:
  never): the largest keys u^(1/w), u uniform, compared as log(u) / w (Efraimidis and
  Spirakis); equal weights rank by u itself."""
  u_N = jax.random.uniform(key, w_N.shape)
  live_N = w_N > 0
  equal = jnp.all(jnp.where(live_N, w_N == jnp.max(w_N), True))
  key_N = jnp.where(equal, u_N, jnp.log(u_N) / jnp.where(live_N, w_N, 1.0))
  return jax.lax.top_k(jnp.where(live_N, key_N, -jnp.inf), rows)[1]


def fit(cfg: TrainConfig, x_NxD, w_N, key, epoch_rows: int | None = None):
  """Trains a VAE from scratch on the rows of x with weight > 0.

  An epoch visits `rows` of them in a random order, without replacement: all of
  them, or for a pool or a larger set (augment's), `epoch_rows` (the size of one
  generation's data), drawn in proportion to their weights.
  """
  rows = epoch_rows or x_NxD.shape[0]
  steps = -(-rows // cfg.batch)

  def batches(epoch_key):
    order = jnp.zeros(steps * cfg.batch, jnp.int32).at[:rows].set(epoch_order(epoch_key, w_N, rows))
    return lambda s, _: x_NxD[jax.lax.dynamic_slice_in_dim(order, s * cfg.batch, cfg.batch)]
  return _train(cfg, rows, batches, key)


# The law sampled at temperature t: its latent prior N(0, t^2 I), the decoder unchanged;
# network(params): (the VAE's own params, t or None).
tempered, network = knobs.with_temperature, knobs.split_temperature


def prior_draws(params, key, n: int, latent: int):
  """(the VAE's own params, n latents z ~ N(0, t^2 I), t = 1 unless tempered), n x latent."""
  params, t = network(params)
  z_NxL = jax.random.normal(key, (n, latent))
  return params, z_NxL if t is None else t * z_NxL


def decoded_batch(cfg: TrainConfig, params, key):
  """A batch of images decoded from z ~ N(0, I) (N(0, t^2 I), tempered): the decoder's pixel
  probabilities."""
  params, z_BxL = prior_draws(params, key, cfg.batch, cfg.latent)
  return jax.nn.sigmoid(VAE(cfg.latent).apply({'params': params}, z_BxL, method=VAE.decode))


def fit_fresh(cfg: TrainConfig, params_prev, key, rows: int):
  """Trains a VAE from scratch on images decoded by `params_prev`, fresh for every batch:
  an epoch is as many batches as `rows` images would fill (the released notebook's
  synthetic generations)."""
  decode = lambda s, key: decoded_batch(cfg, params_prev, key)
  return _train(cfg, rows, lambda epoch_key: decode, key)


def generate(latent: int, params, key, n, chunk: int = 1000):
  """n images decoded from z ~ N(0, I) (N(0, t^2 I), tempered): the decoder's pixel
  probabilities."""
  model = VAE(latent)
  params, z_NxL = prior_draws(params, key, n, latent)
  decode = lambda z_L: model.apply({'params': params}, z_L[None], method=VAE.decode)[0]
  return jax.nn.sigmoid(jax.lax.map(decode, z_NxL, batch_size=min(chunk, n)))


def encode_means(latent: int, params, x_NxD, chunk: int = 1000):
  """Latent means of images under an encoder."""
  model = VAE(latent)
  enc = lambda x_D: model.apply({'params': params}, x_D[None], method=VAE.encode)[0][0]
  return jax.lax.map(enc, x_NxD, batch_size=min(chunk, x_NxD.shape[0]))


# ---------------------------------------------------------------- the digit classifier

def train_classifier(images_NxD, labels_N, key, epochs: int = 3, batch: int = 128):
  """Adam on cross-entropy; 3 epochs reach about 97% on MNIST's test set."""
  model, tx = Classifier(), optax.adam(1e-3)
  init_key, data_key = jax.random.split(key)
  params = model.init(init_key, jnp.zeros((1, PIXELS)))['params']
  steps = images_NxD.shape[0] // batch

  @jax.jit
  def epoch(params, opt_state, key, x_NxD, y_N):  # the data as arguments, not constants
    order = jax.random.permutation(key, x_NxD.shape[0])[:steps * batch].reshape(steps, batch)

    def step(state, idx):
      params, opt_state = state
      loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
          model.apply({'params': p}, x_NxD[idx]), y_N[idx]).mean()
      updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state)
      return (optax.apply_updates(params, updates), opt_state), None
    return jax.lax.scan(step, (params, opt_state), order)[0]

  opt_state = tx.init(params)
  for e in range(epochs):
    params, opt_state = epoch(params, opt_state, jax.random.fold_in(data_key, e), images_NxD,
                              labels_N)
  return params


def classify(params, x_NxD):
  return jnp.argmax(Classifier().apply({'params': params}, x_NxD), axis=-1)


# ---------------------------------------------------------------- scores

def elbo(latent: int, params, x_NxD, chunk: int = 1000):
  """The ELBO of each image (one z per image, the same noise for every model): a lower
  bound of its log-likelihood, the VAE's own density for verify and curate."""
  model, keys = VAE(latent), jax.random.split(jax.random.key(0), x_NxD.shape[0])
  return -jax.lax.map(lambda a: neg_elbo_B(model, params, a[0][None], a[1])[0], (x_NxD, keys),
                      batch_size=min(chunk, x_NxD.shape[0]))


def digit_log_prob(classifier, digit: int, x_NxD):
  """log P(digit | image) under the digit classifier: the reward of a preferred digit."""
  return jax.nn.log_softmax(Classifier().apply({'params': classifier}, x_NxD))[:, digit]


# ---------------------------------------------------------------- metrics

HIST_BINS, HIST_RANGE = 40, 4.0  # latent-mean histogram over [-4, 4]
GRID = 100  # images kept per generation for the sample grids


def evaluate(latent: int, params, synth_NxD, ref, data, eval_images: int):
  """What one generation's model and images show, seed by seed.

  The generation-0 encoder's latent means of `eval_images` generated images
  (mean, standard deviation, histogram); the negative ELBO of the real test
  images (one z per image, the same noise every generation); the classes the
  classifier sees in the generated images and their entropy; and the first
  GRID images.
  """
  x_NxD = synth_NxD[:eval_images]
  mu_NxL = encode_means(latent, ref['params0'], x_NxD)
  edges = jnp.linspace(-HIST_RANGE, HIST_RANGE, HIST_BINS + 1)
  hist = jnp.histogram(mu_NxL.reshape(-1), edges)[0] / mu_NxL.size
  nelbo_N = -elbo(latent, params, data['test'])
  freq_C = jnp.bincount(classify(data['classifier'], x_NxD), length=10) / x_NxD.shape[0]
  out = {'latent_std': jnp.std(mu_NxL), 'latent_mean': jnp.mean(mu_NxL),
         'test_nelbo': jnp.mean(nelbo_N),
         'class_entropy_bits': -jnp.sum(jnp.where(freq_C > 0, freq_C * jnp.log2(
             jnp.where(freq_C > 0, freq_C, 1.0)), 0.0)),
         'grid': synth_NxD[:GRID]}
  out.update({f'class_{c}': freq_C[c] for c in range(10)})
  out.update({f'hist_{i:02d}': hist[i] for i in range(HIST_BINS)})
  return out


# ---------------------------------------------------------------- the experiment

@dataclasses.dataclass(frozen=True)
class VAEConfig(experiment.SweepConfig):
  """The VAE experiment; defaults are the paper's protocol as its released notebook runs
  it: each batch of a synthetic generation decoded fresh by the previous generation
  (`fresh_batches`; else a fixed set of `samples` images decoded once).

  verify and curate rank images by their ELBO under the generation-0 model (gen0, the
  default: MNIST has no known density) or the model that drew them (self), or by the
  reward log P(preferred_digit | image) under the digit classifier.
  """
  DEFAULT_SCORE = 'gen0'
  seeds: int = 8
  generations: int = 20
  samples: int = setting(60_000, 'Images each generation trains on.')
  latent: int = setting(20, 'Latent dimensions.')
  epochs: int = setting(30, 'Epochs per generation.')
  batch: int = setting(256, 'Batch size.')
  lr: float = setting(1e-3, 'Adam learning rate.')
  weight_decay: float = setting(1e-5, 'L2 weight decay added to the gradient.')
  eval_images: int = setting(10_000, 'Generated images measured per generation.')
  test_images: int = setting(10_000, 'Real test images for the negative ELBO.')
  fresh_batches: bool = setting(True, 'Under replace, decode every batch of a synthetic '
                                'generation fresh from the previous generation (the released '
                                'notebook); --nofresh_batches: train on a fixed set of --samples '
                                'images decoded once (as other regimes do).')
  checkpoint_every: int = 1
  data_dir: str = setting('', data.DATA_DIR_HELP, recorded=False)  # for its mnist/
  mnist_dir: str = setting('', "Directory of the MNIST IDX files (gzip or not); empty: the data "
                           "directory's mnist/.", recorded=False)
  classifier_cache: str = setting('~/.cache/collapse_jax/mnist_mlp_v1.npz', 'Where the digit '
                                  'classifier is kept once trained.', recorded=False)
  preferred_digit: int = setting(0, "The reward's digit: --score=reward is log P(digit | image) "
                                 'under the digit classifier.')

  @property
  def train(self) -> TrainConfig:
    return TrainConfig(self.latent, self.epochs, self.batch, self.lr, self.weight_decay)

  def validate(self) -> 'VAEConfig':
    self.validate_sweep(min_samples=self.batch)
    checks = [('latent', self.latent >= 1, 'must be at least 1'),
              ('epochs', self.epochs >= 1, 'must be at least 1'),
              ('batch', self.batch >= 1, 'must be at least 1'),
              ('lr', self.lr > 0, 'must be positive'),
              ('weight_decay', self.weight_decay >= 0, 'must be non-negative'),
              ('eval_images', 1 <= self.eval_images <= self.samples,
               f'must be between 1 and --samples ({self.samples})'),
              ('test_images', 1 <= self.test_images <= 10_000, 'must be between 1 and 10000'),
              ('preferred_digit', 0 <= self.preferred_digit <= 9, 'must be a digit, 0 to 9')]
    validation.check_fields(self, checks)
    validation.validate_options(self, family(self, None).make(None))
    return self


SMALL = dict(seeds=2, generations=4, samples=2048, epochs=3, batch=64, eval_images=1000,
             test_images=1000)
PRESETS = {'paper': {}, 'small': SMALL}


def load_data(cfg: VAEConfig):
  """MNIST train and test images, checked against the config, and the classifier."""
  directory = cfg.mnist_dir or data.require('mnist', cfg.data_dir)
  train_x, train_y = mnist.load('train', directory)
  test_x, _ = mnist.load('test', directory)
  if cfg.samples > train_x.shape[0]:
    raise validation.ConfigError('samples', f'MNIST has {train_x.shape[0]} training images, '
                                 f'got {cfg.samples}')
  return {'train': jnp.asarray(train_x), 'test': jnp.asarray(test_x[:cfg.test_images]),
          'classifier': cached_classifier(cfg.classifier_cache, train_x, train_y)}


def cached_classifier(path: str, images_NxD, labels_N):
  """The digit classifier, trained once (seconds) and kept at `path` with its digest; a
  cache that fails the digest is trained again."""
  path = os.path.expanduser(path)
  if checkpoints.intact(path, 'training the classifier again'):
    flat = dict(np.load(path))
    return traverse_util.unflatten_dict({tuple(k.split('/')): jnp.asarray(v)
                                         for k, v in flat.items()})
  params = train_classifier(jnp.asarray(images_NxD), jnp.asarray(labels_N), jax.random.key(0))
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  flat = {'/'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
  files.write_file(path, lambda f: np.savez(f, **flat), binary=True)
  checkpoints.seal(path)
  return params


def family(cfg: VAEConfig, data) -> protocol.WithData:
  """The VAE as a driver family reading MNIST as shared data."""
  def make(data):  # data None: the functions unread, to see which scores there are
    def draw_real(key, n):
      return data['train'][jax.random.permutation(key, data['train'].shape[0])[:n]]
    return protocol.Family(
        draw_real=draw_real,
        fit=lambda x_NxD, w_N, key: fit(cfg.train, x_NxD, w_N, key, cfg.samples),
        refit=(lambda params, key, n: fit_fresh(cfg.train, params, key, n))
        if cfg.fresh_batches else None,
        sample=lambda params, key, n: generate(cfg.latent, params, key, n),
        reference=lambda params0, key: {'params0': params0},
        evaluate=lambda params, synth, ref: evaluate(cfg.latent, params, synth, ref, data,
                                                     cfg.eval_images),
        log_density=lambda params, x_NxD: elbo(cfg.latent, params, x_NxD),
        reward=lambda x_NxD: digit_log_prob(data['classifier'], cfg.preferred_digit, x_NxD),
        biased=tempered, sampling_knobs=('temperature',),
        one_at_a_time_on_cpu=True)  # vmapped convolutions cost more than a loop there
  return protocol.WithData(make, data)


SUMMARY_COLUMNS = ('latent_std', 'test_nelbo', 'class_entropy_bits', 'train_loss')
LEADING_COLUMNS = ('latent_std', 'latent_mean', 'test_nelbo', 'class_entropy_bits', 'train_loss')


def figures(cfg: VAEConfig, out: experiment.Outcome) -> None:
  """curves.png, samples.png (the first regime's first run) and latent_hist.png."""
  plots.curves(out.curves, [('latent_std', 'sd of generation-0 latent means', False),
                            ('test_nelbo', 'negative ELBO of real test images', False),
                            ('class_entropy_bits', 'entropy of generated classes (bits)', False)],
               out.path('curves.png'), title=f'VAE trained on its own samples, {cfg.seeds} seeds')
  plots.image_grids(out.kept[0][:, 0], out.path('samples.png'),
                    f'{cfg.regimes[0]}, seed {cfg.first_seed}')
  plots.latent_hists(out.curves, HIST_BINS, HIST_RANGE, out.path('latent_hist.png'))


def run(cfg: VAEConfig, workdir: str, progress: bool = True, log=print):
  """Runs, resumes or reloads the VAE experiment in `workdir`; returns its table.

  Leaves there: config.json, checkpoints/<regime>/ (one per generation),
  metrics.csv (one row per generation x seed x regime x real fraction, with the
  class frequencies and the latent-mean histogram), curves.png, samples.png,
  latent_hist.png and summary.txt.
  """
  cfg.validate()
  data = load_data(cfg)  # a missing dataset fails here, before anything is written
  exp = experiment.Experiment(
      'vae', lambda: family(cfg, data), SUMMARY_COLUMNS, generations=(1, 5, 10),
      first=LEADING_COLUMNS, set_aside=lambda sweep, m: (sweep, m, m.pop('grid')),
      figures=functools.partial(figures, cfg))
  return experiment.run_experiment(exp, cfg, workdir, progress, log).table
