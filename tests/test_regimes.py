"""Regimes as policies: the parts, the new regimes' closed forms, and their bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax.core import driver, regimes, validation
from collapse_jax.families import discrete, gaussian, gmm

Z999 = 3.2905  # two-sided 99.9% normal quantile

X0 = jnp.arange(10.0)[:, None]


def _pools(last, pool=None):
  return regimes.Pools(X0, last, pool, lambda key, n: 1000.0 + jnp.arange(n)[:, None])


# ---------------------------------------------------------------- the policies

def test_verify_keeps_the_best_scored_of_the_candidates_it_may_use():
  last = jnp.arange(40.0)[:, None]  # candidates; the score is the value itself
  x, w, metrics = regimes.verify(_pools(last), 1, jax.random.key(0), jnp.float32(0.5),
                                 last[:, 0])
  # keep 0.5: 20 candidates are looked at, the 10 best of them kept; the rest are unused
  np.testing.assert_array_equal(np.sort(x[:, 0]), np.arange(10.0, 20.0))
  np.testing.assert_array_equal(w, 1.0)
  assert float(metrics['pass_rate']) == 0.5
  x, _, metrics = regimes.verify(_pools(last), 1, jax.random.key(0), jnp.float32(0.25),
                                 last[:, 0])
  np.testing.assert_array_equal(np.sort(x[:, 0]), np.arange(30.0, 40.0))


def test_curate_picks_each_row_among_its_candidates_by_exp_scaled_score():
  n, k = 2000, 2
  last = jnp.tile(jnp.array([[0.0], [1.0]]), (n, 1))  # each row's candidates: 0 and 1
  scores = last[:, 0]
  for scale in (0.0, 1.0, 3.0):
    x, _ = regimes.curate(regimes.Pools(jnp.zeros((n, 1)), last, None, None), 1,
                          jax.random.key(1), jnp.float32(scale), scores)
    p = np.exp(scale) / (1 + np.exp(scale))  # Bradley-Terry: P(1 beats 0)
    assert abs(float(x.mean()) - p) < Z999 * np.sqrt(p * (1 - p) / n), scale
  # K = 4, the last candidate unscorable (-inf: never picked), the others 0, 1, 2
  last = jnp.tile(jnp.arange(k + 2.0)[:, None], (n, 1))
  scores = jnp.where(last[:, 0] < k + 1, last[:, 0], -jnp.inf)
  x, _ = regimes.curate(regimes.Pools(jnp.zeros((n, 1)), last, None, None), 1,
                        jax.random.key(2), jnp.float32(0.5), scores)
  p_K = np.exp(0.5 * np.arange(k + 1)) / np.exp(0.5 * np.arange(k + 1)).sum()
  counts_K = np.bincount(np.asarray(x[:, 0], int), minlength=k + 2)
  assert counts_K[k + 1] == 0
  for c, p in zip(counts_K, p_K):
    assert abs(c / n - p) < Z999 * np.sqrt(p * (1 - p) / n), (counts_K, p_K)


def test_augment_trains_on_all_original_data_and_a_share_of_synthetic():
  last = -jnp.arange(1.0, 21.0)[:, None]
  x, w = regimes.augment(_pools(last), 3, jax.random.key(0), jnp.float32(0.5), None)
  np.testing.assert_array_equal(x[:10], X0)
  np.testing.assert_array_equal(w, np.r_[np.ones(10), np.ones(5), np.zeros(15)])


def test_age_decay_weights_each_generations_data_by_its_age():
  pool = jnp.zeros((50, 1))
  _, w = regimes.accumulate(_pools(X0, pool), 2, jax.random.key(0), jnp.float32(0.5), None)
  # generation 2 trains on blocks 0 (original), 1 and 2, of ages 2, 1, 0
  np.testing.assert_array_equal(w, np.r_[np.full(10, 0.25), np.full(10, 0.5), np.ones(10),
                                         np.zeros(20)])


def test_a_regime_written_by_a_user_runs_in_the_driver(tmp_path, monkeypatch):
  def half_real(pools, g, key, value, scores):
    return regimes.with_real(pools.last[:pools.n], regimes.resampled(pools, key), 0.5), \
        jnp.ones(pools.n)
  monkeypatch.setitem(regimes.REGIMES, 'half-real', regimes.Regime('half-real', half_real))
  cfg = gaussian.GaussianConfig(seeds=64, generations=40, samples=(20,),
                                regimes=('half-real',), checkpoint_every=40).validate()
  m = driver.run(gaussian.family(cfg), cfg.sweep('half-real', 20), str(tmp_path), 40,
                 progress=False)
  # half the data real every generation: the variance cannot collapse as replace's does
  assert np.median(m['sigma'][-1]) > 0.8


# ---------------------------------------------------------------- closed forms

def _gaussian(tmp_path, regime, seeds, samples, generations, **options):
  cfg = gaussian.GaussianConfig(seeds=seeds, generations=generations, samples=(samples,),
                                regimes=(regime,), checkpoint_every=generations,
                                **options).validate()
  sweep = cfg.sweep(regime, samples)
  return driver.run(gaussian.family(cfg), sweep, str(tmp_path / regime), generations,
                    progress=False)


def _in_ci(values_S, expected):
  values_S = np.asarray(values_S, np.float64)
  return abs(values_S.mean() - expected) <= Z999 * values_S.std(ddof=1) / np.sqrt(len(values_S))


def test_verified_by_the_truth_the_law_holds_deep_into_collapse(tmp_path):
  """Each generation multiplies the variance by r c_q while float32 can represent the model:
  12 generations take sigma from 1 to about 1e-5, 1e-5 of the truth's scale, where the
  truth's log density computed as a constant plus a small term tied its candidates (from
  the ninth generation on, the ratio left the law by 18%, then by several times c_q)."""
  m, keep, generations = 2000, 0.5, 12
  metrics = _gaussian(tmp_path, 'verify', 256, m, generations, keep_fractions=(keep,))
  law = gaussian.verify_factor(m / np.ceil(m / keep)) * (m - 1) / m
  log_trace_GxS = metrics['log_trace'].astype(np.float64)
  ratio_GxS = np.exp(np.diff(log_trace_GxS, axis=0))
  assert np.median(metrics['sigma'][-1]) < 1e-4
  for g, ratio_S in enumerate(ratio_GxS, start=1):
    assert abs(ratio_S.mean() / law - 1) < 0.01, (g, ratio_S.mean() / law)
    assert _in_ci(ratio_S, law), g
  # the law as a whole, from the truth: E sigma_g^2 = law^g r
  var_GxS = metrics['sigma'].astype(np.float64) ** 2
  r = (m - 1) / m  # mle
  for g in (1, 2, 3):
    assert _in_ci(var_GxS[g], law**g * r), g
  # ...and not a plausible wrong one: the kept share of the variance, or a generation off
  assert not _in_ci(ratio_GxS[0], keep * r)
  assert not _in_ci(var_GxS[2], law**3 * r)
  np.testing.assert_allclose(metrics['pass_rate'][1:], 0.5)


def test_the_truncated_normal_factor():
  assert gaussian.verify_factor(1.0) == pytest.approx(1.0)
  # the central 68.27% of N(0, 1) lies within one sd: its variance 1 - 2 phi(1) / 0.6827
  assert gaussian.verify_factor(0.682689) == pytest.approx(1 - 2 * 0.2419707 / 0.682689, 1e-5)


@pytest.mark.heavy  # 2,000 rows, 32 candidates
def test_curation_approaches_the_tilted_gaussian_as_candidates_grow(tmp_path):
  scale, target = 1.0, 1.0
  mean, var = gaussian.curate_limit(0.0, 1.0, scale, target)
  assert (mean, var) == pytest.approx((2 / 3, 1 / 3))
  errors = []
  for k in (2, 32):
    metrics = _gaussian(tmp_path / f'K{k}', 'curate', 200, 2000, 1, reward_scales=(scale,),
                        candidates=k, score='reward', reward_target=target)
    errors.append(abs(np.mean(metrics['sigma'][1].astype(np.float64) ** 2) - var) / var)
  assert errors[1] < errors[0] / 4 and errors[1] < 0.05, errors


def test_curates_pick_at_depth_is_the_pick_float64_scores_make():
  """Candidates 1e-6 wide at 1e-3 from the truth's mode, scored by the truth's log density
  (--score=truth) and tilted by a scale that makes their differences count: each row's pick
  is the one float64 scores give, where scores computed as a constant plus a small term
  take a handful of values and the pick follows the uniform more than the scores."""
  n, k, scale = 500, 4, 1e9
  fam = gaussian.family(gaussian.GaussianConfig())
  model = {'mean': jnp.asarray([1e-3]), 'unit': jnp.ones((1, 1)),
           'log_scale': jnp.asarray([np.log(1e-6)], jnp.float32)}
  x_CxD = gaussian.sample(model, jax.random.key(0), n * k)
  key = jax.random.key(1)
  pools = regimes.Pools(jnp.zeros((n, 1)), x_CxD, None, None)

  def picks(scores_C):
    return np.asarray(regimes.curate(pools, 1, key, jnp.float32(scale), scores_C)[0])[:, 0]

  x64_NxK = np.asarray(x_CxD, np.float64)[:, 0].reshape(n, k)
  logits_NxK = -0.5 * scale * x64_NxK**2
  p_NxK = np.exp(logits_NxK - logits_NxK.max(1, keepdims=True))
  cdf_NxK = np.cumsum(p_NxK / p_NxK.sum(1, keepdims=True), 1)
  u_N = np.asarray(jax.random.uniform(key, (n,)), np.float64)
  want_N = x64_NxK[np.arange(n), np.minimum((cdf_NxK <= u_N[:, None]).sum(1), k - 1)]
  assert np.mean(picks(fam.true_log_density(x_CxD).gap_N) == want_N) >= 0.998
  assert np.mean(picks(gaussian.true_log_density(x_CxD, 0.0, 1.0)) == want_N) < 0.75


def test_augment_keeps_the_mean_error_bounded_as_its_recursion_says(tmp_path):
  m, ratio, g = 100, 0.5, 12
  metrics = _gaussian(tmp_path, 'augment', 3000, m, g, synthetic_ratios=(ratio,))
  law = gaussian.augment_mean_error(m, ratio, 1.0, g)
  err_GxS = metrics['mean_error'].astype(np.float64) ** 2
  for gen in (0, 1, 4, g):
    assert _in_ci(err_GxS[gen], law[gen]), gen
  assert law[-1] < 1.5 / m
  # replace's mean error grows without bound: n sigma^2 / M after n fits
  assert not _in_ci(err_GxS[g], (g + 1) / m)


@pytest.mark.heavy  # 1,500 chains
def test_curating_the_chain_at_scale_zero_is_absorbed_as_replace_is(tmp_path):
  """At reward scale 0 each kept row is a uniform pick among its candidates: the chain is
  replace's, absorbed in outcome i with probability p_i; with a reward, the best outcome's
  share of absorptions grows."""
  probs = (0.5, 0.3, 0.2)
  cfg = discrete.DiscreteConfig(seeds=1500, generations=150, samples=(10,), probs=probs,
                                regimes=('curate',), reward_scales=(0.0, 2.0),
                                rewards=(0.0, 0.0, 1.0), score='reward',
                                checkpoint_every=150).validate()
  metrics = driver.run(discrete.family(cfg), cfg.sweep('curate', 10), str(tmp_path), 150,
                       progress=False)
  top = metrics['top_outcome'][-1]
  absorbed = metrics['absorbed'][-1]
  flat, tilted = top[:1500][absorbed[:1500]], top[1500:][absorbed[1500:]]
  assert len(flat) > 1400
  for i, p in enumerate(probs):
    share = np.mean(flat == i)
    assert abs(share - p) < Z999 * np.sqrt(p * (1 - p) / len(flat)), (i, share)
  assert np.mean(tilted == 2) > np.mean(flat == 2) + 0.2


def test_a_curated_chain_follows_the_bradley_terry_law_at_large_m(tmp_path):
  """With M = 20,000 each generation's frequencies are the last's curated law: with K = 2
  candidates at scale 1, outcome 2 (reward 1) goes 0.2 -> 0.274 -> 0.366 -> 0.473 -> 0.588,
  not the tilt p e^{t r} / Z of K -> infinity (0.93 at generation 4), which larger K approach."""
  probs, rewards, m = (0.5, 0.3, 0.2), (0.0, 0.0, 1.0), 20_000
  cfg = discrete.DiscreteConfig(seeds=200, generations=4, samples=(m,), probs=probs,
                                regimes=('curate',), reward_scales=(1.0,), rewards=rewards,
                                score='reward', candidates=2, tail=0.2,
                                checkpoint_every=4).validate()
  tail_GxS = driver.run(discrete.family(cfg), cfg.sweep('curate', m), str(tmp_path), 4,
                        progress=False)['tail_mass']  # the frequency of outcome 2
  q, tilt = np.asarray(probs), np.asarray(probs)
  for g in range(1, 5):
    q, tilt = discrete.curated_law(q, rewards, 1.0, 2), discrete.curated_law(tilt, rewards, 1.0, None)
    half = Z999 * tail_GxS[g].std(ddof=1) / np.sqrt(cfg.seeds) + 1.0 / m  # + the O(1/M) bias
    assert abs(tail_GxS[g].mean() - q[2]) < half, (g, tail_GxS[g].mean(), q[2])
  assert tail_GxS[4].mean() < tilt[2] - 0.2
  k_q = [discrete.curated_law(np.asarray(probs), rewards, 1.0, k)[2] for k in (2, 4, 16, 64, None)]
  assert np.all(np.diff(k_q) > 0) and abs(k_q[-2] - k_q[-1]) < 0.01


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize('fields, flag', [
    (dict(regimes=('verify',), keep_fractions=(0.0,)), 'keep_fraction'),
    (dict(regimes=('verify',), keep_fractions=(1.5,)), 'keep_fraction'),
    (dict(regimes=('curate',), reward_scales=(-1.0,)), 'reward_scale'),
    (dict(regimes=('augment',), synthetic_ratios=(-0.1,)), 'synthetic_ratio'),
    (dict(regimes=('accumulate',), age_decays=(0.0,)), 'age_decay'),
    (dict(regimes=('replace',), keep_fractions=(0.3,)), 'keep_fraction'),
    (dict(regimes=('replace',), candidates=8), 'candidates'),
    (dict(regimes=('curate',), candidates=0), 'candidates'),
    (dict(regimes=('verify',), score='truth', verifier_noise=2.0), 'verifier_noise'),
    (dict(regimes=('verify',), score='nonsense'), 'score'),
])
def test_bad_regime_settings_name_their_flag(fields, flag):
  with pytest.raises(validation.ConfigError) as e:
    gaussian.GaussianConfig(**fields).validate()
  assert e.value.flag == flag and '\n' not in str(e.value)


def test_a_score_the_family_lacks_is_refused():
  family = dataclasses.replace(gaussian.family(gaussian.GaussianConfig()), reward=None)
  with pytest.raises(validation.ConfigError, match="'reward' is not a score") as e:
    validation.validate_regime_settings(('curate',), (), 'reward', family)
  assert e.value.flag == 'score'


def test_an_unknown_regime_is_refused():
  with pytest.raises(validation.ConfigError, match='unknown regime') as e:
    validation.validate_sweep(2, 2, 10, ('verified',), (0.0,))
  assert e.value.flag == 'regime'


def test_every_family_on_the_driver_scores_every_way():
  for family in (gaussian.family(gaussian.GaussianConfig()), gmm.family(gmm.GMMConfig())):
    assert regimes.available_scores(family) == regimes.SCORES
  # outcomes have no place to move a verifier to
  assert regimes.available_scores(discrete.family(discrete.DiscreteConfig())) == tuple(
      s for s in regimes.SCORES if s != 'verifier')


# ---------------------------------------------------------------- resume and devices

@pytest.mark.parametrize('regime, options', [
    ('verify', dict(keep_fractions=(0.5, 0.8), score='noisy', verifier_noise=0.5)),
    ('curate', dict(reward_scales=(0.0, 2.0), score='gen0', candidates=3)),
    ('augment', dict(synthetic_ratios=(0.25, 1.0))),
    ('accumulate', dict(age_decays=(0.5,), score='self')),
    ('fresh', dict(real_fractions=(0.5,), real_weights=(0.3, 0.7), temperatures=(0.9, 1.1))),
    ('verify', dict(verifier_shifts=(0.0, 1.0), verifier_scales=(2.0,))),
])
@pytest.mark.e2e
def test_resume_is_bit_identical_under_the_new_regimes(tmp_path, regime, options, monkeypatch):
  cfg = gaussian.GaussianConfig(seeds=3, generations=6, samples=(16,), dims=2,
                                regimes=(regime,), checkpoint_every=3, **options).validate()
  family, sweep = gaussian.family(cfg), cfg.sweep(regime, 16)
  compiled, compile_sweep = {}, driver.compile_sweep  # the same programs for the three runs
  monkeypatch.setattr(driver, 'compile_sweep', lambda *a: compiled.get(0) or compiled.setdefault(
      0, compile_sweep(*a[:4])))  # both programs, whichever a run asks for
  whole = driver.run(family, sweep, str(tmp_path / 'whole'), 3, progress=False)
  driver.run(family, sweep, str(tmp_path / 'cut'), 3, progress=False)
  (tmp_path / 'cut' / '6' / 'MANIFEST.sha256').unlink()  # killed before the last seal
  resumed = driver.run(family, sweep, str(tmp_path / 'cut'), 3, progress=False)
  assert {'train_score', 'sample_score', 'pass_rate'} <= set(whole) or regime in ('augment', 'fresh')
  for k in whole:
    np.testing.assert_array_equal(whole[k], resumed[k], err_msg=k)


def test_a_fit_filtered_down_to_a_point_mass_is_an_outcome_not_an_error(tmp_path):
  """Self-filtering keeps the central half of the model's own samples: the spread shrinks
  by c_0.5 ~ 0.14 a generation, below float32's resolution within 20, to a point mass."""
  metrics = _gaussian(tmp_path, 'verify', 8, 50, 30, keep_fractions=(0.5,), score='self')
  assert np.all(metrics['sigma'][-1] == 0) and np.all(metrics['log_trace'][-1] == -np.inf)
  assert np.all(np.isfinite(metrics['w2_sq'])) and np.all(np.isfinite(metrics['train_score']))
