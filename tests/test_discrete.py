"""The categorical chain: absorption, diversity decay and first losses against their closed forms."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from collapse_jax.core import driver, results, validation
from collapse_jax.families import discrete

Z999 = 3.2905  # two-sided 99.9% normal quantile
PROBS = (0.5, 0.25, 0.15, 0.1)

@pytest.fixture(scope='session')
def chain(tmp_path_factory):
  """4,000 chains over 4 outcomes, M = 20, run to absorption."""
  cfg = discrete.DiscreteConfig(seeds=4000, generations=2000, samples=(20,), probs=PROBS,
                                checkpoint_every=250)
  settled = lambda m: bool(np.all(m['absorbed']))
  metrics = driver.run(discrete.family(cfg), cfg.sweep('replace', 20),
                       str(tmp_path_factory.mktemp('chain')), 250, progress=False,
                       settled=settled)
  return cfg, metrics

def test_every_chain_is_absorbed_in_outcome_i_with_probability_p_i(chain):
  _, metrics = chain
  when_B, where_B = discrete.absorption(metrics)
  assert np.all(when_B >= 0) and np.all(where_B >= 0)
  n = len(where_B)
  for i, p in enumerate(PROBS):
    freq = np.mean(where_B == i)
    assert abs(freq - p) <= Z999 * np.sqrt(p * (1 - p) / n), (i, freq, p)
  # absorbed chains stay absorbed, in the outcome they were absorbed in
  for b in range(20):
    assert np.all(metrics['absorbed'][when_B[b]:, b])
    assert np.all(metrics['top_outcome'][when_B[b]:, b] == where_B[b])

def test_diversity_decays_by_one_minus_one_over_m_per_generation(chain):
  """E[1 - sum q_n^2] = (1 - sum p^2)(1 - 1/M)^n, n = g + 1; an off-by-one fails."""
  cfg, metrics = chain
  theory = discrete.gini_simpson_theory(cfg.true_probs(), 20, 100)
  gs = metrics['gini_simpson'].astype(np.float64)
  n = gs.shape[1]
  ci = lambda g: Z999 * gs[g].std(ddof=1) / np.sqrt(n)
  for g in (0, 1, 5, 20, 60):
    assert abs(gs[g].mean() - theory[g]) <= ci(g), (g, gs[g].mean(), theory[g])
  assert abs(gs[0].mean() - theory[1]) > ci(0)  # the same test rejects a shifted generation

def test_outcomes_vanish_at_generation_0_with_probability_one_minus_p_to_the_m(chain):
  _, metrics = chain
  extinct_BxK = discrete.extinction(metrics['alive'])
  n = extinct_BxK.shape[0]
  for i, p in enumerate(PROBS):
    q = (1 - p) ** 20
    freq = np.mean(extinct_BxK[:, i] == 0)
    assert abs(freq - q) <= Z999 * np.sqrt(q * (1 - q) / n) + 1e-12, (i, freq, q)
  # a lost outcome never returns
  alive = metrics['alive']
  assert not np.any(alive[1:] & ~alive[:-1])

@pytest.mark.e2e
def test_stopping_once_absorbed_equals_running_every_generation(tmp_path):
  cfg = discrete.DiscreteConfig(seeds=6, generations=400, samples=(8,), probs=(0.6, 0.4),
                                checkpoint_every=50)
  fam, sweep = discrete.family(cfg), cfg.sweep('replace', 8)
  settled = lambda m: bool(np.all(m['absorbed']))
  stopped = driver.run(fam, sweep, str(tmp_path / 'a'), 50, progress=False, settled=settled)
  full = driver.run(fam, sweep, str(tmp_path / 'b'), 50, progress=False)
  assert np.all(stopped['absorbed'][-1])
  for k in full:
    np.testing.assert_array_equal(stopped[k], full[k], err_msg=k)

def test_sampling_never_draws_a_lost_outcome_and_follows_the_counts():
  counts = jnp.array([0.0, 3.0, 0.0, 1.0, 0.0])
  x = discrete.sample(counts, jax.random.key(0), 40_000)[:, 0]
  freq = np.bincount(np.asarray(x, int), minlength=5) / x.shape[0]
  assert freq[0] == freq[2] == freq[4] == 0
  np.testing.assert_allclose(freq[[1, 3]], [0.75, 0.25], atol=0.01)
  np.testing.assert_array_equal(discrete.summarise(x[:, None], jnp.ones(x.shape[0]), 5),
                                np.bincount(np.asarray(x, int), minlength=5))

def test_tail_is_the_least_likely_outcomes_within_the_mass():
  p = np.array([0.5, 0.04, 0.3, 0.05, 0.11])
  np.testing.assert_array_equal(discrete.tail_outcomes(p, 0.1), [0, 1, 0, 1, 0])
  zipf = discrete.DiscreteConfig(outcomes=4, zipf_exponent=1.0).true_probs()
  np.testing.assert_allclose(zipf, np.array([1, 1 / 2, 1 / 3, 1 / 4]) / (25 / 12))

@pytest.mark.parametrize('change, flag', [
    (dict(probs=(0.5, -0.1, 0.6)), 'probs'), (dict(probs=(1.0,)), 'probs'),
    (dict(outcomes=1), 'outcomes'), (dict(tail=1.5), 'tail'), (dict(samples=(0,)), 'samples'),
    (dict(regimes=('replace', 'keep')), 'regime'), (dict(generations=0), 'generations')])
def test_bad_configs_name_their_flag(change, flag):
  with pytest.raises(validation.ConfigError, match=f'--{flag}'):
    discrete.DiscreteConfig(**change).validate()

@pytest.mark.e2e
def test_run_stops_at_absorption_and_writes_its_tables(tmp_path):
  cfg = discrete.DiscreteConfig(seeds=30, generations=3000, samples=(10,), outcomes=5,
                                regimes=('replace', 'accumulate'), checkpoint_every=100)
  lines = []
  discrete.run(cfg, str(tmp_path), progress=False, log=lines.append)
  per_seed = pd.read_csv(tmp_path / 'absorption.csv')
  rep = per_seed[per_seed.regime == 'replace']
  assert (rep.absorbed_outcome >= 0).all()
  assert (per_seed[per_seed.regime == 'accumulate'].absorbed_outcome == -1).all()
  curves = pd.read_csv(tmp_path / 'curves.csv')
  assert curves[curves.regime == 'replace'].generation.max() == rep.absorption_generation.max()
  assert curves[curves.regime == 'accumulate'].generation.max() == 3000
  assert curves[curves.regime == 'accumulate'].gini_simpson_mean_theory.isna().all()
  outcomes = pd.read_csv(tmp_path / 'outcomes.csv')
  assert len(outcomes) == 2 * 5
  np.testing.assert_allclose(outcomes[outcomes.regime == 'replace'].absorbed_frequency.sum(), 1.0)
  assert '100.0% of seeds absorbed' in lines[0]
  for name in ('chain.png', 'diversity.png', 'absorption.png', 'summary.txt'):
    assert (tmp_path / name).stat().st_size > 0
  # a finished run reloads: same tables, nothing recomputed
  before = (tmp_path / 'curves.csv').read_text()
  discrete.run(cfg, str(tmp_path), progress=False, log=lambda _: None)
  assert (tmp_path / 'curves.csv').read_text() == before


# ---------------------------------------------------------------- sampling bias

def with_probabilities(fam):
  """The family with each fit's probabilities q among its metrics (G+1 x B x K)."""
  return dataclasses.replace(fam, evaluate=lambda counts_K, synth, ref: {
      **fam.evaluate(counts_K, synth, ref), 'q': counts_K / jnp.sum(counts_K)})


def biased_probs(counts, **chosen):
  w = discrete.biased(jnp.asarray(counts, jnp.float32),
                      {k: jnp.float32(v) for k, v in chosen.items()})
  return np.asarray(w / jnp.sum(w))


COUNTS = (0.0, 4.0, 2.0, 2.0, 1.0, 0.0, 7.0)  # q in sixteenths; outcomes 2 and 3 tie


def test_biased_law_tempers_then_cuts_by_rank_ties_to_the_lower_index():
  q = np.asarray(COUNTS) / 16
  np.testing.assert_allclose(biased_probs(COUNTS, temperature=0.5), q**2 / np.sum(q**2), rtol=1e-6)
  # top_k 3 keeps 6, 1 and, of the tied 2 and 3, the lower index 2
  np.testing.assert_allclose(biased_probs(COUNTS, top_k=3), np.array([0, 4, 2, 0, 0, 0, 7]) / 13)
  # top_p: the fewest most likely holding >= p: 7/16 + 4/16 = 11/16 is enough for p = 11/16
  np.testing.assert_allclose(biased_probs(COUNTS, top_p=11 / 16),
                             np.array([0, 4, 0, 0, 0, 0, 7]) / 11)
  assert np.count_nonzero(biased_probs(COUNTS, top_p=11 / 16 + 1e-3)) == 3
  # top_p acts on the law top_k left, renormalised: 7/11 >= 0.6 keeps outcome 6 alone, where p
  # on the whole law (7/16 < 0.6) would keep outcome 1 too
  np.testing.assert_array_equal(biased_probs(COUNTS, top_k=2, top_p=0.6), [0, 0, 0, 0, 0, 0, 1])
  for t in (0.05, 0.7, 1.0, 3.0, 50.0):
    for chosen in ({}, {'top_k': 4}, {'top_p': 0.9}):
      got = biased_probs(COUNTS, temperature=t, **chosen)
      assert got[0] == got[5] == 0, (t, chosen)  # zero stays zero at every temperature
      np.testing.assert_allclose(got, discrete.biased_law(q, t, **chosen), atol=1e-6)
  # at the knobs' defaults the law is the counts themselves, bit for bit
  c = jnp.asarray(COUNTS)
  np.testing.assert_array_equal(discrete.biased(c, {'temperature': jnp.float32(1),
                                                    'top_k': jnp.float32(0),
                                                    'top_p': jnp.float32(1)}), c)


def test_top_k_is_traced_one_program_for_every_k():
  law = jax.jit(jax.vmap(lambda k: discrete.biased(jnp.asarray(COUNTS), {'top_k': k})))
  w_KxK = np.asarray(law(jnp.arange(8, dtype=jnp.float32)))
  np.testing.assert_array_equal((w_KxK > 0).sum(1), [5, 1, 2, 3, 4, 5, 5, 5])
  draws = discrete.sample(w_KxK[2], jax.random.key(1), 20_000)[:, 0]
  assert set(np.unique(np.asarray(draws)).astype(int)) == {1, 6}


def test_large_m_law_under_temperature_alone_is_the_tempered_closed_form():
  p = np.array([0.4, 0.3, 0.0, 0.2, 0.1])
  np.testing.assert_allclose(discrete.large_m_law(p, 6, temperature=0.8),
                             discrete.tempered_law(p, 0.8, 6), rtol=1e-12)
  np.testing.assert_allclose(discrete.tempered_law(p, 0.5, 2)[2], p**4 / np.sum(p**4))
  assert discrete.cut_mass(p, 2) == pytest.approx(0.3) and discrete.cut_mass(p, 0) == 0


@pytest.fixture(scope='session')
def tempered_chain(tmp_path_factory):
  """400 chains a temperature, M = 10,000, generations 0..3, with their fits' probabilities."""
  cfg = discrete.DiscreteConfig(seeds=400, generations=3, samples=(10_000,),
                                probs=PROBS + (0.0,), temperatures=(0.8, 1.25), checkpoint_every=3)
  sweep = cfg.sweep('replace', 10_000)
  metrics = driver.run(with_probabilities(discrete.family(cfg)), sweep,
                       str(tmp_path_factory.mktemp('tempered')), 3, progress=False)
  return cfg, sweep, metrics


@pytest.mark.parametrize('t', [0.8, 1.25])
def test_generation_g_follows_p_to_the_one_over_t_to_the_g(tempered_chain, t):
  """E q_g = p^(1/t^g) / Z at large M: generation 0 fits the truth's own samples, each later one
  M samples of its predecessor tempered once. Not compounded (p^(1/t)), the exponent the
  wrong way (p^(t^g)) or one tempering too many (generation 0's data tempered too) fail."""
  cfg, sweep, metrics = tempered_chain
  q_GxSxK = metrics['q'][:, results.group_rows(sweep, 0.0, {'temperature': t})].astype(np.float64)
  mean_GxK, s = q_GxSxK.mean(1), q_GxSxK.shape[1]
  ci_GxK = Z999 * q_GxSxK.std(1, ddof=1) / np.sqrt(s)
  p, g = cfg.true_probs(), sweep.generations
  law_GxK = discrete.tempered_law(p, t, g)
  assert np.all(np.abs(mean_GxK - law_GxK) <= ci_GxK + 1e-7), (mean_GxK - law_GxK) / ci_GxK
  assert np.all(q_GxSxK[..., -1] == 0)  # the outcome of probability 0 at every temperature
  wrong = {'not compounded': np.stack([p] + [discrete.tempered_law(p, t, 1)[1]] * g),
           'p^(t^g)': discrete.tempered_law(p, 1 / t, g),
           'one tempering too many': discrete.tempered_law(p, t, g + 1)[1:]}
  for name, w_GxK in wrong.items():
    assert np.any(np.abs(mean_GxK - w_GxK)[1:] > ci_GxK[1:]), name


@pytest.fixture(scope='session')
def truncated_chain(tmp_path_factory):
  """300 chains a group: top_k (0, 1, 2, 3) x temperature (0.8, 1) at M = 20 over 30
  generations, and top_k (0, 1, 2, 3) at M = 10,000 over 2."""
  def chain(m, generations, temperatures):
    cfg = discrete.DiscreteConfig(seeds=300, generations=generations, samples=(m,), probs=PROBS,
                                  temperatures=temperatures, top_ks=(0, 1, 2, 3),
                                  checkpoint_every=generations)
    sweep = cfg.sweep('replace', m)
    return sweep, driver.run(discrete.family(cfg), sweep,
                             str(tmp_path_factory.mktemp(f'truncated{m}')), generations,
                             progress=False)
  return chain(20, 30, (0.8, 1.0)), chain(10_000, 2, (1.0,))


@pytest.mark.heavy  # 2,400 chains
def test_top_k_floors_the_distance_from_the_truth_at_the_cut_mass(truncated_chain):
  """After a generation sampled with top_k = k, TV >= the truth's mass outside its top k, in
  every seed and generation, at any temperature; and seeds sit on it, so no larger floor holds
  (twice it, the L1 distance with TV's 1/2 forgotten, or the mass outside the top k - 1)."""
  sweep, metrics = truncated_chain[0]
  for t, k in itertools.product((0.8, 1.0), (1, 2, 3)):
    tv_GxS = metrics['tv'][:, results.group_rows(sweep, 0.0, {'temperature': t, 'top_k': k})]
    floor = discrete.cut_mass(PROBS, k)
    assert np.all(tv_GxS[1:] >= floor - 1e-6), (t, k, tv_GxS[1:].min(), floor)
    assert tv_GxS[1:].min() <= floor + 1e-6, (t, k, tv_GxS[1:].min(), floor)  # float32: 1e-6
    assert np.all(metrics['support'][1:, results.group_rows(
        sweep, 0.0, {'temperature': t, 'top_k': k})] <= k)


@pytest.mark.heavy  # the same chains
def test_first_truncated_generation_sits_on_the_floor_at_large_m(truncated_chain):
  """At M = 10,000, E TV at generation 1 (the first fitted to data sampled with top_k) is the
  cut mass; neither the cut mass of k - 1 or k + 1 outcomes (k off by one), nor the untruncated
  chain's distance (no floor: TV -> 0), nor twice the cut mass is."""
  sweep, metrics = truncated_chain[1]
  tv_at = lambda k: metrics['tv'][1, results.group_rows(sweep, 0.0, {'top_k': k})]
  free = tv_at(0).astype(np.float64)
  for k in (1, 2, 3):
    tv_S = tv_at(k).astype(np.float64)
    ci = Z999 * tv_S.std(ddof=1) / np.sqrt(len(tv_S)) + 1e-6  # float32 sums: 1e-6
    c = discrete.cut_mass(PROBS, k)
    assert abs(tv_S.mean() - c) <= ci, (k, tv_S.mean(), c, ci)
    for wrong in (discrete.cut_mass(PROBS, k - 1), discrete.cut_mass(PROBS, k + 1), 2 * c,
                  free.mean() + Z999 * free.std(ddof=1) / np.sqrt(len(free))):
      assert abs(tv_S.mean() - wrong) > ci, (k, wrong)


@pytest.mark.e2e
def test_knobs_at_their_defaults_draw_what_an_unbiased_run_draws(tmp_path):
  base = discrete.DiscreteConfig(seeds=8, generations=20, samples=(15,), outcomes=6,
                                 checkpoint_every=20)
  knobbed = dataclasses.replace(base, temperatures=(1.0, 0.7), top_ks=(0, 2), top_ps=(1.0, 0.9))
  plain = driver.run(discrete.family(base), base.sweep('replace', 15), str(tmp_path / 'a'), 20,
                     progress=False)
  sweep = knobbed.sweep('replace', 15)
  metrics = driver.run(discrete.family(knobbed), sweep, str(tmp_path / 'b'), 20, progress=False)
  rows = results.group_rows(sweep, 0.0, {'temperature': 1.0, 'top_k': 0, 'top_p': 1.0})
  assert set(metrics) == set(plain) | {'tv'}
  for k, v in plain.items():
    if np.issubdtype(v.dtype, np.floating):  # 64 runs vectorise otherwise than 8: a last bit
      np.testing.assert_allclose(metrics[k][:, rows], v, rtol=1e-6, atol=1e-7, err_msg=k)
    else:  # what the counts are, exactly: which outcomes live, how many, the likeliest
      np.testing.assert_array_equal(metrics[k][:, rows], v, err_msg=k)
  other = results.group_rows(sweep, 0.0, {'temperature': 0.7, 'top_k': 0, 'top_p': 1.0})
  assert not np.array_equal(metrics['entropy_bits'][:, other], plain['entropy_bits'])


@pytest.mark.e2e
def test_a_run_with_knobs_writes_a_group_per_knob_value_and_their_closed_forms(tmp_path):
  cfg = discrete.DiscreteConfig(seeds=12, generations=60, samples=(10,), outcomes=5,
                                regimes=('replace', 'accumulate'), temperatures=(0.8, 1.0),
                                top_ks=(0, 2), checkpoint_every=60)
  lines = []
  discrete.run(cfg, str(tmp_path), progress=False, log=lines.append)
  per_seed = pd.read_csv(tmp_path / 'absorption.csv')
  assert {'temperature', 'top_k'} <= set(per_seed)
  assert (per_seed.groupby(['regime', 'temperature', 'top_k']).size() == 12).all()
  outcomes = pd.read_csv(tmp_path / 'outcomes.csv')
  assert len(outcomes) == 2 * 4 * 5
  rep = outcomes[outcomes.regime == 'replace']
  np.testing.assert_allclose(rep.groupby(['temperature', 'top_k']).absorbed_frequency.sum(), 1.0)
  assert rep[(rep.temperature != 1) | (rep.top_k != 0)].mean_loss_generation_theory.isna().all()
  assert rep[(rep.temperature == 1) & (rep.top_k == 0)].mean_loss_generation_theory.notna().all()
  curves = pd.read_csv(tmp_path / 'curves.csv')
  p = cfg.true_probs()
  for (regime, t, k), c in curves.groupby(['regime', 'temperature', 'top_k']):
    floor = c.tv_floor_theory.to_numpy()
    if regime == 'replace' and k == 2:
      assert np.isnan(floor[0]) and np.allclose(floor[1:], discrete.cut_mass(p, 2))
      assert (c.tv_mean.iloc[1:] >= floor[1:] - 1e-6).all()
    else:
      assert np.isnan(floor).all()
    law = discrete.large_m_law(p, len(c) - 1, t, int(k))
    expected = 0.5 * np.abs(law - p).sum(1) if regime == 'replace' else np.full(len(c), np.nan)
    np.testing.assert_allclose(c.tv_large_m_theory, expected, rtol=1e-6)
    unbiased = regime == 'replace' and t == 1 and k == 0
    assert c.gini_simpson_mean_theory.notna().all() == unbiased
  assert any('temperature 0.8, top_k 2' in line for line in lines[0].splitlines())


def test_top_k_beyond_the_outcomes_is_refused_in_one_line():
  discrete.DiscreteConfig(probs=(0.5, 0.3, 0.2), top_ks=(0, 3)).validate()
  with pytest.raises(validation.ConfigError, match='^--top_k: 4 is more than the 3 outcomes') as e:
    discrete.DiscreteConfig(probs=(0.5, 0.3, 0.2), top_ks=(2, 4)).validate()
  assert '\n' not in str(e.value)
