"""Flow matching on 2-D targets: the loss and density against closed forms, the targets and
metrics against theirs, every regime's rows, vmapped runs against a loop, and the command
line's generation loop, which resumes exactly.

Compiling dominates on a CPU (a generation's program takes some 10 s), so one compiled fit
serves most tests, and the command line runs in this process."""

import functools
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from collapse_jax.core import regimes, results, sampling, scores, validation
from collapse_jax.families import flow
from conftest import assert_tempered_groups_share_generation_0, run_experiment

Z999 = 3.2905  # two-sided 99.9% normal quantile

# The small preset's network and training; every fit below runs this one compiled program,
# on ROWS rows (padded with weight-0 rows where a regime gives fewer).
RING = flow.FlowConfig(**{**flow.SMALL, 'samples': 1280, 'eval_samples': 1280})
TRAIN = RING.train
FIT = jax.jit(functools.partial(flow.fit, TRAIN))
LOG_DENSITY = jax.jit(functools.partial(flow.log_density, TRAIN))  # on CANDIDATES rows
STD, ROWS, CANDIDATES = 0.5, RING.samples, 1024


def _gaussian_rows(seed):
  return STD * jax.random.normal(jax.random.key(seed), (ROWS, flow.DIMS))


@pytest.fixture(scope='session')
def gaussian_fit():
  return FIT(_gaussian_rows(0), jnp.ones(ROWS), jax.random.key(1))


@jax.jit
def _loss(params, key):
  """cfm_loss on 2^17 fresh rows of N(0, STD^2 I)."""
  x_key, u_key = jax.random.split(key)
  n = 1 << 17
  x1 = STD * jax.random.normal(x_key, (n, flow.DIMS))
  return flow.cfm_loss(TRAIN.model, params, x1, jax.random.uniform(u_key, (n, 3)))


def test_training_reaches_the_closed_form_loss_and_beats_any_x_blind_field(gaussian_fit):
  """On N(0, s^2 I) no field scores below dims s pi / 2; a field that ignores x scores at
  least dims (1 + s^2). Training falls from above both to just above the first."""
  params, metrics = gaussian_fit
  best, blind = flow.gaussian_min_loss(STD), flow.DIMS * (1 + STD**2)
  start = float(_loss(flow.init(TRAIN, jax.random.key(1)), jax.random.key(2)))
  end = float(_loss(params, jax.random.key(2)))
  assert start > blind - 0.1 and end < blind - 0.5, (start, end)  # an untrained net is x-blind
  inside = lambda v: best - 0.02 < v < best + 0.05  # noqa: E731 (0.02: 4 standard errors of
  # the estimate, measured 0.005 on 2^17 rows; 0.05: what 3,000 steps may leave above the best)
  assert inside(end), (end, best)
  assert not inside(blind) and not inside(flow.gaussian_min_loss(STD**2))  # s^2 for s: rejected
  assert abs(float(metrics['train_loss']) - end) < 0.1  # the batches' own loss agrees


def test_log_density_is_the_gaussians_and_needs_its_divergence(gaussian_fit):
  """The flow trained on N(0, s^2 I) has its density. Its field is linear, x0 = x / s, so a
  change of variables without the divergence integral, log N(x0; 0, I), is off by
  dims log(1/s) nats: rejected."""
  params, _ = gaussian_fit
  x_NxD = STD * jax.random.normal(jax.random.key(3), (CANDIDATES, flow.DIMS))
  exact_N = -0.5 * jnp.sum(x_NxD**2, -1) / STD**2 - flow.DIMS * (
      0.5 * math.log(2 * math.pi) + math.log(STD))
  error_N = LOG_DENSITY(params, x_NxD) - exact_N
  assert float(jnp.mean(jnp.abs(error_N))) < 0.1
  assert float(jnp.mean(jnp.abs(error_N + flow.DIMS * math.log(STD)))) > 1.0


def test_rows_are_drawn_in_proportion_to_their_weights():
  w_R = jnp.array([0.0, 1.0, 3.0, 0.0, 4.0])
  i_B = sampling.invert_cdf(jnp.cumsum(w_R), jax.random.uniform(jax.random.key(7), (200_000,)))
  count_R = np.bincount(np.asarray(i_B), minlength=5)
  p_R = np.asarray(w_R) / 8.0
  half_R = Z999 * np.sqrt(200_000 * p_R * (1 - p_R))
  assert np.all(np.abs(count_R - 200_000 * p_R) <= half_R), count_R
  assert count_R[0] == count_R[3] == 0


# ---------------------------------------------------------------- targets and metrics

@pytest.mark.parametrize('name', list(flow.TARGETS))
def test_each_target_draws_what_its_density_integrates(name):
  """exp(log_density) integrates to 1 on a grid; every region holds 1/8 of the draws
  (99.9% binomial interval), and the ring's draws leave 3 sd of their centre with
  probability e^-4.5, a 2-D Gaussian's, not the 1-D 0.0027."""
  tgt = flow.TARGETS[name](0.1)
  # The midpoint rule's error on a density smoothed at 0.1 is about e^-40 at h = 1/14, whose
  # cells tile the checkerboard's squares exactly.
  h, n = 1 / 14, 40_000
  g = jnp.arange(-3.5, 3.5 - h / 2, h) + h / 2
  grid_NxD = jnp.stack(jnp.meshgrid(g, g), -1).reshape(-1, 686, 2)
  log_p_N, grid_region_N, region_N = (np.asarray(v).reshape(-1) for v in jax.jit(lambda x, k: (
      jax.lax.map(tgt.log_density, x), jax.lax.map(tgt.region, x),
      tgt.region(tgt.draw(k, n))))(grid_NxD, jax.random.key(8)))
  if name == 'checkerboard':  # uniform on the black squares; the stand-in off them is no density
    support_N = grid_region_N < flow.REGIONS
    np.testing.assert_allclose(log_p_N[support_N], -math.log(8), rtol=1e-6)
    assert np.max(log_p_N[~support_N]) < -math.log(8) - 3
    log_p_N = np.where(support_N, log_p_N, -np.inf)
  np.testing.assert_allclose(np.sum(np.exp(log_p_N)) * h * h, 1.0, atol=1e-3)
  count_K = np.bincount(region_N, minlength=flow.REGIONS + 1)
  off = {'ring': math.exp(-4.5), 'moons': None, 'checkerboard': 0.0}[name]
  inside = n - count_K[-1]
  p = 1 / flow.REGIONS
  assert np.all(np.abs(count_K[:-1] - inside * p) <= Z999 * np.sqrt(inside * p * (1 - p)))
  if off is not None:
    assert abs(count_K[-1] - n * off) <= Z999 * math.sqrt(n * off * (1 - off)) + 1e-9
  if name == 'ring':
    assert abs(count_K[-1] - n * 0.0027) > Z999 * math.sqrt(n * 0.0027)


# ---------------------------------------------------------------- sampling bias and verifiers

TINY = flow.TrainConfig(hidden=8, layers=1, time_features=2, steps=4, batch=16, ode_steps=2,
                        solver='euler')


def test_a_temperature_scales_the_initial_noise_and_one_changes_nothing():
  """With a zero velocity field a sample is its initial noise: tempered at t, the draws'
  variance lies in the 99.9% chi-square interval of t^2 (t and 1 outside). A trained field
  at t = 1 draws the untempered samples bit for bit, and a warm-start refit strips the
  temperature from the weights it continues."""
  zero = jax.tree.map(jnp.zeros_like, flow.init(TINY, jax.random.key(0)))
  draw = jax.jit(functools.partial(flow.sample, TINY), static_argnums=2)
  t, n = 1.25, 100_000
  x = np.asarray(draw(flow.tempered(zero, {'temperature': jnp.float32(t)}), jax.random.key(1),
                      n), np.float64)
  lo, hi = (stats_chi2(q, 2 * n) for q in (0.0005, 0.9995))
  assert lo <= np.mean(x**2) / t**2 <= hi, np.mean(x**2)
  assert not lo <= np.mean(x**2) / t <= hi and not lo <= np.mean(x**2) <= hi
  params, _ = jax.jit(functools.partial(flow.fit, TINY))(
      jax.random.normal(jax.random.key(2), (64, 2)), jnp.ones(64), jax.random.key(3))
  same = flow.tempered(params, {'temperature': jnp.float32(1.0)})
  np.testing.assert_array_equal(draw(same, jax.random.key(4), 100),
                                draw(params, jax.random.key(4), 100))
  hot = flow.tempered(params, {'temperature': jnp.float32(t)})
  warm, _ = jax.jit(lambda p, k: flow.refit_warm(TINY, p, k, 64))(hot, jax.random.key(5))
  assert jax.tree.structure(warm) == jax.tree.structure(params)


def stats_chi2(q, dof):
  """The q quantile of chi-square(dof) / dof."""
  from scipy import stats  # noqa: PLC0415
  return stats.chi2.ppf(q, dof) / dof


@pytest.mark.parametrize('name', list(flow.TARGETS))
def test_the_verifier_is_the_target_moved_and_widened_about_the_origin(name):
  """verifier(x, shift, scale) is the target's density under y = scale x + shift (every
  target is centred at the origin): log p((x - shift) / scale) - d log scale; the ring's
  Gaussians widened without their noise are rejected; shift 0 and scale 1 give the truth's
  scores. The rows: draws of the target the verifier is, jittered by N(0, 0.1^2 I) (off the
  board, for the checkerboard's stand-in)."""
  tgt = flow.TARGETS[name](0.1)
  fam = flow.family(flow.FlowConfig(target=name))
  draw_key, jitter_key = jax.random.split(jax.random.key(7))
  x0 = np.asarray(tgt.draw(draw_key, 400) + 0.1 * jax.random.normal(jitter_key, (400, 2)),
                  np.float32)
  x = 1.5 * x0 + np.float32(0.4)
  verifier = jax.jit(lambda x, shift, scale: scores_values(fam.verifier(x, shift, scale)))
  got = np.asarray(verifier(jnp.asarray(x), 0.4, 1.5), np.float64)
  back = jnp.asarray((np.asarray(x, np.float64) - 0.4) / 1.5, jnp.float32)
  want = np.asarray(tgt.log_density(back), np.float64) - 2 * math.log(1.5)
  near = want > -60  # where float32's densities are exact enough to compare
  np.testing.assert_allclose(got[near], want[near], rtol=1e-4, atol=1e-3)
  if name == 'ring':
    unscaled = scores_values(scores.isotropic_mixture(
        jnp.asarray(x), 1.5 * jnp.asarray(tgt.centres_KxD) + 0.4,
        jnp.full(8, -math.log(8)), 0.1))
    assert np.max(np.abs(got - np.asarray(unscaled))[near]) > 1.0
  np.testing.assert_allclose(verifier(jnp.asarray(x0), 0.0, 1.0),
                             scores_values(fam.true_log_density(jnp.asarray(x0))),
                             rtol=1e-5, atol=1e-4)


def scores_values(s):
  """A score function's values, plain or scores.Relative."""
  return scores.relative(s).values_N


# ---------------------------------------------------------------- generations

GEN0_MMD2 = 0.01  # measured for RING over 20 seeds: mean 0.0017, max 0.0041; an untrained flow
                  # 0.093 (min 0.090); a second sample of the truth 0 +- 0.0004 (sd)


@pytest.fixture(scope='session')
def ring_fit():
  """(family, data, key, params, measure): generation 0 on the ring, and what measures a fit
  against the truth (its samples' metrics)."""
  fam = flow.family(RING)
  x_RxD, key = fam.draw_real(jax.random.key(20), ROWS), jax.random.key(21)
  params, _ = FIT(x_RxD, jnp.ones(ROWS), key)
  ref = fam.reference(params, jax.random.key(22))
  measure = jax.jit(lambda p, key: fam.evaluate(p, fam.sample(p, key, ROWS), ref))
  return fam, x_RxD, key, params, measure


def test_generation_0_matches_the_target(ring_fit):
  fam, _, _, params, measure = ring_fit
  trained = measure(params, jax.random.key(23))
  untrained = measure(flow.init(TRAIN, jax.random.key(21)), jax.random.key(23))
  assert float(trained['mmd2']) < GEN0_MMD2 < float(untrained['mmd2'])
  assert int(trained['modes_covered']) == 8 and float(trained['precision']) > 0.8, trained


def test_metrics_see_lost_modes_and_agree_with_the_truth(ring_fit):
  """A second sample of the truth: MMD^2 near 0, all 8 regions, precision and recall
  high. Samples from 4 of the ring's 8 Gaussians: 4 regions, recall near 1/2, precision
  still high (quality without diversity), MMD^2 far above the truth's."""
  fam, ref = ring_fit[0], flow.reference(RING.truth(), RING.eval, jax.random.key(9))

  @jax.jit
  def both(key):
    same_key, half_key = jax.random.split(key)
    x_NxD = fam.draw_real(half_key, 3 * ROWS)
    region_N = RING.truth().region(x_NxD)
    even_N = (region_N % 2 == 0) & (region_N < flow.REGIONS)
    half_NxD = x_NxD[jnp.argsort(~even_N, stable=True)][:ROWS]  # the even regions' rows
    return (fam.evaluate(None, fam.draw_real(same_key, ROWS), ref),
            fam.evaluate(None, half_NxD, ref))
  same, half = both(jax.random.key(10))
  assert int(same['modes_covered']) == 8 and int(half['modes_covered']) == 4
  assert abs(float(same['mmd2'])) < 0.005 < 0.05 < float(half['mmd2']), (same, half)
  assert float(same['precision']) > 0.9 and float(same['recall']) > 0.9
  assert float(half['precision']) > 0.9 and 0.4 < float(half['recall']) < 0.55
  np.testing.assert_allclose([float(half[f'mass_{k}']) for k in range(0, 8, 2)], 0.25, atol=0.03)


def _regime_rows(fam, params0, key):
  """{regime: (rows, weights)} of generation 1 after params0 under every regime, padded to
  ROWS rows with weight 0: verify ranks the model's candidates by its own density, curate
  by the reward."""
  n = ROWS - CANDIDATES
  keys = jax.random.split(key, 3)
  x0_NxD = fam.draw_real(keys[0], n)
  last_CxD = jax.jit(fam.sample, static_argnums=2)(params0, keys[1], CANDIDATES)
  pool_PxD = jnp.zeros((ROWS, flow.DIMS)).at[:n].set(x0_NxD).at[n:2 * n].set(last_CxD[:n])
  pools = regimes.Pools(x0_NxD, last_CxD, pool_PxD, fam.draw_real)
  scores = {'verify': LOG_DENSITY(params0, last_CxD), 'curate': fam.reward(last_CxD).gap_N}

  @jax.jit
  def policies(key):
    out = {}
    for name, reg in regimes.REGIMES.items():
      value = 0.5 if reg.parameter == 'real_fraction' else reg.default
      x_RxD, w_R, _ = regimes.apply(reg, pools, 1, key, jnp.float32(value), scores.get(name))
      pad = ROWS - x_RxD.shape[0]
      out[name] = jnp.pad(x_RxD, ((0, pad), (0, 0))), jnp.pad(w_R, (0, pad))
    return out
  return policies(keys[2])


@pytest.mark.e2e
def test_every_regime_gives_the_flow_rows_and_vmapped_runs_equal_a_loop(ring_fit):
  """Every regime builds generation 1 from the flow's samples, densities and reward; curate's
  rows lie nearer the reward's target than replace's. augment's rows (weight 0 on the
  candidates it leaves out) and generation 0's, fitted in one vmapped call, equal their
  fits one at a time, augment's with its weight-0 rows replaced by 1e3 in the vmapped run;
  and augment's fit stays as close to the truth as generation 0's."""
  fam, x0_RxD, key0, params0, measure = ring_fit
  rows = _regime_rows(fam, params0, jax.random.key(30))
  assert set(rows) == set(regimes.REGIMES)
  for name, (x_RxD, w_R) in rows.items():
    assert x_RxD.shape == (ROWS, flow.DIMS) and bool(jnp.all(jnp.isfinite(x_RxD))), name
    assert 0 < float(jnp.sum(w_R)) <= ROWS and bool(jnp.all(w_R >= 0)), name
  mean_reward = {name: float(jnp.sum(w_R * fam.reward(x_RxD).values_N) / jnp.sum(w_R))
                 for name, (x_RxD, w_R) in rows.items()}
  assert mean_reward['curate'] > mean_reward['replace'] + 1, mean_reward
  x_RxD, w_R = rows['augment']
  key = jax.random.key(31)
  padded_RxD = jnp.where(w_R[:, None] > 0, x_RxD, 1e3)
  batch, _ = jax.jit(jax.vmap(functools.partial(flow.fit, TRAIN)))(
      jnp.stack([x0_RxD, padded_RxD]), jnp.stack([jnp.ones(ROWS), w_R]), jnp.stack([key0, key]))
  one, _ = FIT(x_RxD, w_R, key)
  for b, loop in enumerate((params0, one)):
    for u, v in zip(jax.tree.leaves(loop), jax.tree.leaves(jax.tree.map(lambda v: v[b], batch))):
      np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)
  assert float(measure(one, jax.random.key(32))['mmd2']) < GEN0_MMD2


# ---------------------------------------------------------------- the command line's loop

# The smallest flow: what is tested here is the loop, not the fit.
MINI = dict(seeds=2, generations=2, samples=64, eval_samples=64, hidden=8, layers=1,
            time_features=2, steps=20, batch=32, ode_steps=2, solver='euler', checkpoint_every=1)


@pytest.fixture(scope='session')
def command_lines(tmp_path_factory):
  """python -m experiments.flow, in this process: MINI to the end, and a bad flag. Returns a
  function of 'run' or 'bad' giving that command's (return code, stderr, its workdir)."""
  root = tmp_path_factory.mktemp('command_lines')
  flags = {'run': [f'--{k}={v}' for k, v in MINI.items()], 'bad': ['--eval_samples=9999']}
  done = {}
  for name, args in flags.items():
    os.makedirs(root / name)
    proc = run_experiment('flow', *args, f'--workdir={root / name}')
    done[name] = proc.returncode, proc.stderr, str(root / name)
  return done.__getitem__


@pytest.mark.e2e
def test_the_command_line_runs_the_loop_which_resumes_exactly(tmp_path, command_lines):
  returncode, err, workdir = command_lines('run')
  assert returncode == 0, err
  shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
  first = (tmp_path / 'metrics.csv').read_text()
  table = pd.read_csv(tmp_path / 'metrics.csv')
  assert len(table) == 2 * 3 and np.isfinite(table.select_dtypes('number').to_numpy()).all()
  np.testing.assert_allclose(table.filter(like='mass_').sum(axis=1) + table.off_mode, 1.0,
                             atol=1e-5)
  for name in ('quality.png', 'samples.png', 'summary.txt'):
    assert (tmp_path / name).stat().st_size > 0
  loaded = results.load(str(tmp_path))
  assert (loaded['experiment'] == 'flow').all() and (loaded['target'] == 'ring').all()
  # killed after generation 1: the last checkpoint gone, the run resumes from generation 1
  shutil.rmtree(tmp_path / 'checkpoints' / 'replace' / '2')
  flow.run(flow.FlowConfig(**MINI), str(tmp_path), progress=False, log=lambda _: None)
  assert (tmp_path / 'metrics.csv').read_text() == first


@pytest.mark.heavy  # a whole run of every group: the tempered law's unit tests stay fast
def test_a_temperature_sweep_runs_as_three_groups(tmp_path):
  """MINI at temperatures (0.8, 1, 1.25) through run(): a temperature column and three groups
  of runs, the same generation 0 in each (the fit precedes any sampling) and different
  generations after."""
  table = flow.run(flow.FlowConfig(**{**MINI, 'generations': 1},
                                   temperatures=(0.8, 1.0, 1.25)),
                   str(tmp_path), progress=False, log=lambda _: None)
  assert_tempered_groups_share_generation_0(table, 'train_loss', 'train_loss')


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize('change, flag', [
    (dict(target='spiral'), 'target'), (dict(solver='rk4'), 'solver'),
    (dict(noise=0.0), 'noise'), (dict(target='moons', noise=0.03), 'noise'),
    (dict(eval_samples=5000), 'eval_samples'),
    (dict(time_features=7), 'time_features'), (dict(steps=0), 'steps'),
    (dict(warm_start=True, regimes=('replace', 'fresh'), real_fractions=(0.5,)), 'warm_start'),
    (dict(reward_target=(1.0,)), 'reward_target'), (dict(cover_fraction=0.0), 'cover_fraction'),
    (dict(regimes=('fresh',), real_fractions=(1.5,)), 'real_fraction'),
    (dict(regimes=('verify',), score='gen1'), 'score')])
def test_bad_configs_name_their_flag(change, flag):
  with pytest.raises(validation.ConfigError, match=f'--{flag}') as e:
    flow.FlowConfig(**change).validate()
  assert '\n' not in str(e.value)


@pytest.mark.e2e
def test_the_command_line_reports_bad_input_in_one_line(command_lines):
  returncode, err, workdir = command_lines('bad')
  assert returncode == 2
  assert err.strip().splitlines() == [
      'error: --eval_samples: must be more than --knn (3) and at most --samples (2000), got 9999']
  assert not os.listdir(workdir)  # refused before anything was written
