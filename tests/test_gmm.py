"""EM against scikit-learn, its invariants, the closed forms, and the science."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from collapse_jax.core import results, validation
from conftest import assert_gmm_matches_scikit_learn
from collapse_jax.families import gmm

CFG = gmm.EMConfig()
fit_jit = jax.jit(lambda x, w, key: gmm.fit(x, w, key, CFG))


def _separated(seed, n=1000):
  """Two well-separated, differently shaped and weighted 2-D clusters."""
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(int(0.3 * n), 2)) @ np.array([[1.0, 0.3], [0.0, 0.5]]) + [-4, 1]
  b = rng.normal(size=(n - len(a), 2)) @ np.array([[0.7, 0.0], [-0.2, 1.2]]) + [3, -2]
  return np.concatenate([a, b]).astype(np.float32)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_fit_matches_scikit_learn(seed):
  x = _separated(seed)
  mix, info = fit_jit(x, jnp.ones(len(x)), jax.random.key(seed))
  ref = assert_gmm_matches_scikit_learn(mix, x, seed)
  ours = float(jnp.mean(gmm.log_prob(mix, x)))
  assert ours >= ref.score(x) - 1e-4, (ours, ref.score(x))
  assert bool(info['converged'])


def test_em_log_likelihood_never_decreases():
  x = _separated(3) * 0.4  # overlapping clusters: many iterations to watch
  xc = x - x.mean(0)
  f_FxN, w_N = gmm.features(jnp.asarray(xc)), jnp.ones(len(x))
  start = gmm.Mixture(jnp.array([0.5, 0.5]), jnp.array([[-0.1, 0.0], [0.1, 0.0]]),
                      jnp.stack([jnp.eye(2)] * 2))

  def step(mix, _):
    mix, bound = gmm.em_step(mix, f_FxN, w_N, 1e-6)
    return mix, bound

  _, bounds = jax.jit(lambda m: jax.lax.scan(step, m, None, length=200))(start)
  bounds = np.asarray(bounds, np.float64)
  assert bounds[-1] > bounds[0] + 0.1  # it did climb
  assert np.all(np.diff(bounds) >= -1e-5 * np.abs(bounds[1:])), np.diff(bounds).min()


def test_vmapped_fits_equal_a_per_seed_loop():
  x_SxNxD = np.stack([_separated(s, 300) for s in range(4)])
  keys = jax.random.split(jax.random.key(0), 4)
  w = jnp.ones(x_SxNxD.shape[:2])
  batch, _ = jax.jit(jax.vmap(lambda x, w, k: gmm.fit(x, w, k, CFG)))(x_SxNxD, w, keys)
  for s in range(4):
    one, _ = fit_jit(x_SxNxD[s], w[s], keys[s])
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(jax.tree.map(lambda v: v[s], batch))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_zero_weight_rows_are_ignored():
  x = _separated(4, 400)
  padded = np.concatenate([x, np.full((200, 2), 50.0, np.float32)])
  w = np.concatenate([np.ones(400), np.zeros(200)]).astype(np.float32)
  a, _ = fit_jit(x, jnp.ones(400), jax.random.key(1))
  b, _ = fit_jit(padded, w, jax.random.key(1))
  np.testing.assert_allclose(gmm.canonical(a).means, gmm.canonical(b).means, atol=1e-3)


def test_collapsed_data_gives_a_finite_fit():
  x = np.full((300, 2), 1.5, np.float32)
  mix, _ = fit_jit(x, jnp.ones(300), jax.random.key(0))
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(mix))
  np.testing.assert_allclose(mix.weights @ mix.means, [1.5, 1.5], atol=1e-4)


def _mixture(seed, k=2):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(k, 2, 2)) * 0.6
  return gmm.Mixture(jnp.asarray(rng.dirichlet(np.ones(k)), jnp.float32),
                     jnp.asarray(rng.normal(size=(k, 2)), jnp.float32),
                     jnp.asarray(a @ np.swapaxes(a, 1, 2) + 0.2 * np.eye(2), jnp.float32))


def test_l2_squared_agrees_with_monte_carlo():
  p, q = _mixture(0), _mixture(1)
  kp, kq = jax.random.split(jax.random.key(0))
  n = 400_000
  xp, xq = gmm.sample(p, kp, n), gmm.sample(q, kq, n)
  diff = lambda x: jnp.exp(gmm.log_prob(p, x)) - jnp.exp(gmm.log_prob(q, x))
  # integral of (p - q)^2 = E_p[p - q] - E_q[p - q]
  mc = float(jnp.mean(diff(xp)) - jnp.mean(diff(xq)))
  assert float(gmm.l2_squared(p, q)) == pytest.approx(mc, rel=0.03)
  assert float(gmm.l2_squared(p, p)) == 0.0


def test_l2_squared_stays_finite_for_a_component_collapsed_onto_a_line():
  """As at generation 800 of seed 58 under the default protocol: 3 samples on a near-line
  give a covariance whose smallest eigenvalue float32 does not resolve (a Cholesky is NaN)."""
  v = np.array([1.85, 2.58], np.float32)
  thin = np.outer(v, v) + np.float32(1e-7) * np.eye(2, dtype=np.float32)  # det 2.2e-6
  p = gmm.Mixture(jnp.array([0.003, 0.997]), jnp.array([[-1.786422, -1.680204], [-0.457368, 0.670992]]),
                  jnp.asarray(np.stack([thin, [[0.3382, 0.382749], [0.382749, 0.433742]]]), jnp.float32))
  q = gmm.Mixture(jnp.array([0.5, 0.5]), jnp.array([[-1.0, 0.0], [1.0, 0.0]]), jnp.stack([jnp.eye(2)] * 2))
  assert np.isnan(np.asarray(jnp.linalg.cholesky(2 * p.covs[0]))).any()  # what failed before
  assert float(gmm.l2_squared(p, p)) == 0.0
  got = float(gmm.l2_squared(p, q))
  assert np.isfinite(got) and got == pytest.approx(_notebook_l2(
      [np.asarray(v, np.float64) for v in (p.weights, p.means, p.covs)],
      [np.asarray(v, np.float64) for v in q]), rel=0.05)


def _notebook_l2(p, q):
  """The released notebook's formula, in float64: sum over component pairs of
  w_i w_j N(mu_i - mu_j; 0, S_i + S_j), for p.p + q.q - 2 p.q (no square root)."""
  from scipy.stats import multivariate_normal  # noqa: PLC0415

  def term(a, b):
    return sum(wi * wj * multivariate_normal.pdf(mi - mj, cov=si + sj)
               for wi, mi, si in zip(*(np.asarray(v, np.float64) for v in a))
               for wj, mj, sj in zip(*(np.asarray(v, np.float64) for v in b)))
  return term(p, p) + term(q, q) - 2 * term(p, q)


@pytest.mark.e2e
def test_the_papers_measure_is_the_notebooks_squared_distance(tmp_path):
  """Generation-g fits of a short run, against the notebook's formula evaluated
  independently on the same fitted mixtures (read back from the table)."""
  cfg = gmm.GMMConfig(seeds=2, generations=12, samples=300, heldout=50, checkpoint_every=12)
  table = gmm.run(cfg, str(tmp_path), progress=False, log=lambda _: None)
  sub = results.select(table, 'replace', 0.0)

  def fitted(g, s):
    w = np.array([sub[f'weight_{k}'][g, s] for k in range(2)])
    mu = np.array([[sub[f'mean_{k}_{i}'][g, s] for i in range(2)] for k in range(2)])
    cov = np.array([[[sub[f'cov_{k}_{min(i, j)}{max(i, j)}'][g, s] for j in range(2)]
                     for i in range(2)] for k in range(2)])
    return w, mu, cov

  truth = [np.asarray(v, np.float64) for v in cfg.true_mixture()]
  for g in (1, 5, 12):
    for s in range(2):
      p0, pg = fitted(0, s), fitted(g, s)
      assert sub['l2sq_gen0'][g, s] == pytest.approx(_notebook_l2(pg, p0), rel=2e-3, abs=1e-7)
      assert sub['l2sq_true'][g, s] == pytest.approx(_notebook_l2(pg, truth), rel=2e-3, abs=1e-7)
  assert np.all(sub['l2sq_gen0'][0] == 0)


def test_defaults_are_the_released_notebooks_protocol():
  """The notebook: make_blobs(n_samples=1000, centers=[[0, 0]], cluster_std=1), a
  2-component full-covariance GaussianMixture(tol=1e-5, max_iter=2000), refitted
  on 1,000 of its own samples; 2,000 generations here (its 2,050: --generations)."""
  cfg = gmm.GMMConfig()
  assert (cfg.samples, cfg.components, cfg.tol, cfg.max_iter, cfg.generations) == (
      1000, 2, 1e-5, 2000, 2000)
  assert cfg.reg_covar == GaussianMixture().reg_covar
  weights, means, covs = (np.asarray(v) for v in cfg.true_mixture())
  np.testing.assert_array_equal(weights, [1.0])
  np.testing.assert_array_equal(means, [[0.0, 0.0]])
  np.testing.assert_array_equal(covs, [np.eye(2)])


def test_a_true_mixture_is_fully_described_by_flags():
  cfg = gmm.GMMConfig(true_weights=(0.25, 0.75), true_means=((0.0, 8.0), (2.0, -1.0)),
                      true_covs=((1.0, 0.5, 0.5, 2.0), (0.3, 0.0, 0.0, 0.1))).validate()
  mix = cfg.true_mixture()
  x = np.asarray(gmm.sample(mix, jax.random.key(0), 200_000), np.float64)
  second = x[:, 1] < 3.5  # the second component sits below, well apart
  assert second.mean() == pytest.approx(0.75, abs=0.01)
  np.testing.assert_allclose(np.cov(x[~second].T), [[1.0, 0.5], [0.5, 2.0]], atol=0.1)
  np.testing.assert_allclose(np.cov(x[second].T), [[0.3, 0.0], [0.0, 0.1]], atol=0.02)


def test_samples_have_the_mixture_moments():
  mix = _mixture(2)
  x = np.asarray(gmm.sample(mix, jax.random.key(3), 400_000), np.float64)
  mean = np.asarray(mix.weights @ mix.means)
  np.testing.assert_allclose(x.mean(0), mean, atol=0.01)
  np.testing.assert_allclose(np.trace(np.cov(x.T)), float(gmm.total_variance(mix)), rtol=0.01)


def test_tail_thresholds_match_the_chi_square_region():
  # For N(0, I) in 2-D the p-region is r^2 <= -2 log(1 - p), so
  # log p(x) >= -log(2 pi) + log(1 - p).
  std = gmm.Mixture(jnp.ones(1), jnp.zeros((1, 2)), jnp.eye(2)[None])
  t95, t99 = gmm.tail_thresholds(std)
  assert t95 == pytest.approx(-math.log(2 * math.pi) + math.log(0.05), abs=0.01)
  assert t99 == pytest.approx(-math.log(2 * math.pi) + math.log(0.01), abs=0.03)


@pytest.mark.parametrize('fields, flag', [
    (dict(samples=1, components=2), 'samples'),
    (dict(true_means=((0.0, 0.0), (1.0,))), 'true_means'),
    (dict(true_weights=(0.5, 0.6), true_means=((0.0, 0.0), (1.0, 1.0))), 'true_weights'),
    (dict(true_weights=(1.0, 1.0)), 'true_weights'),
    (dict(true_covs=((1.0, 0.0, 0.0),)), 'true_covs'),
    (dict(true_covs=((1.0, 2.0, 2.0, 1.0),)), 'true_covs'),  # not positive definite
    (dict(true_covs=((1.0, 0.5, 0.0, 1.0),)), 'true_covs'),  # not symmetric
])
def test_config_validation_names_the_flag(fields, flag):
  with pytest.raises(validation.ConfigError, match=f'--{flag}'):
    gmm.GMMConfig(**fields).validate()


@pytest.mark.heavy  # the science at CPU size: 16 seeds x 60 generations, a growing pool
def test_replace_collapses_and_accumulate_stays_bounded(tmp_path):
  """The paper's finding, at CPU size: under replace the fit drifts from its
  generation-0 self and its spread shrinks; keeping all data bounds the drift."""
  cfg = gmm.GMMConfig(seeds=16, generations=60, samples=100, heldout=100,
                      regimes=('replace', 'accumulate'), checkpoint_every=60, **gmm.TWO_BLOBS)
  table = gmm.run(cfg, str(tmp_path), progress=False, log=lambda _: None)
  rep = results.select(table, 'replace', 0.0)
  acc = results.select(table, 'accumulate', 0.0)
  l2_rep, l2_acc = np.median(rep['l2sq_gen0'], 1), np.median(acc['l2sq_gen0'], 1)
  assert l2_rep[60] > 3 * l2_rep[5]  # drift grows
  assert l2_acc[60] < 0.5 * l2_rep[60]  # accumulating bounds it
  assert np.median(rep['total_var'][60]) < 0.8 * np.median(rep['total_var'][0])


# ---------------------------------------------------------------- sampling bias and verifiers

Z999 = 3.2905  # two-sided 99.9% normal quantile


def _in_ci(values_S, expected):
  """Whether the mean of values_S lies in the 99.9% interval around `expected`."""
  values_S = np.asarray(values_S, np.float64)
  return abs(values_S.mean() - expected) <= Z999 * values_S.std(ddof=1) / math.sqrt(len(values_S))


def test_a_temperature_scales_each_components_noise_and_one_changes_nothing():
  """Tempered at t, a mixture's draws have total variance (between the means) + t^2 (within
  the components), 99.9% interval over 400,000 draws; t (not t^2) on the noise, and t^2 on
  the whole spread (the means moved too), are rejected. At t = 1 the draws are the
  untempered ones, bit for bit."""
  mix, t, n = _mixture(5), 1.3, 400_000
  hot = gmm.tempered(mix, {'temperature': jnp.float32(t)})
  np.testing.assert_array_equal(hot.weights, mix.weights)
  np.testing.assert_array_equal(hot.means, mix.means)
  draw = jax.jit(gmm.sample, static_argnums=2)
  x = np.asarray(draw(hot, jax.random.key(6), n), np.float64)
  sq_N = np.sum((x - np.asarray(mix.weights @ mix.means, np.float64)) ** 2, 1)
  w, covs = np.asarray(mix.weights, np.float64), np.asarray(mix.covs, np.float64)
  within = float(np.sum(w * np.trace(covs, axis1=1, axis2=2)))
  between = float(gmm.total_variance(mix)) - within
  assert _in_ci(sq_N, between + t**2 * within), (sq_N.mean(), between + t**2 * within)
  assert not _in_ci(sq_N, between + t * within)
  assert not _in_ci(sq_N, t**2 * (between + within))
  same = gmm.tempered(mix, {'temperature': jnp.float32(1.0)})
  np.testing.assert_array_equal(draw(same, jax.random.key(7), 1000),
                                draw(mix, jax.random.key(7), 1000))


TRUTH = dict(true_weights=(0.25, 0.75), true_means=((0.0, 3.0), (2.0, -1.0)),
             true_covs=((1.0, 0.5, 0.5, 2.0), (0.3, 0.0, 0.0, 0.1)))


def _scipy_mixture(weights, means, covs, x):
  """log sum_k w_k N(x; m_k, S_k) in float64, by scipy."""
  from scipy.stats import multivariate_normal  # noqa: PLC0415
  p = sum(w * multivariate_normal(m, s).pdf(x) for w, m, s in zip(weights, means, covs))
  return np.log(p)


def test_the_verifier_is_the_true_mixture_moved_and_widened_about_its_mean():
  """verifier(x, shift, scale) is, by scipy, the true mixture of means c + scale (m_k - c) +
  shift (c its mean) and covariances scale^2 S_k; widening about the origin, or the means
  left in place, is rejected; shift 0 and scale 1 give the truth's own scores."""
  cfg = gmm.GMMConfig(**TRUTH).validate()
  fam = gmm.family(cfg)
  w, m, s = (np.asarray(v, np.float64) for v in cfg.true_mixture())
  c = w @ m
  x = np.random.default_rng(0).normal(size=(300, 2)) * 2 + [1.0, 1.0]
  verifier = jax.jit(fam.verifier)
  got = np.asarray(verifier(jnp.asarray(x, jnp.float32), 0.7, 1.5).values_N, np.float64)
  x = np.asarray(np.float32(x), np.float64)
  want = _scipy_mixture(w, c + 1.5 * (m - c) + 0.7, 1.5**2 * s, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  about_origin = _scipy_mixture(w, 1.5 * m + 0.7, 1.5**2 * s, x)
  in_place = _scipy_mixture(w, m + 0.7, 1.5**2 * s, x)
  for wrong in (about_origin, in_place):
    assert np.max(np.abs(got - wrong)) > 0.1
  truth = fam.true_log_density(jnp.asarray(x, jnp.float32))
  plain = verifier(jnp.asarray(x, jnp.float32), 0.0, 1.0)
  np.testing.assert_allclose(plain.values_N, truth.values_N, rtol=1e-6, atol=1e-5)  # by 0 and 1


def test_the_verifier_ranks_candidates_far_narrower_than_it_exactly():
  """Candidates 1e-6 apart, far from the moved truth: the verifier's gaps rank them as
  float64 does; its plain float32 values (what the score would be without the Relative
  form) do not."""
  fam = gmm.family(gmm.GMMConfig(**TRUTH))
  w, m, s = (np.asarray(v, np.float64) for v in gmm.GMMConfig(**TRUTH).true_mixture())
  x32 = np.float32([3.0, -2.0] + 1e-6 * np.random.default_rng(1).normal(size=(64, 2)))
  scored = fam.verifier(jnp.asarray(x32), 0.5, 2.0)
  c = w @ m
  want = _scipy_mixture(w, c + 2.0 * (m - c) + 0.5, 4.0 * s, np.asarray(x32, np.float64))
  np.testing.assert_array_equal(np.argsort(np.asarray(scored.gap_N), kind='stable'),
                                np.argsort(want, kind='stable'))
  moved = gmm.moved(gmm.GMMConfig(**TRUTH).true_mixture(), 0.5, 2.0)
  plain = np.asarray(gmm.log_prob(moved, jnp.asarray(x32)))
  assert not np.array_equal(np.argsort(plain, kind='stable'), np.argsort(want, kind='stable'))


@pytest.mark.heavy  # a whole run of every group: the tempered law's unit tests stay fast
def test_a_temperature_sweep_runs_as_three_groups_and_spreads_with_t(tmp_path):
  """temperatures (0.8, 1, 1.25) through the driver: a temperature column, three groups of
  runs under each regime, the fitted spread growing with t."""
  cfg = gmm.GMMConfig(seeds=2, generations=3, samples=60, heldout=50, checkpoint_every=3,
                      regimes=('replace', 'verify'), keep_fractions=(0.5,), score='verifier',
                      temperatures=(0.8, 1.0, 1.25), verifier_shifts=(0.5,))
  table = gmm.run(cfg, str(tmp_path), progress=False, log=lambda _: None)
  assert set(np.unique(table['temperature'])) == {np.float32(0.8), 1.0, np.float32(1.25)}
  groups = results.groups(table)
  for regime in ('replace', 'verify'):
    mine = [g for g in groups if g.regime == regime]
    assert [dict(g.knobs)['temperature'] for g in mine] == pytest.approx([0.8, 1.0, 1.25])
  spread_T = [np.mean(results.select(table, 'replace', 0.0, knob_values=g.knobs)['total_var'][3])
              for g in groups if g.regime == 'replace']
  assert spread_T[0] < spread_T[1] < spread_T[2], spread_T


def test_the_sampling_preset_sweeps_temperatures_in_its_regimes():
  cfg = gmm.GMMConfig(**gmm.PRESETS['sampling']).validate()
  assert len(cfg.temperatures) >= 3 and 1.0 in cfg.temperatures and len(cfg.regimes) >= 2
