"""The VAE: loss terms against closed forms, training, and a generation loop that resumes exactly."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from collapse_jax import data
from collapse_jax.core import results, validation
from collapse_jax.data import mnist
from collapse_jax.families import vae
from collapse_jax.nets import conv_vae
from conftest import assert_tempered_groups_share_generation_0


def test_kl_matches_a_monte_carlo_estimate():
  mean = jnp.array([[0.5, -1.0, 0.0]])
  logvar = jnp.array([[0.0, -1.5, 0.7]])
  z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(jax.random.key(0), (400_000, 3))
  log_q = -0.5 * jnp.sum((z - mean) ** 2 / jnp.exp(logvar) + logvar + jnp.log(2 * jnp.pi), -1)
  log_p = -0.5 * jnp.sum(z**2 + jnp.log(2 * jnp.pi), -1)
  np.testing.assert_allclose(jnp.mean(log_q - log_p), conv_vae.kl_to_prior(mean, logvar)[0], rtol=1e-2)
  assert conv_vae.kl_to_prior(jnp.zeros((1, 4)), jnp.zeros((1, 4)))[0] == 0.0


def test_bce_from_logits_equals_the_probability_form():
  logits = jax.random.normal(jax.random.key(1), (3, 784)) * 6
  x = jax.random.uniform(jax.random.key(2), (3, 784))
  p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
  x64 = np.asarray(x, np.float64)
  expected = -np.sum(x64 * np.log(p) + (1 - x64) * np.log1p(-p), axis=-1)
  np.testing.assert_allclose(conv_vae.bce_sum(logits, x), expected, rtol=1e-5)


def test_the_matmul_convolutions_are_the_strided_and_transposed_ones():
  """down_conv is Conv2d(4, stride 2, padding 1); up_conv is its adjoint, ConvTranspose2d."""
  x = jax.random.normal(jax.random.key(3), (2, 14, 14, 3))
  kernel = jax.random.normal(jax.random.key(4), (4, 4, 3, 5))
  conv = lambda x: jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),  # noqa: E731
                                                dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(conv_vae.down_conv(x, kernel), conv(x), atol=1e-5)
  y = jax.random.normal(jax.random.key(5), (2, 7, 7, 5))
  _, adjoint = jax.vjp(conv, x)
  np.testing.assert_allclose(conv_vae.up_conv(y, kernel.transpose(0, 1, 3, 2)), adjoint(y)[0], atol=1e-5)


def _tiny(**change):
  base = dict(seeds=2, generations=2, samples=256, epochs=1, batch=64, eval_images=100,
              test_images=100)  # MNIST from the data directory ($COLLAPSE_JAX_DATA)
  return vae.VAEConfig(**{**base, **change})


@pytest.mark.e2e
def test_training_lowers_the_loss_on_real_digits():
  x, _ = mnist.load('train', data.require('mnist'))
  x = jnp.asarray(x[:512])
  w = jnp.ones(512)
  one = vae.fit(vae.TrainConfig(epochs=1, batch=64), x, w, jax.random.key(0))[1]['train_loss']
  four = vae.fit(vae.TrainConfig(epochs=4, batch=64), x, w, jax.random.key(0))[1]['train_loss']
  assert 100 < four < one < 600  # nats per image; an untrained model scores about 543


@pytest.fixture(scope='session')
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('cache') / 'mlp.npz')


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory, cache):
  """A finished run of the tiny protocol: 2 seeds, 2 generations of fresh batches."""
  workdir = str(tmp_path_factory.mktemp('tiny'))
  vae.run(_tiny(classifier_cache=cache), workdir, progress=False, log=lambda _: None)
  return workdir


@pytest.mark.e2e
def test_generation_loop_is_finite_and_resumes_exactly(tmp_path, cache, tiny_run):
  cfg = _tiny(classifier_cache=cache)
  shutil.copytree(tiny_run, tmp_path, dirs_exist_ok=True)
  first = (tmp_path / 'metrics.csv').read_text()
  table = pd.read_csv(tmp_path / 'metrics.csv')
  assert len(table) == 2 * 3 and np.isfinite(table.select_dtypes('number').to_numpy()).all()
  np.testing.assert_allclose(table.filter(like='class_').drop(columns='class_entropy_bits')
                             .sum(axis=1), 1.0, rtol=1e-5)
  for name in ('curves.png', 'samples.png', 'latent_hist.png', 'summary.txt'):
    assert (tmp_path / name).stat().st_size > 0
  # kill after generation 1: the last checkpoint gone, the run resumes from generation 1
  shutil.rmtree(tmp_path / 'checkpoints' / 'replace' / '2')
  vae.run(cfg, str(tmp_path), progress=False, log=lambda _: None)
  assert (tmp_path / 'metrics.csv').read_text() == first


@pytest.mark.e2e
def test_the_run_reads_back_as_one_table(tiny_run):
  table = results.load(tiny_run)
  assert (table['experiment'] == 'vae').all() and (table['latent'] == 20).all()
  metrics = pd.read_csv(os.path.join(tiny_run, 'metrics.csv'))
  pd.testing.assert_frame_equal(table[metrics.columns].astype({'seed': int}), metrics)


def test_defaults_are_the_released_notebooks_protocol():
  """Adam(lr 1e-3, weight_decay 1e-5), batch 256, 30 epochs of 235 batches (the last of 96
  images), latent 20, every synthetic batch decoded fresh by the previous generation."""
  cfg = vae.VAEConfig()
  assert (cfg.lr, cfg.weight_decay, cfg.batch, cfg.epochs, cfg.latent, cfg.samples) == (
      1e-3, 1e-5, 256, 30, 20, 60_000)
  data = {'train': jnp.zeros((1, conv_vae.PIXELS))}
  assert cfg.fresh_batches and vae.family(cfg, data).make(data).refit is not None
  assert vae.family(_tiny(fresh_batches=False), data).make(data).refit is None
  assert -(-cfg.samples // cfg.batch) == 235 and cfg.samples - 234 * cfg.batch == 96


@pytest.mark.e2e
def test_fresh_batches_are_new_decoder_outputs():
  cfg = vae.TrainConfig(batch=8)
  params = vae.init(conv_vae.VAE(cfg.latent), jax.random.key(0))
  a = vae.decoded_batch(cfg, params, jax.random.key(1))
  b = vae.decoded_batch(cfg, params, jax.random.key(2))
  np.testing.assert_allclose(a, vae.generate(cfg.latent, params, jax.random.key(1), 8), atol=1e-6)
  assert a.shape == (8, conv_vae.PIXELS) and float(jnp.max(jnp.abs(a - b))) > 0.01
  assert bool(jnp.all((a > 0) & (a < 1)))  # probabilities, used as the targets themselves


def test_a_temperature_widens_the_latent_prior_and_one_changes_nothing():
  """Tempered at t, the latents drawn have variance inside the 99.9% chi-square interval of
  t^2 (1 and t outside), and the images are the decoder's of those latents, in generate and
  in a fresh batch alike; at t = 1 the images are the untempered ones, bit for bit."""
  from scipy import stats  # noqa: PLC0415
  cfg = vae.TrainConfig(batch=8)
  params = vae.init(conv_vae.VAE(cfg.latent), jax.random.key(0))
  t, n = 1.25, 5000
  hot = vae.tempered(params, {'temperature': jnp.float32(t)})
  own, z_NxL = vae.prior_draws(hot, jax.random.key(1), n, cfg.latent)
  assert jax.tree.structure(own) == jax.tree.structure(params)
  dof = n * cfg.latent
  lo, hi = (stats.chi2.ppf(q, dof) / dof for q in (0.0005, 0.9995))
  var = float(jnp.mean(z_NxL**2))
  assert lo <= var / t**2 <= hi and not lo <= var / t <= hi and not lo <= var <= hi, var
  decode = lambda z: jax.nn.sigmoid(conv_vae.VAE(cfg.latent).apply(  # noqa: E731
      {'params': params}, z, method=conv_vae.VAE.decode))
  z8 = t * jax.random.normal(jax.random.key(2), (8, cfg.latent))
  np.testing.assert_allclose(vae.generate(cfg.latent, hot, jax.random.key(2), 8), decode(z8),
                             atol=1e-6)
  np.testing.assert_allclose(vae.decoded_batch(cfg, hot, jax.random.key(2)), decode(z8),
                             atol=1e-6)
  same = vae.tempered(params, {'temperature': jnp.float32(1.0)})
  np.testing.assert_array_equal(vae.generate(cfg.latent, same, jax.random.key(3), 8),
                                vae.generate(cfg.latent, params, jax.random.key(3), 8))


@pytest.mark.heavy  # a whole run of every group: the tempered law's unit tests stay fast
def test_a_temperature_sweep_runs_as_three_groups(tmp_path, cache):
  """temperatures (0.8, 1, 1.25) through run(): a temperature column and three groups of
  runs, generation 0 the same in each (its fit precedes any sampling), generation 1 not."""
  cfg = _tiny(generations=1, samples=128, eval_images=64, test_images=64,
              classifier_cache=cache, temperatures=(0.8, 1.0, 1.25))
  table = vae.run(cfg, str(tmp_path), progress=False, log=lambda _: None)
  assert_tempered_groups_share_generation_0(table, 'test_nelbo', 'train_loss')


@pytest.mark.e2e
def test_fresh_and_fixed_synthetic_data_share_generation_0_only(tmp_path, cache, tiny_run):
  fresh = pd.read_csv(os.path.join(tiny_run, 'metrics.csv'))
  fixed = vae.run(_tiny(generations=1, classifier_cache=cache, fresh_batches=False),
                  str(tmp_path), progress=False, log=lambda _: None)
  for name in ('latent_std', 'test_nelbo', 'train_loss'):
    np.testing.assert_allclose(fresh[name][:2], fixed[name][:2], rtol=1e-6)  # generation 0
    assert np.all(fresh[name][2:4] != fixed[name][2:]), name


@pytest.mark.heavy  # the science at CPU size: 1,024 images, 2 epochs a generation
def test_generated_digits_drift_toward_the_latent_centre(tmp_path, cache):
  """The paper's VAE finding at CPU size: the generation-0 encoder's latent means
  of generated digits spread less with each generation trained on samples."""
  cfg = _tiny(seeds=1, samples=1024, epochs=2, eval_images=500, test_images=200,
              classifier_cache=cache)
  table = vae.run(cfg, str(tmp_path), progress=False, log=lambda _: None)
  std_G = table['latent_std']
  assert std_G[2] < std_G[1] < std_G[0], std_G


def test_bad_configs_name_their_flag():
  with pytest.raises(validation.ConfigError, match='--eval_images'):
    _tiny(eval_images=1000).validate()
  with pytest.raises(validation.ConfigError, match='--samples'):
    _tiny(samples=32).validate()  # fewer than a batch
  with pytest.raises(validation.ConfigError, match='--samples'):
    vae.load_data(_tiny(samples=70_000, batch=64))


def test_epoch_order_draws_rows_in_proportion_to_their_weights():
  w_N = jnp.asarray([0.0] * 4 + [1.0] * 8 + [4.0] * 8)
  picks = jax.vmap(lambda k: vae.epoch_order(k, w_N, 4))(jax.random.split(jax.random.key(0), 2000))
  counts = np.bincount(np.asarray(picks).ravel(), minlength=20)
  assert counts[:4].sum() == 0 and all(len(set(p)) == 4 for p in np.asarray(picks[:50]))
  assert counts[12:].sum() > 2.5 * counts[4:12].sum()  # about 3.6x: four picks of 8 light, 8 heavy
  equal = jnp.where(w_N > 0, 1.0, 0.0)  # equal weights: the uniform keys' order, as always
  u = jax.random.uniform(jax.random.key(3), (20,))
  np.testing.assert_array_equal(vae.epoch_order(jax.random.key(3), equal, 6),
                                jax.lax.top_k(jnp.where(equal > 0, u, -1.0), 6)[1])


@pytest.mark.e2e
def test_verify_keeps_the_images_generation_0_finds_likeliest(tmp_path, cache):
  """Generation 1 trains on the better half, by generation 0's ELBO, of generation 0's
  images: their mean ELBO is above that of generation 0's samples as a whole, by about 8
  nats after one epoch on 256 images, where a random half would be within a nat."""
  cfg = _tiny(classifier_cache=cache, seeds=1, generations=1, regimes=('verify',),
              keep_fractions=(0.5,))  # --score=gen0, the VAE's default
  vae.run(cfg, str(tmp_path), progress=False, log=lambda _: None)
  table = pd.read_csv(tmp_path / 'metrics.csv').set_index('generation')
  assert table.loc[1, 'train_score'] > table.loc[0, 'sample_score'] + 3  # nats per image
  assert table.loc[1, 'pass_rate'] == 0.5 and table.loc[0, 'pass_rate'] == 1.0
  assert (table['score'] == 'gen0').all() and (table['keep_fraction'] == 0.5).all()
  rewards = vae.digit_log_prob(vae.load_data(cfg)['classifier'], 3, jnp.zeros((2, 784)))
  assert rewards.shape == (2,) and bool(jnp.all(rewards < 0))


def test_scores_the_vae_has_not_are_refused_in_one_line():
  with pytest.raises(validation.ConfigError, match="--score: 'truth' is not a score"):
    _tiny(regimes=('verify',), score='truth').validate()
  with pytest.raises(validation.ConfigError, match='--preferred_digit'):
    _tiny(preferred_digit=10).validate()
  assert _tiny(regimes=('verify',)).active_score(('verify',)) == 'gen0'
