"""The generation driver: regimes, exact resume, no recompiling, clear failures."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax.core import driver, protocol, regimes, validation


def _gaussian_family(calls=None):
  """A 1-D Gaussian refitted on its own samples: the cheapest family to compile."""
  def fit(x_NxD, w_N, key):
    del key
    if calls is not None:
      calls.append(1)  # runs once per trace
    mu = w_N @ x_NxD[:, 0] / jnp.sum(w_N)
    var = w_N @ (x_NxD[:, 0] - mu) ** 2 / jnp.sum(w_N)
    return {'mu': mu, 'sd': jnp.sqrt(var)}, {'rows': jnp.sum(w_N)}

  return protocol.Family(
      draw_real=lambda key, n: 1.0 + 2.0 * jax.random.normal(key, (n, 1)),
      fit=fit,
      sample=lambda p, key, n: p['mu'] + p['sd'] * jax.random.normal(key, (n, 1)),
      reference=lambda p0, key: {'mu0': p0['mu']},
      evaluate=lambda p, x, ref: {'mu': p['mu'], 'sd': p['sd'], 'shift': p['mu'] - ref['mu0']})


def _sweep(regime='replace', generations=7, fractions=(0.0,)):
  return protocol.Sweep(regime, seeds=3, generations=generations, samples=50,
                        real_fractions=fractions)


# ---------------------------------------------------------------- regimes

X0 = jnp.arange(10.0)[:, None]
LAST = -jnp.arange(1.0, 11.0)[:, None]
POOL = jnp.concatenate([X0, LAST, jnp.full((20, 1), 99.0)])  # blocks: x0, gen-0 samples, empty


def _train(regime, fraction=0.0, g=1):
  pools = regimes.Pools(X0, LAST, POOL, lambda key, n: 1000.0 + jnp.arange(n)[:, None])
  reg = regimes.get(regime)
  value = fraction if reg.parameter == 'real_fraction' else reg.default
  return regimes.apply(reg, pools, g, jax.random.key(0), jnp.float32(value), None)[:2]


def test_replace_trains_on_the_last_samples_only():
  x, w = _train('replace')
  np.testing.assert_array_equal(x, LAST)
  np.testing.assert_array_equal(w, 1.0)


@pytest.mark.parametrize('fraction, n_real', [(0.0, 0), (0.1, 1), (0.5, 5), (1.0, 10)])
def test_mix_keeps_a_fraction_of_the_original_data(fraction, n_real):
  x, _ = _train('mix', fraction)
  real = x[:, 0] >= 0
  assert int(real.sum()) == n_real
  assert len(set(np.asarray(x[real, 0]))) == n_real  # resampled without repeats
  assert set(np.asarray(x[~real, 0])) <= set(np.asarray(LAST[:, 0]))


def test_fresh_draws_new_real_data():
  x, _ = _train('fresh', 0.3)
  assert np.all(np.asarray(x[:3, 0]) >= 1000) and np.all(np.asarray(x[3:, 0]) < 0)


def test_accumulate_weights_every_filled_block():
  x, w = _train('accumulate', g=1)
  np.testing.assert_array_equal(x, POOL)
  np.testing.assert_array_equal(w, np.r_[np.ones(20), np.zeros(20)])


def test_accumulate_subsample_draws_filled_rows_without_repeats():
  x, w = _train('accumulate-subsample', g=1)
  values = np.asarray(x[:, 0])
  assert len(set(values)) == 10 and 99.0 not in values
  np.testing.assert_array_equal(w, 1.0)


# ---------------------------------------------------------------- running

def _run(tmp, sweep, every=3, calls=None):
  return driver.run(_gaussian_family(calls), sweep, str(tmp), every, progress=False)


@pytest.mark.parametrize('regime, fractions', [
    ('accumulate-subsample', (0.0,)), pytest.param('fresh', (0.0, 0.5), marks=pytest.mark.e2e)])
def test_resume_is_bit_identical(tmp_path, regime, fractions, monkeypatch):
  sweep = _sweep(regime, fractions=fractions)
  whole = _run(tmp_path / 'whole', sweep)
  _run(tmp_path / 'cut', sweep)
  # A kill after the generation-6 checkpoint: drop the final one and rerun.
  assert sorted(os.listdir(tmp_path / 'cut')) == ['6', '7']
  shutil.rmtree(tmp_path / 'cut' / '7')
  compiled, compile_sweep = [], driver.compile_sweep
  monkeypatch.setattr(driver, 'compile_sweep',
                      lambda *a: compiled.append(compile_sweep(*a)) or compiled[-1])
  resumed = _run(tmp_path / 'cut', sweep)
  assert len(compiled) == 1 and compiled[0][2] is None  # generation 0's program: not compiled
  assert set(whole) == {'mu', 'sd', 'shift', 'rows'}
  for k in whole:
    assert whole[k].shape == (8, 3 * len(fractions))
    np.testing.assert_array_equal(whole[k], resumed[k])


def test_chunks_compile_once_and_finished_runs_reload(tmp_path, monkeypatch):
  sweep = _sweep(generations=10)
  one_chunk, four_chunks = [], []
  _run(tmp_path / 'one', sweep, every=10, calls=one_chunk)
  first = _run(tmp_path / 'four', sweep, every=3, calls=four_chunks)
  assert 0 < len(four_chunks) == len(one_chunk)  # chunks reuse one compiled program
  monkeypatch.setattr(driver, 'programs', lambda *a: pytest.fail('recompiled'))
  again = _run(tmp_path / 'four', sweep, every=3)
  for k in first:
    np.testing.assert_array_equal(first[k], again[k])




def test_a_batch_too_big_for_a_device_is_refused_before_running(tmp_path, monkeypatch):
  sweep = _sweep(generations=4)
  calls = []
  _run(tmp_path / 'fits', sweep, calls=calls)
  assert calls and os.listdir(tmp_path / "fits")  # it ran and checkpointed
  monkeypatch.setenv('COLLAPSE_JAX_DEVICE_MEMORY', '2000')
  calls.clear()
  with pytest.raises(validation.ConfigError, match=r'does not fit; about \d+ runs') as e:
    _run(tmp_path / 'too_big', sweep, calls=calls)
  assert e.value.flag == 'seeds' and '\n' not in str(e.value)
  assert not os.listdir(tmp_path / 'too_big')  # no checkpoint: nothing ran


def test_nonfinite_metrics_name_generation_and_seed():
  bad = {'sd': np.array([[1.0, 1.0], [1.0, np.nan]])}
  with pytest.raises(FloatingPointError, match='generation 5 of seed 12'):
    driver._check_finite(bad, 4, _sweep(), np.array([11, 12]), np.array([0.0, 0.0]))


def test_changed_flags_refuse_to_resume(tmp_path):
  validation.check_config(str(tmp_path), {'seeds': 4, 'tol': 1e-5})
  validation.check_config(str(tmp_path), {'seeds': 4, 'tol': 1e-5})  # same: fine
  with pytest.raises(validation.ConfigError, match='--seeds'):
    validation.check_config(str(tmp_path), {'seeds': 8, 'tol': 1e-5})
  assert json.load(open(tmp_path / 'config.json')) == {'seeds': 4, 'tol': 1e-5}


@pytest.mark.parametrize('kwargs, flag', [
    (dict(seeds=0), 'seeds'), (dict(generations=0), 'generations'),
    (dict(samples=0), 'samples'), (dict(regimes=('grow',)), 'regime'),
    (dict(real_fractions=(1.5,)), 'real_fraction'),
    (dict(real_fractions=(0.5,)), 'real_fraction')])  # replace alone takes no fraction
def test_validation_names_the_flag(kwargs, flag):
  args = dict(seeds=2, generations=2, samples=10, regimes=('replace',), real_fractions=(0.0,))
  with pytest.raises(validation.ConfigError, match=f'--{flag}:'):
    validation.validate_sweep(**{**args, **kwargs})


@pytest.mark.e2e
def test_shared_data_gives_the_closures_results(tmp_path):
  """A family reading a dataset through WithData computes what the same family
  closing over the dataset computes."""
  table = jnp.arange(200_000.0) / 200_000.0  # 800 kB

  def make(data):
    base = _gaussian_family()
    return dataclasses.replace(base, draw_real=lambda key, n: data['t'][
        jax.random.randint(key, (n, 1), 0, data['t'].shape[0])])

  sweep = _sweep(generations=3)
  shared = driver.run(protocol.WithData(make, {'t': table}), sweep, str(tmp_path / 'a'), 3,
                      progress=False)
  closed = driver.run(make({'t': table}), sweep, str(tmp_path / 'b'), 3, progress=False)
  for k in closed:
    np.testing.assert_array_equal(shared[k], closed[k])


@pytest.mark.e2e
def test_group_width_changes_only_the_last_bits(tmp_path):
  """Why results may differ between device counts in their last bits: a device's runs are
  vectorised in groups of its width, and XLA compiles another width to code that rounds
  otherwise (jax 0.12 on a CPU: one value in a few hundred, by a float32 ulp or two). The
  driver's grouping itself is exact: any width gives each run's own draws."""
  from collapse_jax.families import gaussian  # noqa: PLC0415
  cfg = gaussian.GaussianConfig(seeds=8, generations=10, samples=(10,), regimes=('augment',))
  sweep = cfg.sweep('augment', 10)
  two, eight = (driver.run(gaussian.family(cfg), sweep, str(tmp_path / str(w)), 10,
                           progress=False, width=w) for w in (2, 8))
  for name, v in two.items():
    np.testing.assert_allclose(v, eight[name], rtol=1e-5, atol=1e-7, err_msg=name)
