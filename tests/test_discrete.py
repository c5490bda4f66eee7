"""The categorical chain: absorption, diversity decay and first losses against their closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from collapse_jax.core import driver, validation
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
