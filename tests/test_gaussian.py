"""The Gaussian refitted on its own samples, against its closed forms."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import linalg, optimize, stats

from collapse_jax.core import driver, validation
from collapse_jax.families import gaussian

Z999 = 3.2905  # two-sided 99.9% normal quantile


def _simulate(tmp_path, regime='replace', estimator='unbiased', dims=1, samples=20,
              seeds=4000, generations=30):
  cfg = gaussian.GaussianConfig(seeds=seeds, generations=generations, samples=(samples,),
                                dims=dims, estimator=estimator, regimes=(regime,),
                                checkpoint_every=generations)
  metrics = driver.run(gaussian.family(cfg), cfg.sweep(regime, samples),
                       str(tmp_path / f'{regime}-{estimator}-{dims}'), generations, progress=False)
  theory = gaussian.theory(regime, estimator, samples, dims, cfg.true_std, generations)
  return metrics, theory


def _in_ci(values_S, expected, sd=None):
  """Whether the mean of values_S lies in the 99.9% interval around `expected`;
  sd: the exact per-seed standard deviation if known, else the sample's."""
  values_S = np.asarray(values_S, np.float64)
  sd = np.std(values_S, ddof=1) if sd is None else sd
  return abs(values_S.mean() - expected) <= Z999 * sd / np.sqrt(len(values_S))


@pytest.fixture(scope='session')
def unbiased(tmp_path_factory):
  return _simulate(tmp_path_factory.mktemp('unbiased'))


def test_log_det_follows_the_wishart_chain_and_an_off_by_one_fails(unbiased):
  """E log sigma_n^2 falls by psi((M-1)/2) + log(2/(M-1)) per fit (n = g + 1)."""
  metrics, theory = unbiased
  for g in (0, 1, 10, 30):
    assert _in_ci(metrics['logdet'][g], theory['logdet_mean'][g], theory['logdet_sd'][g]), g
  # the same check rejects a generation off by one, and the other estimator
  assert not _in_ci(metrics['logdet'][0], theory['logdet_mean'][1], theory['logdet_sd'][1])
  mle = gaussian.theory('replace', 'mle', 20, 1, 1.0, 30)
  assert not _in_ci(metrics['logdet'][0], mle['logdet_mean'][0], mle['logdet_sd'][0])


def test_unbiased_variance_is_a_martingale_and_the_mean_random_walks(unbiased):
  """E sigma_n^2 = sigma^2; E (mu_n - mu)^2 = n sigma^2 / M; the samples of
  generation n spread like sigma^2 (1 + n/M) (the paper's supplement)."""
  metrics, theory = unbiased
  for g in (0, 1, 5):  # later the variance is lognormal-like: its mean converges slowly
    assert _in_ci(metrics['trace'][g], theory['trace_mean'][g]), g
  for g in (0, 1, 10, 30):
    assert _in_ci(metrics['mean_error'][g] ** 2, theory['mean_error_rms'][g] ** 2), g
  for g in (0, 1, 10):
    assert _in_ci(metrics['sample_msd'][g], theory['sample_msd_mean'][g]), g
  np.testing.assert_allclose(theory['sample_msd_mean'], 1 + np.arange(1, 32) / 20)


def test_sigma_and_wasserstein_follow_their_closed_forms(unbiased):
  """E sigma_n = sigma a^n and E W2^2 = E (mu_n - mu)^2 + E (sigma_n - sigma)^2,
  growing without bound (Theorem 3.1)."""
  metrics, theory = unbiased
  for g in (0, 1, 10):
    assert _in_ci(metrics['sigma'][g], theory['sigma_mean'][g]), g
    assert _in_ci(metrics['w2_sq'][g], theory['w2_sq_mean'][g]), g
  long_run = gaussian.theory('replace', 'unbiased', 20, 1, 1.0, 10_000)['w2_sq_mean']
  assert long_run[-1] > 400 and np.all(np.diff(long_run) > 0)


def test_mle_variance_shrinks_geometrically(tmp_path):
  """E sigma_n^2 = sigma^2 ((M-1)/M)^n, and W2^2 stays below 2 sigma^2."""
  metrics, theory = _simulate(tmp_path, estimator='mle')
  np.testing.assert_allclose(theory['trace_mean'], (19 / 20) ** np.arange(1, 32))
  for g in (0, 1, 5):
    assert _in_ci(metrics['trace'][g], theory['trace_mean'][g]), g
  for g in (0, 1, 30):
    assert _in_ci(metrics['logdet'][g], theory['logdet_mean'][g], theory['logdet_sd'][g]), g
    assert _in_ci(metrics['mean_error'][g] ** 2, theory['mean_error_rms'][g] ** 2), g
  for g in (0, 1, 10):
    assert _in_ci(metrics['w2_sq'][g], theory['w2_sq_mean'][g]), g
  assert np.all(gaussian.theory('replace', 'mle', 20, 1, 1.0, 10_000)['w2_sq_mean'] < 2)


@pytest.mark.heavy  # 2,000 seeds
def test_accumulating_bounds_the_mean_error_by_pi_squared_over_six(tmp_path):
  metrics, theory = _simulate(tmp_path, regime='accumulate', samples=50)
  for g in (0, 1, 30):
    assert _in_ci(metrics['mean_error'][g] ** 2, theory['mean_error_rms'][g] ** 2), g
  assert theory['mean_error_rms'][-1] ** 2 < np.pi**2 / 6 / 50


@pytest.mark.heavy  # 2,000 seeds
def test_d_dimensional_log_det_and_mean(tmp_path):
  metrics, theory = _simulate(tmp_path, dims=3, seeds=2000, generations=20)
  for g in (0, 1, 20):
    assert _in_ci(metrics['logdet'][g], theory['logdet_mean'][g], theory['logdet_sd'][g]), g
    assert _in_ci(metrics['mean_error'][g] ** 2, theory['mean_error_rms'][g] ** 2), g
  for g in (0, 1):
    assert _in_ci(metrics['trace'][g], theory['trace_mean'][g]), g


# ---------------------------------------------------------------- pieces

def test_combined_statistics_equal_those_of_the_joined_data():
  x = jax.random.normal(jax.random.key(0), (30, 3)) * 0.01 + 5.0
  w = (jnp.arange(30) % 3 > 0).astype(jnp.float32)
  joined = gaussian.summarise(x, w)
  split = gaussian.combine(gaussian.summarise(x[:11], w[:11]), gaussian.summarise(x[11:], w[11:]))
  for k in joined:
    np.testing.assert_allclose(split[k], joined[k], rtol=1e-4, atol=1e-7)  # float32 at 5 +- 0.01
  cov = np.cov(np.asarray(x)[np.asarray(w) > 0].T)
  np.testing.assert_allclose(gaussian.covariance(gaussian.fit_summary(joined, 'unbiased')[0]), cov,
                             rtol=1e-3, atol=1e-7)


@pytest.mark.e2e
def test_running_summary_equals_fitting_the_whole_pool(tmp_path):
  cfg = gaussian.GaussianConfig(seeds=3, generations=12, samples=(16,), dims=2,
                                regimes=('accumulate',), checkpoint_every=12)
  # both from the same rows: the running summary of drawn statistics is tested in law below
  fam = dataclasses.replace(gaussian.family(cfg), sample_summary=None)
  sweep = cfg.sweep('accumulate', 16)
  running = driver.run(fam, sweep, str(tmp_path / 'a'), 12, progress=False)
  pooled = driver.run(dataclasses.replace(fam, summary=None), sweep, str(tmp_path / 'b'), 12,
                      progress=False)
  for k in running:
    np.testing.assert_allclose(running[k], pooled[k], rtol=2e-4, atol=1e-6, err_msg=k)


def test_wasserstein_distance_matches_matrix_square_roots():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(3, 3))
  cov, mean = a @ a.T + 0.1 * np.eye(3), rng.normal(size=3)
  stats = {'n': jnp.float32(2.0), 'mean': jnp.asarray(mean, jnp.float32),
           'scatter': jnp.asarray(cov, jnp.float32)}  # divided by n - 1 = 1
  params = gaussian.fit_summary(stats, 'unbiased')[0]
  np.testing.assert_allclose(gaussian.covariance(params), cov, rtol=1e-5, atol=1e-6)
  out = gaussian.evaluate(params, jnp.zeros((4, 3)), true_mean=0.5, true_std=1.5)
  true_cov = 1.5**2 * np.eye(3)
  root = linalg.sqrtm(linalg.sqrtm(true_cov) @ cov @ linalg.sqrtm(true_cov)).real
  expected = np.sum((mean - 0.5) ** 2) + np.trace(cov + true_cov - 2 * root)
  np.testing.assert_allclose(out['w2_sq'], expected, rtol=1e-4)
  np.testing.assert_allclose(out['logdet'], np.linalg.slogdet(cov)[1], rtol=1e-4)


@pytest.mark.parametrize('d', [1, 3])
def test_wasserstein_distance_is_exact_near_the_truth(d):
  """A fit 1e-4 off the truth's scale in each direction: W2^2 = d (1e-4 sigma)^2 + |err|^2,
  1e-8 against terms of order 1 that the trace form subtracts (float32 keeps 1e-7 of them)."""
  params = {'mean': jnp.full(d, 0.5 + 1e-5, jnp.float32), 'unit': jnp.eye(d),
            'log_scale': jnp.full(d, np.log(1.5 * (1 + 1e-4)), jnp.float32)}
  out = gaussian.evaluate(params, jnp.zeros((4, d)), true_mean=0.5, true_std=1.5)
  scale = float(np.exp(np.float32(np.log(1.5 * (1 + 1e-4)))))  # the scale float32 holds
  err = float(np.float32(0.5 + 1e-5)) - 0.5
  np.testing.assert_allclose(out['w2_sq'], d * ((scale - 1.5) ** 2 + err**2), rtol=1e-2)


@pytest.mark.parametrize('change, flag', [
    (dict(samples=(100, 1)), 'samples'), (dict(samples=()), 'samples'),
    (dict(estimator='median'), 'estimator'), (dict(true_std=0.0), 'true_std'),
    (dict(regimes=('replace', 'keep')), 'regime'), (dict(real_fractions=(0.5,)), 'real_fraction'),
    (dict(seeds=0), 'seeds')])
def test_bad_configs_name_their_flag(change, flag):
  with pytest.raises(validation.ConfigError, match=f'--{flag}'):
    gaussian.GaussianConfig(**change).validate()


@pytest.mark.e2e
def test_run_writes_curves_with_closed_forms_and_figures(tmp_path):
  cfg = gaussian.GaussianConfig(seeds=5, generations=6, samples=(8, 30), checkpoint_every=3,
                                regimes=('replace', 'mix'), real_fractions=(0.0, 0.5),
                                per_seed_csv=True)
  gaussian.run(cfg, str(tmp_path), progress=False, log=lambda _: None)
  curves = pd.read_csv(tmp_path / 'curves.csv')
  assert len(curves) == (1 + 2) * 2 * 7  # (replace + mix x 2 fractions) x 2 M x 7 generations
  assert set(curves.seeds) == {5}
  replace = curves[(curves.regime == 'replace') & (curves.samples == 8)]
  # mle: E|x - mu|^2 = (1 - r^n) + r^n = sigma^2 every generation, r = (M - 1) / M
  np.testing.assert_allclose(replace.sample_msd_mean_theory, 1.0, rtol=1e-6)
  assert curves[curves.regime == 'mix'].w2_sq_mean_theory.isna().all()
  per_seed = pd.read_csv(tmp_path / 'metrics.csv')
  assert len(per_seed) == 5 * 7 * 6
  for name in ('panels.png', 'w2.png', 'summary.txt'):
    assert (tmp_path / name).stat().st_size > 0


# ---------------------------------------------------------------- collapse followed as far as it goes

def test_the_default_estimator_is_the_released_figure_codes():
  assert gaussian.GaussianConfig().estimator == 'mle'  # np.std: divide by M


def test_a_fit_in_own_coordinates_is_the_fit_of_the_same_samples():
  """The fit to z, carried into the model's coordinates, is the fit to the samples mu + A z."""
  x = jax.random.normal(jax.random.key(0), (40, 3)) @ jnp.array([[1.0, 0, 0], [0.5, 2, 0], [0, 1, 0.3]])
  params, _ = gaussian.fit(x, jnp.ones(40), 'mle')
  key = jax.random.key(1)
  z = jax.random.normal(key, (40, 3))
  refit = gaussian.in_own_coordinates(params, gaussian.fit(z, jnp.ones(40), 'mle')[0])
  same = gaussian.sample(params, key, 40)  # the same z, through the same factor
  direct, _ = gaussian.fit(same, jnp.ones(40), 'mle')
  np.testing.assert_allclose(refit['mean'], direct['mean'], atol=1e-5)
  np.testing.assert_allclose(gaussian.covariance(refit), gaussian.covariance(direct), atol=2e-5)


def test_a_singular_fit_reports_rank_trace_and_pseudo_determinant():
  x = np.random.default_rng(0).normal(size=(5, 8))  # M = 5 <= d = 8: rank 4
  params, _ = gaussian.fit(jnp.asarray(x, jnp.float32), jnp.ones(5), 'mle')
  out = gaussian.evaluate(params, jnp.zeros((2, 8)), 0.0, 1.0)
  eig = np.linalg.eigvalsh(np.cov(x.T, ddof=0))
  assert int(out['rank']) == 4
  np.testing.assert_allclose(out['logdet'], np.sum(np.log(eig[-4:])), rtol=1e-4)
  np.testing.assert_allclose(out['trace'], eig.sum(), rtol=1e-5)
  root = linalg.sqrtm(np.cov(x.T, ddof=0)).real
  expected_w2 = np.sum(x.mean(0) ** 2) + np.trace(np.cov(x.T, ddof=0) + np.eye(8) - 2 * root)
  np.testing.assert_allclose(out['w2_sq'], expected_w2, rtol=1e-3)


@pytest.mark.parametrize('dims, samples, generations', [  # the longest and widest runs in e2e
    pytest.param(1, 10, 1000, marks=pytest.mark.e2e), (10, 32, 100),
    pytest.param(100, 10, 100, marks=pytest.mark.e2e)])
def test_collapse_is_followed_in_float32_to_the_end(tmp_path, dims, samples, generations):
  """Deep collapse ends with finite metrics: the variance far below float32's range in
  1-D, an ill-conditioned 10-D fit, a singular 100-D one (rank M - 1 throughout); where
  the log-determinant has a closed form, it still holds at the last generation."""
  seeds = 200 if dims == 1 else 4
  metrics, theory = _simulate(tmp_path, estimator='mle', dims=dims, samples=samples, seeds=seeds,
                              generations=generations)
  for name, v in metrics.items():
    assert np.all(np.isfinite(v)), name
  assert np.all(metrics['rank'] == min(dims, samples - 1))
  if dims == 1:  # e^-220: every variance underflowed float32 long ago, its logarithm did not
    assert np.all(metrics['trace'][-1] == 0.0)
    assert _in_ci(metrics['logdet'][-1], theory['logdet_mean'][-1], theory['logdet_sd'][-1])
    assert theory['logdet_mean'][-1] < -200
  elif samples > dims:
    assert np.all(np.abs(metrics['logdet'][-1] - theory['logdet_mean'][-1])
                  < 4 * theory['logdet_sd'][-1])


# ---------------------------------------------------------------- statistics drawn from their law

SEEDS = 4000  # per law: KS tests with p > 0.001 / quantities, so a wrong law fails them


def _same_law(a_SxK, b_SxK, p=1e-3):
  """Whether every column of a and b passes a two-sample KS test (Bonferroni over columns)."""
  a_SxK, b_SxK = np.asarray(a_SxK, np.float64), np.asarray(b_SxK, np.float64)
  return all(stats.ks_2samp(a_SxK[:, j], b_SxK[:, j]).pvalue > p / a_SxK.shape[1]
             for j in range(a_SxK.shape[1]))


def _entries(fit, n):
  """Every random entry of a batch of fits to n samples: the mean, and the log-scales and the
  unit factor's strictly lower part in the live columns (the first n - 1)."""
  d = fit['mean'].shape[-1]
  rows, cols = np.tril_indices(d, -1)
  live = cols < n - 1
  return np.concatenate([fit['mean'], fit['log_scale'][:, :n - 1],
                         fit['unit'][:, rows[live], cols[live]]], 1)


def _fits_of_rows(n, d, estimator='mle'):
  keys = jax.random.split(jax.random.key(1), SEEDS)
  fit = lambda k: gaussian.fit(jax.random.normal(k, (n, d)), jnp.ones(n), estimator)[0]
  return jax.jit(jax.vmap(fit))(keys)


def _drawn_fits(n, d, estimator='mle'):
  keys = jax.random.split(jax.random.key(2), SEEDS)
  return jax.jit(jax.vmap(lambda k: gaussian.draw_standard_fit(k, n, d, estimator)))(keys)


@pytest.mark.parametrize('n, d', [(5, 3), pytest.param(3, 4, marks=pytest.mark.heavy),
                                  pytest.param(4, 1, marks=pytest.mark.heavy)])
def test_drawn_fit_has_the_law_of_fitting_rows_and_one_degree_off_fails(n, d, monkeypatch):
  """draw_standard_fit (mean N(0, I/n), Bartlett's factor of Wishart(n - 1)) against the fit
  of n rows of N(0, I_d), entry by entry; (3, 4): a singular fit, its dead columns the same."""
  rows, drawn = _fits_of_rows(n, d), _drawn_fits(n, d)
  assert np.all(np.isfinite(drawn['log_scale']) == (np.arange(d) < n - 1))
  assert np.all(np.isfinite(rows['log_scale']) == (np.arange(d) < n - 1))  # rank n - 1, not more
  assert _same_law(_entries(drawn, n), _entries(rows, n))
  # the same test rejects a scatter of n degrees of freedom in place of n - 1
  right = gaussian.draw_standard_statistics
  monkeypatch.setattr(gaussian, 'draw_standard_statistics',
                      lambda key, n, d: right(key, n + 1, d))
  assert not _same_law(_entries(_drawn_fits(n, d), n)[:, d:], _entries(rows, n)[:, d:])


@pytest.mark.parametrize('d, m, n', [pytest.param(1, 40, 6, marks=pytest.mark.heavy), (3, 40, 6),
                                     pytest.param(4, 3, 3, marks=pytest.mark.heavy)])
def test_drawn_statistics_of_a_model_have_the_law_of_its_samples(d, m, n):
  """sample_summary against summarise of n samples of the same (correlated, scaled) model,
  fitted to m rows: (4, 3, 3) a singular model, and fewer samples than dimensions."""
  mix_DxD = jnp.tril(jnp.ones((d, d))) * jnp.arange(1.0, d + 1)
  x = jax.random.normal(jax.random.key(0), (m, d)) @ mix_DxD
  params = gaussian.fit(x + 3.0, jnp.ones(m), 'mle')[0]
  keys = jax.random.split(jax.random.key(3), SEEDS)
  of_rows = lambda k: gaussian.summarise(gaussian.sample(params, k, n), jnp.ones(n))
  rows = jax.jit(jax.vmap(of_rows))(keys)
  drawn = jax.jit(jax.vmap(lambda k: gaussian.sample_summary(params, k, n)))(keys)
  rows_, cols_ = np.tril_indices(d)
  flat = lambda s: np.concatenate([s['mean'], s['scatter'][:, rows_, cols_]], 1)
  assert _same_law(flat(drawn), flat(rows))
  np.testing.assert_array_equal(drawn['n'], n)
  msd = jax.vmap(lambda s: gaussian.mean_sq_distance(s, 0.5))
  assert _same_law(msd(drawn)[:, None], jax.vmap(
      lambda k: gaussian.mean_sq_distance(gaussian.sample(params, k, n), 0.5))(keys)[:, None])


def test_log_gamma_draws_follow_the_gamma_law(monkeypatch):
  """The chi2 draws' sampler against scipy's gamma; with one candidate at a time too, so the
  loop for rejected candidates runs."""
  a_K = jnp.array([0.5, 1.0, 4.5, 49.5])
  for tries in (1, gaussian._tries(1.0)):
    keys = jax.random.split(jax.random.key(tries), SEEDS)
    draw = lambda k: gaussian._log_gamma(gaussian._uniforms(k, (2 * tries + 1, 4)),
                                         jax.random.fold_in(k, 1), a_K)
    log_g_SxK = np.asarray(jax.jit(jax.vmap(draw))(keys), np.float64)
    for j, a in enumerate(np.asarray(a_K)):
      assert stats.kstest(np.exp(log_g_SxK[:, j]), stats.gamma(a).cdf).pvalue > 1e-3 / 8, (a, tries)
  assert stats.kstest(np.exp(log_g_SxK[:, 2]), stats.gamma(5.0).cdf).pvalue < 1e-6  # a off by 1/2


@pytest.mark.heavy
@pytest.mark.parametrize('dims, samples, generations', [  # the longest and widest runs in e2e
    pytest.param(1, 10, 1000, marks=pytest.mark.e2e), (10, 32, 100),
    pytest.param(100, 10, 100, marks=pytest.mark.e2e)])
def test_collapse_over_a_thousand_seeds(tmp_path, dims, samples, generations):
  """The deep-collapse runs over 1,000 seeds: finite metrics, rank M - 1 or d throughout, and
  the log-determinant's closed form at the last generation where one exists."""
  metrics, theory = _simulate(tmp_path, estimator='mle', dims=dims, samples=samples, seeds=1000,
                              generations=generations)
  for name, v in metrics.items():
    assert np.all(np.isfinite(v)), name
  assert np.all(metrics['rank'] == min(dims, samples - 1))
  if samples > dims:
    for g in (0, generations // 2, generations):
      assert _in_ci(metrics['logdet'][g], theory['logdet_mean'][g], theory['logdet_sd'][g]), g


def test_every_matmul_of_a_fit_and_sample_reaches_the_compiled_program_at_highest_precision():
  """A TPU's default matmul is one bfloat16 pass: the Gaussian asks for full float32 in
  every product that makes a fit, a sample or their statistics."""
  params = gaussian.fit(jax.random.normal(jax.random.key(0), (8, 3)), jnp.ones(8), 'mle')[0]

  def step(params, key):
    refit, _ = gaussian.refit(params, key, 8, 'mle')
    x_NxD = gaussian.sample(refit, key, 8)
    return (gaussian.sample_summary(refit, key, 8), gaussian.summarise(x_NxD, jnp.ones(8)),
            gaussian.covariance(refit))
  text = jax.jit(step).lower(params, jax.random.key(1)).compile().as_text()
  dots = [line for line in text.splitlines() if re.search(r'= \S+ dot\(', line)]
  assert len(dots) >= 4, text
  for line in dots:
    assert 'operand_precision={highest,highest}' in line, line


# ---------------------------------------------------------------- knobs: sampling bias,
# weighted real data, a biased verifier

def _knob_runs(tmp_path, name, regime='replace', samples=20, seeds=2000, generations=10, **cfg_kw):
  """Metrics of one sweep over the knobs in cfg_kw, split by the values of knob `name`."""
  cfg = gaussian.GaussianConfig(seeds=seeds, generations=generations, samples=(samples,),
                                regimes=(regime,), checkpoint_every=generations, **cfg_kw)
  cfg.validate()
  sweep = cfg.sweep(regime, samples)
  metrics = driver.run(gaussian.family(cfg), sweep, str(tmp_path / name), generations,
                       progress=False)
  value_B = sweep.knob_runs()[name]
  return cfg, {float(v): {k: m[:, value_B == v] for k, m in metrics.items()}
               for v in np.unique(value_B)}


@pytest.mark.parametrize('estimator', ['mle', 'unbiased'])
def test_temperature_compounds_the_variance_and_untempered_laws_fail(tmp_path, estimator):
  """E sigma_g^2 = (t^2 r)^g E sigma_0^2, r = (M-1)/M (mle) or 1 (unbiased): generation g's
  model samples generation g + 1's data with its spread times t."""
  _, runs = _knob_runs(tmp_path, 'temperature', estimator=estimator, temperatures=(0.9, 1.1))
  for t, metrics in runs.items():
    law = gaussian.theory('replace', estimator, 20, 1, 1.0, 10, temperature=t)
    r = 19 / 20 if estimator == 'mle' else 1.0
    np.testing.assert_allclose(law['trace_mean'], r * (t**2 * r) ** np.arange(11), rtol=1e-12)
    for g in (0, 1, 5):
      assert _in_ci(metrics['trace'][g], law['trace_mean'][g]), (t, g)
    for g in (1, 10):
      assert _in_ci(metrics['mean_error'][g] ** 2, law['mean_error_rms'][g] ** 2), (t, g)
      assert _in_ci(metrics['sigma'][g], law['sigma_mean'][g]), (t, g)
    # the untempered law, and temperature applied once too often, are rejected
    plain = gaussian.theory('replace', estimator, 20, 1, 1.0, 10)
    assert not _in_ci(metrics['trace'][5], plain['trace_mean'][5]), t
    assert not _in_ci(metrics['trace'][1], law['trace_mean'][1] * t**2), t


def test_weighted_real_data_follows_the_golden_ratio_law(tmp_path):
  """fresh at real fraction 1/2, covariance known: the long-run n MSE / sigma^2 of the weighted
  mean is (w^2 + (1 - w)^2) / (w (2 - w)), least at w = 0.618 (He, Xu and Cheng 2025)."""
  golden = (np.sqrt(5) - 1) / 2
  assert abs(optimize.minimize_scalar(gaussian.golden_long_run, bounds=(0.01, 0.99),
                                      method='bounded').x - golden) < 1e-4
  np.testing.assert_allclose([gaussian.golden_long_run(w) for w in (golden, 0.5, 1.0)],
                             [golden, 2 / 3, 1.0], rtol=1e-12)
  cfg, runs = _knob_runs(tmp_path, 'real_weight', regime='fresh', seeds=8000, generations=30,
                         known_std=True, real_fractions=(0.5,), real_weights=(0.3, golden, 0.9))
  n = 10  # real rows, and synthetic rows, a generation
  for w, metrics in runs.items():
    law = gaussian.weighted_mean_error(w, 0.5, 20, 1.0, 30)
    for g in (1, 30):
      assert _in_ci(metrics['mean_error'][g] ** 2, law[g]), (w, g)
    assert abs(n * law[30] - gaussian.golden_long_run(w)) < 1e-6
    if w < 0.7:  # a law without the synthetic rows' noise, w / (2 - w), is rejected
      assert not _in_ci(n * metrics['mean_error'][30] ** 2, w / (2 - w)), w
  at = {round(w, 3): np.mean(m['mean_error'][30] ** 2) for w, m in runs.items()}
  assert at[0.618] < at[0.3]


@pytest.mark.parametrize('shift', [0.5, 1.0])
def test_a_biased_verifier_drags_the_model_by_the_truncated_normal_recursion(tmp_path, shift):
  """verify keeping the half of the candidates nearest a verifier centred at mu + shift: the
  fit follows the truncated-normal recursion to the verifier's centre, not the truth."""
  cfg, runs = _knob_runs(tmp_path, 'verifier_shift', regime='verify', samples=10000, seeds=100,
                         generations=4, verifier_shifts=(shift,))
  metrics = runs[shift]
  mean_G, var_G = gaussian.verified_theory(10000, 0.5, shift, 0.0, 1.0, 'mle', 4)
  truth_G, _ = gaussian.verified_theory(10000, 0.5, 0.0, 0.0, 1.0, 'mle', 4)  # a truthful one
  for g in range(1, 5):
    assert _in_ci(metrics['mean_error'][g], mean_G[g]), g
    assert _in_ci(metrics['sigma'][g] ** 2, var_G[g]), g
    assert not _in_ci(metrics['mean_error'][g], truth_G[g]), g
  assert mean_G[4] > 0.95 * shift  # settled near the verifier's centre


def test_a_temperature_schedule_law_agrees_with_the_one_temperature_law():
  """tempered_errors (a temperature a generation) at a constant t is theory's law at t."""
  for estimator, t in (('mle', 1.1), ('unbiased', 0.9)):
    one = gaussian.theory('replace', estimator, 10, 1, 1.0, 8, temperature=t)
    law = gaussian.tempered_errors(np.full(9, t), 10, estimator)
    np.testing.assert_allclose(law['mean_error'], one['mean_error_rms'][1:] ** 2, rtol=1e-10)
    np.testing.assert_allclose(law['sigma_error'], one['sigma_error_rms'][1:] ** 2, rtol=1e-10)
    np.testing.assert_allclose(law['w2_sq'], one['w2_sq_mean'][1:], rtol=1e-10)
