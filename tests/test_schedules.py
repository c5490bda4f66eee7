"""Learned schedules: the loss is the driver's own metric, its gradient is the loss's, the closed
forms the presets are read against hold over seeds (and wrong ones fail), and the command."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from collapse_jax.core import driver, placement, protocol, schedules
from collapse_jax.families import gaussian, regression
from conftest import run_experiment

Z999 = schedules.Z999
GOLDEN = (5**0.5 - 1) / 2


def _in_ci(v_S, expected) -> bool:
  mean, half = schedules.interval(v_S)
  return abs(mean - expected) <= half


def _mixing(w_G):
  """n E (m_g - mu)^2 / sigma^2 at g = 1..G, fresh with n real and n synthetic rows, the real
  ones weighted w_g (generation 0: the mean of the 2n real rows, 1/2)."""
  return 50 * gaussian.weighted_mean_error(w_G, 0.5, 100, 1.0, len(w_G))[1:]


def _setting(family: str, knob: str, samples: int = 20, generations: int = 4):
  """(family, sweep, objective) of the small settings the tests run."""
  if family == 'regression':
    fam = regression.family(regression.RegressionConfig(samples=samples, dims=3))
    regime, fraction, objective = 'fresh', 0.5, 'test_error'
  elif knob == 'real_weight':
    fam = gaussian.family(gaussian.GaussianConfig(known_std=True))
    regime, fraction, objective = 'fresh', 0.5, 'mean_error'
  else:
    fam = gaussian.family(gaussian.GaussianConfig())
    regime, fraction, objective = 'replace', 0.0, 'sigma_error'
  sw = protocol.Sweep(regime, 1, generations, samples, (fraction,), knobs=((knob, (0.5,)),))
  return fam, sw, objective


def _theta(knob, value_G1):
  return {knob: schedules.TRANSFORMS[knob][0](jnp.asarray(value_G1, jnp.float32))}


# ---------------------------------------------------------------- the loss is the driver's

@pytest.mark.parametrize('family, knob, value', [
    ('gaussian', 'real_weight', 0.7), ('gaussian', 'temperature', 1.1),
    ('regression', 'real_weight', 0.3)])
@pytest.mark.e2e
def test_the_loss_of_a_constant_schedule_is_the_drivers_metric(tmp_path, family, knob, value):
  """driver.run of the knob at one value (its sweep, as an experiment runs it) gives the same
  per-generation metric as the loss, seed for seed."""
  fam, sw, objective = _setting(family, knob)
  metric, power = schedules.OBJECTIVES[objective]
  swept = protocol.Sweep(sw.regime, 6, sw.generations, sw.samples, sw.real_fractions,
                         knobs=((knob, (value,)),))
  metrics = driver.run(fam, swept, str(tmp_path), sw.generations, progress=False)
  expected = np.mean(metrics[metric][1:] ** power)
  theta = _theta(knob, np.full(sw.generations + 1, value))
  got = schedules.loss(theta, fam, sw, objective, jnp.arange(6))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  other = schedules.loss(_theta(knob, np.full(sw.generations + 1, value * 0.9)), fam, sw,
                         objective, jnp.arange(6))
  assert abs(other - expected) > 1e-3 * expected  # the knob does reach the runs


def test_a_schedule_per_generation_is_what_the_drivers_programs_read():
  """A per-generation schedule given to the driver's own compiled programs (a knob as G + 1
  values a run) gives the loss's metric, seed for seed."""
  fam, sw, objective = _setting('gaussian', 'real_weight')
  seeds, g = 2 * jax.device_count(), sw.generations
  w_G1 = np.linspace(0.2, 0.9, g + 1).astype(np.float32)
  first, advance = driver.programs(fam, sw, g, seeds)
  value_B = (placement.place(np.full(seeds, 0.5, np.float32)),
             {'real_weight': placement.place(np.tile(w_G1, (seeds, 1)))})
  const_B, carry_B, _ = first(placement.place(np.arange(seeds, dtype=np.int32)), value_B)
  metrics = advance(const_B, carry_B, jnp.int32(1))[1]
  got = schedules.errors(fam, sw, objective, {'real_weight': jnp.asarray(w_G1)},
                         jnp.arange(seeds))
  np.testing.assert_allclose(got.T, np.asarray(metrics['mean_error']) ** 2, rtol=1e-5)


# ---------------------------------------------------------------- the gradient

@pytest.mark.parametrize('family, knob', [  # one in the fast tier, each family's in e2e
    ('gaussian', 'real_weight'), pytest.param('gaussian', 'temperature', marks=pytest.mark.e2e),
    pytest.param('regression', 'real_weight', marks=pytest.mark.e2e)])
def test_the_gradient_is_finite_and_the_losss_finite_difference(family, knob):
  """d loss / d theta of a per-generation schedule against central differences (the same
  seeds: the loss is smooth in theta); the entries the driver never reads get none."""
  fam, sw, objective = _setting(family, knob)
  seed_S = jnp.arange(16)
  start = np.linspace(0.4, 0.7, sw.generations + 1) if knob == 'real_weight' else (
      np.linspace(0.9, 1.2, sw.generations + 1))
  theta = _theta(knob, start)
  loss = jax.jit(lambda th: schedules.loss(th, fam, sw, objective, seed_S))
  grad_G1 = np.asarray(jax.grad(lambda th: schedules.loss(th, fam, sw, objective, seed_S))(
      theta)[knob])
  assert np.all(np.isfinite(grad_G1))
  unread = 0 if knob == 'real_weight' else sw.generations
  assert grad_G1[unread] == 0
  eps = 1e-2
  for g in (1, 2, sw.generations - 1):
    step = jnp.zeros(sw.generations + 1).at[g].set(eps)
    fd = (loss({knob: theta[knob] + step}) - loss({knob: theta[knob] - step})) / (2 * eps)
    np.testing.assert_allclose(grad_G1[g], fd, rtol=2e-2, atol=1e-3 * abs(grad_G1).max())
    assert abs(grad_G1[g]) > 1e-3 * abs(grad_G1).max()


def test_a_few_steps_go_downhill_from_the_pooled_weight_compiling_once(monkeypatch):
  """From w = 0.5 the descent moves towards the golden ratio; its seeds are fresh each step,
  and the step is traced once (the first step's outputs placed as its inputs were)."""
  fam, sw, objective = _setting('gaussian', 'real_weight', samples=100)
  traced, loss = [], schedules.loss
  monkeypatch.setattr(schedules, 'loss', lambda *a: traced.append(1) or loss(*a))
  theta, loss_K = schedules.optimise(fam, sw, objective, schedules.initial(
      ('real_weight',), 'constant', sw.generations, schedules.START), 40, 64, 0.05,
      progress=False)
  w = float(jax.nn.sigmoid(theta['real_weight']))
  assert 0.55 < w < 0.7 and len(set(loss_K)) == len(loss_K)
  assert len(traced) == 1


# ---------------------------------------------------------------- closed forms

def test_weighted_mixing_follows_the_golden_law_and_wrong_laws_fail():
  """Long-run n MSE / sigma^2 of the fresh regime with the real rows weighted w, measured over
  4,000 seeds (generations 11..30, averaged per seed), against (w^2 + (1 - w)^2) / (w (2 - w))
  (gaussian.weighted_mean_error, its transient included); the pooling law 1 / (2 w (2 - w)) (w read as the
  real rows' share of 2n pooled rows) and w^2 / (1 - (1 - w)^2) (the synthetic rows' own noise
  left out) lie outside the same intervals."""
  fam, sw, objective = _setting('gaussian', 'real_weight', samples=100, generations=30)
  ws = (0.4, GOLDEN, 0.8)
  schedule = [{'real_weight': jnp.full(31, w, jnp.float32)} for w in ws]
  run = jax.jit(lambda s, seed_S: schedules.errors(fam, sw, objective, s, seed_S))
  n = 50
  for w, s in zip(ws, schedule):
    v_S = n * np.asarray(run(s, jnp.arange(4000)))[:, 10:].mean(axis=1)
    assert _in_ci(v_S, _mixing(np.full(30, w))[10:].mean()), w
    assert abs(_mixing(np.full(30, w))[-1] - gaussian.golden_long_run(w)) < 1e-6
    assert not _in_ci(v_S, 1 / (2 * w * (2 - w))), w
    assert not _in_ci(v_S, w**2 / (1 - (1 - w) ** 2)), w
  grid = np.linspace(0.3, 0.9, 6001)
  assert abs(grid[np.argmin(gaussian.golden_long_run(grid))] - GOLDEN) < 1e-3


@pytest.mark.heavy  # 4,000 seeds
def test_a_tempered_gaussian_follows_its_closed_form_and_untempered_laws_fail():
  """E sigma_error^2 and E W2^2 of the MLE Gaussian under replace at temperature 1.1, M = 10,
  over 4,000 seeds, against gaussian.tempered_errors; the untempered law, and the tempered one a
  generation off, lie outside the same intervals."""
  fam, sw, _ = _setting('gaussian', 'temperature', samples=10, generations=6)
  t_G1 = np.full(7, 1.1)
  for objective in ('sigma_error', 'w2_sq'):
    got_SxG = np.asarray(schedules.errors(fam, sw, objective, {'temperature': jnp.asarray(
        t_G1, jnp.float32)}, jnp.arange(4000)))
    law = gaussian.tempered_errors(t_G1, 10)[objective]
    plain = gaussian.tempered_errors(np.ones(7), 10)[objective]
    for g in (1, 3, 6):
      assert _in_ci(got_SxG[:, g - 1], law[g - 1]), (objective, g)
    for g in (3, 6):  # at g = 1 the temperature has had one draw to act on
      assert not _in_ci(got_SxG[:, g - 1], plain[g - 1]), (objective, g)
    assert not _in_ci(got_SxG[:, 2], law[1]), objective  # (later the spread's tail is heavy)


def test_the_best_schedules_by_the_closed_forms():
  """The best constant weight of 20 generations sits just below the golden ratio (generation
  0's real-only fit starts below the long-run error); the greedy schedule w_g = (u + 1) /
  (u + 2) rises from 0.6 to it and beats every constant; the sigma_error temperature sits
  between 1 and sqrt(M / (M - 1))."""
  grid = np.linspace(0.55, 0.68, 1301)
  constant = np.array([_mixing(np.full(20, w)).mean() for w in grid])
  assert GOLDEN - 0.002 < grid[np.argmin(constant)] < GOLDEN
  u_G = [0.5]
  for _ in range(20):
    u_G.append((u_G[-1] + 1) / (u_G[-1] + 2))
  best_G = np.asarray(u_G[1:])
  assert best_G[0] == pytest.approx(0.6) and abs(best_G[-1] - GOLDEN) < 1e-6
  assert _mixing(best_G).mean() < constant.min() - 1e-5
  temps = np.linspace(0.95, 1.1, 1501)
  sigma = [gaussian.tempered_errors(np.full(21, t), 10)['sigma_error'].mean() for t in temps]
  assert 1.0 < temps[np.argmin(sigma)] < np.sqrt(10 / 9)


# ---------------------------------------------------------------- the command

def test_bad_flags_are_one_line_before_anything_runs(tmp_path):
  for flag, value in (('knobs', 'temperature,temperature'), ('objective', 'test_error'),
                      ('family_options', 'dimz=3'), ('steps', '0')):
    workdir = tmp_path / flag
    proc = run_experiment('schedule', f'--{flag}={value}', f'--workdir={workdir}')
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f'error: --{flag}:') and not workdir.exists(), lines
  # both families sample with a temperature; a family whose `sampling_knobs` lacks it is refused
  for preset in ('golden', 'regression'):
    cfg = schedules.ScheduleConfig(**{**schedules.PRESETS[preset], 'knobs': ('temperature',)})
    cfg.validate()


@pytest.mark.e2e
def test_a_small_run_writes_its_tables_figure_and_summary(tmp_path):
  proc = run_experiment('schedule', '--schedule=per_generation', '--generations=3',
                        '--samples=20', '--seeds=8', '--steps=5', '--eval_seeds=16',
                        f'--workdir={tmp_path}')
  assert proc.returncode == 0, proc.stderr[-2000:]
  table = pd.read_csv(tmp_path / 'schedule.csv')
  assert list(table.columns) == ['generation', 'real_weight', 'temperature']
  assert np.isnan(table['real_weight'][0]) and table['real_weight'][1:].between(0, 1).all()
  assert len(pd.read_csv(tmp_path / 'losses.csv')) == 5
  assert (tmp_path / 'schedule.png').stat().st_size > 0
  assert 'learned - start' in (tmp_path / 'summary.txt').read_text()
  again = run_experiment('schedule', '--schedule=constant', '--generations=3', '--samples=20',
                         '--seeds=8', '--steps=5', '--eval_seeds=16',
                         f'--compare_with={tmp_path / "schedule.csv"}',
                         f'--workdir={tmp_path / "constant"}')
  assert again.returncode == 0 and 'learned - compared' in again.stdout, again.stderr[-2000:]


@pytest.mark.heavy
def test_the_golden_preset_finds_the_golden_ratio(tmp_path):
  proc = run_experiment('schedule', '--preset=golden', '--eval_seeds=4096',
                        f'--workdir={tmp_path}')
  assert proc.returncode == 0, proc.stderr[-2000:]
  w = pd.read_csv(tmp_path / 'schedule.csv')['real_weight'][1]
  assert abs(w - GOLDEN) < 0.01, w
