"""The benchmarks' NumPy references vectorised over seeds: the loops' numbers, the families' fits
and metrics, and the closed forms, so a ratio against them compares the same protocol."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from benchmarks import kde_throughput, numpy_gmm, numpy_kde, numpy_regression
from benchmarks import regression_throughput
from collapse_jax.core import sampling
from collapse_jax.families import gmm, kde, regression


# ---------------------------------------------------------------- GMM

def _two_clusters(seed, n, scale=1.0):
  """Two differently shaped and weighted 2-D clusters, closer together as scale falls."""
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(int(0.3 * n), 2)) @ np.array([[1.0, 0.3], [0.0, 0.5]]) + [-4, 1]
  b = rng.normal(size=(n - len(a), 2)) @ np.array([[0.7, 0.0], [-0.2, 1.2]]) + [3, -2]
  return (scale * np.concatenate([a, b])).astype(np.float32)


def _random_mixtures(seed, s, k=2):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(s, k, 2, 2)) * 0.6
  return numpy_gmm.Mixtures(rng.dirichlet(np.ones(k), size=s).astype(np.float32),
                            rng.normal(size=(s, k, 2)).astype(np.float32),
                            (a @ np.swapaxes(a, -1, -2) + 0.2 * np.eye(2)).astype(np.float32))


def _family_em(mix, f_FxN, tol, max_iter=2000):
  """The family's em_step iterated to its convergence test, one seed: mixture, iterations."""
  step = jax.jit(lambda m: gmm.em_step(m, f_FxN, jnp.ones(f_FxN.shape[1]), 1e-6))
  bound = -np.inf
  for it in range(1, max_iter + 1):
    mix, new = step(mix)
    if abs(float(new) - bound) < tol:
      return mix, it
    bound = float(new)
  return mix, max_iter


def test_gmm_em_from_the_same_start_is_the_familys_em_seed_by_seed():
  """Three seeds that converge after different numbers of iterations (so seeds leave the
  arrays at different times): separated clusters, closer ones, and one Gaussian (the
  protocol's truth, slow to converge); each ends where the family's EM ends."""
  one_gaussian = np.random.default_rng(2).normal(size=(300, 2)).astype(np.float32)
  x_SxNxD = np.stack([_two_clusters(0, 300), _two_clusters(1, 300, 0.2), one_gaussian])
  xc_SxNxD = x_SxNxD - x_SxNxD.mean(1, keepdims=True)
  f_SxFxN = numpy_gmm.features(xc_SxNxD)
  start = numpy_gmm.Mixtures(np.full((3, 2), 0.5, np.float32),
                             np.tile(np.array([[-0.5, 0.0], [0.5, 0.0]], np.float32), (3, 1, 1)),
                             np.tile(np.eye(2, dtype=np.float32), (3, 2, 1, 1)))
  mix, iters_S, converged_S = numpy_gmm.em(start, f_SxFxN, 1e-5, 2000, 1e-6)
  assert converged_S.all() and len(set(iters_S)) == 3, iters_S
  for s in range(3):
    ours, it = _family_em(gmm.Mixture(*(jnp.asarray(v[s]) for v in start)),
                          gmm.features(jnp.asarray(xc_SxNxD[s])), 1e-5)
    assert iters_S[s] == it, (s, iters_S[s], it)
    for a, b in zip(numpy_gmm.take(mix, s), ours):
      np.testing.assert_allclose(a, b, atol=1e-4)


def test_gmm_fit_matches_scikit_learn_on_separated_clusters():
  """k-means++ and Lloyd, then EM, for four seeds at once: scikit-learn's fit of each."""
  x_SxNxD = np.stack([_two_clusters(s, 400) for s in range(4)])
  mix, info = numpy_gmm.fit(x_SxNxD, np.random.default_rng(0), 2, 1e-5, 2000, 1e-6)
  assert info['converged'].all() and (info['kmeans_iters'] >= 1).all()
  for s in range(4):
    ref = GaussianMixture(2, tol=1e-5, max_iter=2000, random_state=s).fit(
        x_SxNxD[s].astype(np.float64))
    order, mine = np.argsort(ref.means_[:, 0]), np.argsort(mix.means[s, :, 0])
    np.testing.assert_allclose(mix.means[s, mine], ref.means_[order], atol=1e-3)
    np.testing.assert_allclose(mix.covs[s, mine], ref.covariances_[order], atol=1e-3)
    np.testing.assert_allclose(mix.weights[s, mine], ref.weights_[order], atol=1e-3)


def test_gmm_densities_and_distances_are_the_familys():
  p, q = _random_mixtures(0, 3), _random_mixtures(1, 3)
  x_SxNxD = np.random.default_rng(2).normal(size=(3, 50, 2)).astype(np.float32)
  lp_SxN = numpy_gmm.log_prob(p, x_SxNxD)
  l2_S = numpy_gmm.l2_squared(p, q)
  assert lp_SxN.dtype == np.float32
  for s in range(3):
    ps, qs = (gmm.Mixture(*(jnp.asarray(v) for v in numpy_gmm.take(m, s))) for m in (p, q))
    np.testing.assert_allclose(lp_SxN[s], gmm.log_prob(ps, x_SxNxD[s]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(l2_S[s], gmm.l2_squared(ps, qs), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(numpy_gmm.l2_squared(numpy_gmm.take(p, [s]),
                                                    numpy_gmm.take(p, [s])), 0.0, atol=1e-6)


def test_gmm_samples_have_each_mixtures_moments():
  mix = _random_mixtures(3, 2)
  x_SxNxD = numpy_gmm.sample(mix, np.random.default_rng(0), 200_000).astype(np.float64)
  mean_SxD = np.einsum('sk,skd->sd', mix.weights, mix.means)
  second_SxDxD = np.einsum('sk,skij->sij', mix.weights,
                           mix.covs + mix.means[..., :, None] * mix.means[..., None, :])
  np.testing.assert_allclose(x_SxNxD.mean(1), mean_SxD, atol=0.02)  # ~5 standard errors
  cov_SxDxD = np.einsum('sni,snj->sij', x_SxNxD, x_SxNxD) / x_SxNxD.shape[1]
  np.testing.assert_allclose(cov_SxDxD, second_SxDxD, atol=0.05)


def test_gmm_replace_run_measures_every_generation_in_float32():
  cfg = gmm.GMMConfig(samples=200, heldout=100)
  true = numpy_gmm.Mixtures(*(np.asarray(v) for v in cfg.true_mixture()))
  out = numpy_gmm.replace_run(true, 3, 2, cfg.samples, cfg.heldout, cfg.tol, cfg.max_iter,
                              cfg.reg_covar, 2, -4.0, -5.5, np.random.default_rng(0))
  assert len(out) == 3
  for g, (info, metrics) in enumerate(out):
    assert info['em_iters'].shape == (3,) and info['converged'].all()
    for name in ('l2sq_gen0', 'l2sq_true', 'heldout_ll', 'total_var', 'tail_mass_99'):
      assert metrics[name].shape == (3,) and metrics[name].dtype == np.float32, name
      assert np.all(np.isfinite(metrics[name])), name
    assert (metrics['l2sq_gen0'] == 0).all() == (g == 0)
  assert out[0][1]['total_var'] == pytest.approx(2.0, abs=0.5)  # N(0, I): trace 2


# ---------------------------------------------------------------- KDE

KDE_CFG = kde.KDEConfig(seeds=3, generations=3, samples=30, heldout=20, target='moons')


@pytest.mark.parametrize('seed', [0, 5])
def test_kde_vectorised_draws_the_loops_numbers(seed):
  """One seed in float64 from its own generator: the loop reference's metrics, every generation."""
  cfg = KDE_CFG
  loop = kde_throughput.loop_seed(cfg, seed, np.float64)
  vec = numpy_kde.replace_run(1, cfg.generations, cfg.samples, cfg.heldout, cfg.bandwidth,
                              cfg.target_noise, cfg.mmd_scale, np.random.default_rng(seed),
                              np.float64)
  for name, v_G in loop.items():
    np.testing.assert_allclose(vec[name][:, 0], v_G, rtol=1e-10, err_msg=name)


def test_kde_metrics_are_the_familys_seed_by_seed():
  """Three seeds evaluated together in float32: the family's evaluate of each."""
  cfg, rng = KDE_CFG, np.random.default_rng(0)
  points_SxNxD = numpy_kde.moons(rng, 3, cfg.samples, 0.1, np.float32)
  synth_SxNxD = numpy_kde.moons(rng, 3, cfg.samples, 0.1, np.float32)
  heldout_SxHxD = numpy_kde.moons(rng, 3, cfg.heldout, 0.1, np.float32)
  t_self_S = numpy_kde.heldout_self(heldout_SxHxD, cfg.mmd_scale)
  got = numpy_kde.evaluate(points_SxNxD, synth_SxNxD, heldout_SxHxD, t_self_S, cfg.bandwidth,
                           cfg.mmd_scale)
  evaluate = kde.family(cfg).evaluate
  for s in range(3):
    heldout = jnp.asarray(heldout_SxHxD[s])
    ref = {'heldout': heldout, 'heldout_self': sampling.kernel_mean_off_diagonal(
        sampling.squared_distances(heldout, heldout), cfg.mmd_scale)}
    params = {'points': jnp.asarray(points_SxNxD[s]),
              'weights': jnp.full(cfg.samples, 1 / cfg.samples), 'bandwidth': cfg.bandwidth}
    want = evaluate(params, jnp.asarray(synth_SxNxD[s]), ref)
    for name, v_S in got.items():
      assert v_S.dtype == np.float32, name
      np.testing.assert_allclose(v_S[s], want[name], rtol=2e-5, atol=2e-6, err_msg=name)


def test_kde_samples_pick_stored_points_and_add_the_kernel():
  points_SxNxD = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
  pick_SxN = np.array([[2, 0], [1, 1]])
  eps_SxNxD = np.ones((2, 2, 2), np.float32)
  got = numpy_kde.draw(points_SxNxD, pick_SxN, eps_SxNxD, 0.5)
  np.testing.assert_array_equal(got, [[[4.5, 5.5], [0.5, 1.5]], [[8.5, 9.5], [8.5, 9.5]]])


# ---------------------------------------------------------------- regression

@pytest.mark.parametrize('seed', [0, 3])
def test_regression_vectorised_draws_the_loops_numbers(seed):
  """One seed in float64 from its own generator: each loop reference's metrics."""
  t, d, generations = 20, 3, 4
  for loop, run in ((regression_throughput.rows_seed, numpy_regression.rows_run),
                    (regression_throughput.statistics_seed, numpy_regression.statistics_run)):
    want = loop(seed, generations, t, d, 0.7)
    got = run(1, generations, t, d, 0.7, np.random.default_rng(seed), np.float64)
    for name, v_G in want.items():
      np.testing.assert_allclose(got[name][:, 0], v_G, rtol=1e-9, err_msg=(run.__name__, name))


def test_regression_fit_is_the_familys_seed_by_seed():
  rng = np.random.default_rng(1)
  w_SxP = rng.normal(size=(3, 4)).astype(np.float32)
  x_SxTxP = rng.normal(size=(3, 25, 4)).astype(np.float32)
  e_SxT = rng.normal(size=(3, 25)).astype(np.float32)
  w_next_SxP, label_var_S = numpy_regression.fit_rows(w_SxP, x_SxTxP, e_SxT)
  for s in range(3):
    xy_NxD = np.concatenate([x_SxTxP[s], (x_SxTxP[s] @ w_SxP[s] + e_SxT[s])[:, None]], 1)
    params, metrics = regression.fit_statistics(
        regression.statistics(jnp.asarray(xy_NxD), jnp.ones(25), 4), jnp.zeros(1))
    np.testing.assert_allclose(w_next_SxP[s], params['w'][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(label_var_S[s], metrics['label_var'][0], rtol=1e-4)


@pytest.mark.parametrize('run', [numpy_regression.rows_run, numpy_regression.statistics_run])
def test_regression_vectorised_error_grows_as_the_closed_form(run):
  """2,000 seeds in float32: the mean test error of generations 0..4 within 99.9% intervals of
  E = (g + 1) sigma^2 P / (T - P - 1), replace's closed form."""
  seeds, t, p, noise, generations = 2000, 12, 3, 0.8, 4
  got = run(seeds, generations, t, p, noise, np.random.default_rng(0), np.float32)
  assert got['test_error'].dtype == np.float32
  theory = regression.fresh_ols_theory('replace', t, np.ones(p), noise, generations)
  half_G = 3.2905 * got['test_error'].std(1) / np.sqrt(seeds)
  assert np.all(np.abs(got['test_error'].mean(1) - theory['test_error']) < half_G), (
      got['test_error'].mean(1), theory['test_error'])
  half_G = 3.2905 * got['label_var'].std(1) / np.sqrt(seeds)
  assert np.all(np.abs(got['label_var'].mean(1) - theory['label_var']) < half_G)
