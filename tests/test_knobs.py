"""Knobs swept beside a regime's parameter: their errors, their columns and groups, their
weights, and nothing of them in a run that sets none."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax.core import driver, knobs, regimes, results, validation
from collapse_jax.families import gaussian


def _cfg(**kw):
  base = dict(seeds=4, generations=3, samples=(16,), checkpoint_every=3)
  return gaussian.GaussianConfig(**{**base, **kw})


@pytest.mark.parametrize('change, flag, words', [
    (dict(temperatures=(1.0, 0.0)), 'temperature', '0 is not positive'),
    (dict(temperatures=()), 'temperature', 'needs at least one value'),
    (dict(temperatures=(0.9, 0.9)), 'temperature', 'repeats a value'),
    (dict(top_ks=(2,)), 'top_k', 'does not sample with it; it takes --temperature'),
    (dict(top_ks=(1.5,)), 'top_k', 'non-negative whole number'),
    (dict(top_ps=(0.0,)), 'top_p', 'in (0, 1]'),
    (dict(regimes=('replace',), real_weights=(0.5,)), 'real_weight',
     'applies only to the regimes that mix'),
    (dict(regimes=('fresh',), real_weights=(1.5,)), 'real_weight', 'in [0, 1]'),
    (dict(verifier_shifts=(1.0,), score='truth'), 'verifier_shift',
     'applies only to --score=verifier'),
    (dict(verifier_scales=(0.0,)), 'verifier_scale', 'positive'),
    (dict(verifier_shifts=(float('nan'),)), 'verifier_shift', 'finite'),
])
def test_bad_knobs_are_one_line_errors_naming_their_flag(change, flag, words):
  with pytest.raises(validation.ConfigError, match=f'^--{flag}: .*') as e:
    _cfg(**change).validate()
  assert words in str(e.value) and '\n' not in str(e.value)


def test_a_knob_acts_only_where_it_means_something():
  cfg = _cfg(regimes=('replace', 'fresh', 'verify'), real_fractions=(0.5,),
             temperatures=(0.9, 1.1), real_weights=(0.2, 0.6), verifier_shifts=(0.0, 1.0))
  assert cfg.validate().active_score(cfg.regimes) == 'verifier'  # the shifts ask for it
  by_regime = {r: dict(cfg.sweep(r, 16).knobs) for r in cfg.regimes}
  assert set(by_regime['replace']) == {'temperature', 'verifier_shift'}
  assert set(by_regime['fresh']) == {'temperature', 'real_weight', 'verifier_shift'}
  sweep = cfg.sweep('fresh', 16)
  assert len(sweep.grid()) == 8 and len(sweep.runs()[0]) == 8 * 4
  # seeds fastest, then the knobs in KNOBS' order, the regime's value slowest
  knob_B = sweep.knob_runs()
  assert list(knob_B['temperature'][::4]) == pytest.approx([0.9] * 4 + [1.1] * 4)
  assert list(knob_B['verifier_shift'][::4]) == [0, 1] * 4


def test_a_run_without_knobs_records_and_carries_nothing_of_them(tmp_path):
  cfg = _cfg(regimes=('fresh',), real_fractions=(0.5,))
  record = cfg.record('gaussian')
  assert not (set(knobs.FIELDS.values()) | {'known_std'}) & set(record)  # as recorded before them
  assert cfg.sweep('fresh', 16).knobs == ()
  tuned = _cfg(regimes=('fresh',), real_fractions=(0.5,), real_weights=(0.3,))
  assert tuned.record('gaussian')['real_weights'] == [0.3]
  json.dumps(tuned.record('gaussian'))
  family, sweep = gaussian.family(cfg), cfg.sweep('fresh', 16)
  const, _, _ = jax.eval_shape(lambda s, f: driver._first_generation(family, sweep, s, f),
                               jnp.int32(0), jnp.float32(0.5))
  assert 'knobs' not in const


def test_real_weight_gives_the_real_rows_their_share_and_keeps_the_total():
  w_R = jnp.asarray([1.0, 1.0, 2.0, 0.0, 1.0, 3.0])
  out = regimes.real_weighted(w_R, 2, 0.8)
  np.testing.assert_allclose(out[:2].sum() / out.sum(), 0.8, rtol=1e-6)
  np.testing.assert_allclose(out.sum(), w_R.sum(), rtol=1e-6)
  np.testing.assert_allclose(out[2:] / out[2:].sum(), w_R[2:] / w_R[2:].sum(), rtol=1e-6)
  assert out[3] == 0  # an unused row stays unused
  for rows in (0, 6):  # one side empty: nothing to share
    np.testing.assert_array_equal(regimes.real_weighted(w_R, rows, 0.8), w_R)
  # the weighted fit's mean is the weighted mean of the two parts
  x_Rx1 = jnp.arange(6.0)[:, None]
  fit, _ = gaussian.fit(x_Rx1, regimes.real_weighted(jnp.ones(6), 3, 0.25), 'mle')
  np.testing.assert_allclose(fit['mean'][0], 0.25 * 1.0 + 0.75 * 4.0, rtol=1e-6)


def test_a_schedule_is_read_a_generation_at_a_time():
  run = {'temperature': jnp.asarray([0.5, 1.0, 2.0]), 'real_weight': jnp.float32(0.3)}
  assert knobs.value(run, 'temperature', 2) == 2.0
  assert knobs.value(run, 'real_weight', 2) == pytest.approx(0.3)
  assert knobs.value(run, 'top_p', 1) == 1.0  # not set: the default
  assert knobs.sampling(run, 0) == {'temperature': 0.5}


@pytest.mark.e2e
def test_tables_carry_a_column_per_knob_and_keep_its_groups_apart(tmp_path):
  cfg = _cfg(regimes=('replace', 'fresh'), real_fractions=(0.5,), temperatures=(0.8, 1.25),
             real_weights=(0.2, 0.9)).validate()
  sweeps = [(s, driver.run(gaussian.family(cfg), s, str(tmp_path / d), 3, progress=False))
            for s, d in cfg.sweeps()]
  table, curves = results.long_table(sweeps), results.over_seeds(sweeps)
  cols = list(curves)
  assert cols.index('temperature') < cols.index('real_weight') < cols.index('generation')
  assert np.isnan(table['real_weight'][table['regime'] == 'replace']).all()  # pooled
  keys = results.groups(curves)
  assert len(keys) == 2 + 4 and all(k.knobs for k in keys)
  fresh = [k for k in keys if k.regime == 'fresh']
  assert sorted({dict(k.knobs)['real_weight'] for k in fresh}) == pytest.approx([0.2, 0.9])
  for k in keys:  # each group's statistics are over its own seeds alone
    sub = results.select(curves, k.regime, k.value, k.samples, k.knobs)
    assert sub['seeds'][0, 0] == 4
  text = results.summary(curves, ('sigma',), generations=(1,))
  assert 'temperature real_weight' in text.splitlines()[0]
  # a hotter sampler spreads wider than a colder one, generation after generation
  sub = {t: results.select(curves, 'replace', 0.0, 16, (('temperature', t),))
         for t in (0.8, 1.25)}
  assert sub[1.25]['sigma_q50'][-1, 0] > sub[0.8]['sigma_q50'][-1, 0]
