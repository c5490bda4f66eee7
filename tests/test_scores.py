"""Scores keep the model's resolution: every family's score of candidates from a model
collapsed far below the scorer's scale ranks them as float64 does, where float32 values
computed the usual way tie."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax.core import regimes, scores
from collapse_jax.families import flow, gaussian, gmm, kde

N = 400  # candidates


def _resolved(relative, reference_N, tol=1e-4):
  """Each candidate's score minus the first's agrees with float64's to tol of the scores'
  range: the differences (and so the ranking) are resolved, not rounded."""
  ref_N = np.asarray(reference_N, np.float64)
  got_N = np.asarray(relative.gap_N, np.float64)
  span = ref_N.max() - ref_N.min()
  assert span > 0
  err = np.max(np.abs((got_N - got_N[0]) - (ref_N - ref_N[0]))) / span
  return err <= tol, err


def _assert_resolved(cases, atol=None):
  """Each case's (Relative scores, float64 values): the gaps resolved (_resolved) and, with
  atol, the values themselves float64's to rtol 1e-5."""
  for name, (got, want) in cases.items():
    ok, err = _resolved(got, want)
    assert ok, (name, err)
    if atol is not None:
      np.testing.assert_allclose(got.values_N, want, rtol=1e-5, atol=atol, err_msg=name)


def _reward64(x_NxD, target_D):
  """-|x - target|^2 in float64."""
  return _float64(lambda x, t: -jnp.sum((x - t) ** 2, 1), x_NxD, target_D)


def _float64(fn, *args):
  """fn on float64 copies of its arguments (the same code, in double precision)."""
  with jax.enable_x64(True):
    args64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), args)
    return np.asarray(fn(*args64))


def _gaussian_model(key, d, centre, spread):
  """A fit collapsed to `spread` around `centre`, correlated, in gaussian's factor form."""
  k1, k2 = jax.random.split(key)
  unit = jnp.eye(d) + jnp.tril(0.3 * jax.random.normal(k1, (d, d)), -1)
  log_scale = jnp.log(spread) + 0.5 * jax.random.normal(k2, (d,))
  return {'mean': jnp.full(d, centre, jnp.float32), 'unit': unit, 'log_scale': log_scale}


@pytest.mark.parametrize('d', [1, 3])
@pytest.mark.parametrize('centre', [0.0, 0.4])
@pytest.mark.parametrize('spread', [1e-3, 1e-5])
def test_gaussian_scores_resolve_candidates_far_narrower_than_the_scorer(d, centre, spread):
  cfg = gaussian.GaussianConfig(dims=d, reward_target=0.7)
  fam = gaussian.family(cfg)
  model = _gaussian_model(jax.random.key(d), d, centre, spread)
  model0 = _gaussian_model(jax.random.key(9), d, 0.1, 1.0)
  x_NxD = gaussian.sample(model, jax.random.key(1), N)
  cases = {
      'truth': (fam.true_log_density(x_NxD),
                _float64(lambda x: gaussian.true_log_density(x, 0.0, 1.0), x_NxD)),
      'self': (fam.log_density(model, x_NxD), _float64(gaussian.log_density, model, x_NxD)),
      'gen0': (fam.log_density(model0, x_NxD), _float64(gaussian.log_density, model0, x_NxD)),
      'reward': (fam.reward(x_NxD), _reward64(x_NxD, np.full(d, 0.7, np.float32)))}
  _assert_resolved(cases, atol=1e-5)


def test_plain_float32_scores_tie_where_relative_ones_do_not():
  """The failure the relative form removes: the truth's log density of candidates 1e-5 wide
  near its mode, computed as a constant plus a small term, takes a handful of values."""
  model = _gaussian_model(jax.random.key(0), 1, 1e-4, 1e-5)
  x_NxD = gaussian.sample(model, jax.random.key(1), N)
  plain_N = gaussian.true_log_density(x_NxD, 0.0, 1.0)
  assert len(np.unique(plain_N)) < N / 10
  assert not _resolved(scores.relative(plain_N),
                       _float64(lambda x: gaussian.true_log_density(x, 0.0, 1.0), x_NxD))[0]
  assert len(np.unique(gaussian.true_log_density_scores(x_NxD, 0.0, 1.0).gap_N)) > 0.9 * N


@pytest.mark.parametrize('centre', [(1e-4, -2e-4), (1.5, -0.3)])
def test_gmm_scores_resolve_a_model_at_its_variance_floor(centre):
  """EM floors a component's variances at reg_covar = 1e-6: candidates 1e-3 wide, where the
  truth's log density used to tie near its mode."""
  cfg = gmm.GMMConfig()
  fam = gmm.family(cfg)
  true = cfg.true_mixture()
  c_D = jnp.asarray(centre, jnp.float32)
  model = gmm.Mixture(jnp.asarray([0.6, 0.4]), jnp.stack([c_D, c_D + 2e-3]),
                      jnp.asarray([[[1e-6, 2e-7], [2e-7, 1e-6]], [[2e-6, 0.0], [0.0, 1e-6]]]))
  x_NxD = gmm.sample(model, jax.random.key(0), N)
  target = np.asarray(cfg.target(), np.float32)
  cases = {'truth': (fam.true_log_density(x_NxD), _float64(gmm.log_prob, true, x_NxD)),
           'self': (fam.log_density(model, x_NxD), _float64(gmm.log_prob, model, x_NxD)),
           'gen0': (fam.log_density(true, x_NxD), _float64(gmm.log_prob, true, x_NxD)),
           'reward': (fam.reward(x_NxD), _reward64(x_NxD, target))}
  _assert_resolved(cases, atol=1e-4)


@pytest.mark.parametrize('target', ['blobs', 'circles'])
@pytest.mark.parametrize('spread', [1e-3, 1e-5])
def test_kde_scores_resolve_a_collapsed_kde(target, spread):
  """A KDE whose points and bandwidth collapsed (a rule's bandwidth follows the points),
  scored by itself, by the target's exact density and by the reward."""
  cfg = kde.KDEConfig(target=target, samples=50)
  fam = kde.family(cfg)
  where_D = jnp.asarray([0.93, 0.31])  # near the first circle, between blobs
  points = where_D + spread * jax.random.normal(jax.random.key(0), (50, 2))
  params = {'points': points, 'weights': jnp.full(50, 1 / 50), 'bandwidth': jnp.float32(spread)}
  x_NxD = kde.sample(params, jax.random.key(1), N)
  truth, noise = kde.TARGETS[target], cfg.target_noise
  target_D = np.asarray(cfg.reward_target, np.float32)
  cases = {'truth': (fam.true_log_density(x_NxD),
                     _float64(lambda x: truth.log_density(x, noise), x_NxD)),
           'self': (fam.log_density(params, x_NxD), _float64(kde.log_density, params, x_NxD)),
           'reward': (fam.reward(x_NxD), _reward64(x_NxD, target_D))}
  _assert_resolved(cases)


@pytest.mark.parametrize('name', ['ring', 'moons'])
def test_flow_targets_resolve_collapsed_candidates(name):
  tgt = flow.ring(0.05) if name == 'ring' else flow.moons(0.05)
  x_NxD = jnp.asarray(tgt.centres_KxD[1]) + 1e-5 * jax.random.normal(jax.random.key(0), (N, 2))
  ok, err = _resolved(tgt.scorer()(x_NxD), _float64(tgt.log_density, x_NxD))
  assert ok, err


def test_mixture_gap_is_exact_near_and_far_from_its_centre():
  """log sum_k r_k e^(-dq_k / 2) against float64, for gaps from 1e-10 to hundreds of nats."""
  logc_K = jnp.asarray([-1.3, -0.4, -30.0])
  dq_NxK = jnp.asarray(np.concatenate([
      np.random.default_rng(0).normal(size=(50, 3)) * 10.0 ** (-np.arange(50)[:, None] / 5),
      np.random.default_rng(1).normal(size=(50, 3)) * 300]), jnp.float32)
  got = scores.mixture_gap(logc_K, dq_NxK)
  with jax.enable_x64(True):
    l64 = jnp.asarray(np.asarray(logc_K), jnp.float64)
    d64 = jnp.asarray(np.asarray(dq_NxK), jnp.float64)
    want = np.asarray(jax.nn.logsumexp(l64 - 0.5 * d64, -1) - jax.nn.logsumexp(l64))
  np.testing.assert_allclose(got.gap_N, want, rtol=1e-5, atol=1e-30)
  assert float(got.at) == pytest.approx(float(jax.nn.logsumexp(logc_K)))


def test_noisy_scores_add_their_noise_to_the_truths_gaps():
  cfg = gaussian.GaussianConfig(verifier_noise=0.5)
  fam = gaussian.family(cfg)
  x_NxD = 0.3 + 1e-6 * jax.random.normal(jax.random.key(0), (N, 1))
  key = jax.random.key(3)
  noisy = regimes.scorer(fam, 'noisy', 0.5)(None, None, x_NxD, key)
  truth = regimes.scorer(fam, 'truth')(None, None, x_NxD, key)
  np.testing.assert_allclose(noisy.gap_N - truth.gap_N, 0.5 * jax.random.normal(key, (N,)),
                             rtol=1e-6, atol=1e-6)
  assert noisy.at == truth.at


def test_a_component_whose_share_underflows_still_counts_where_it_dominates():
  """A component e^-120 of the mixture at c (0 in float32) but near a candidate x: the gap is
  log(e^-1 + e^-0.4) there, not log1p over the other components alone (-1)."""
  gap = scores.mixture_gap(jnp.asarray([0.0, -120.0]), jnp.asarray([[2.0, -239.2], [2.0, 0.0]]))
  np.testing.assert_allclose(gap.gap_N, [np.log(np.exp(-1) + np.exp(-0.4)), -1.0], atol=2e-6)
