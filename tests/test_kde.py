"""The KDE refitted on its own samples: its spread against the closed forms, its pieces
against scikit-learn, scipy and numerical integrals, every regime, resume, vmap."""

import filecmp
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from sklearn.neighbors import KernelDensity

from collapse_jax.core import driver, regimes, results, sampling, validation
from collapse_jax.families import kde
from conftest import run_experiment

Z999 = 3.2905  # two-sided 99.9% normal quantile
QUIET = dict(progress=False, log=lambda *_: None)
fit = jax.jit(kde.fit, static_argnums=(2, 3, 4))
log_density = jax.jit(kde.log_density)


def _in_ci(values_S, expected):
  """Whether the mean of values_S lies in the 99.9% interval around `expected`."""
  values_S = np.asarray(values_S, np.float64)
  return abs(values_S.mean() - expected) <= Z999 * values_S.std(ddof=1) / math.sqrt(len(values_S))


def _chain_spreads(rule, samples=16, bandwidth=0.5, seeds=3000, generations=20, knobs=None):
  """Spreads of `seeds` replace runs (generations x seeds), the family's chain vmapped (each
  fit sampled under the sampling knobs `knobs`), and the closed form's variants."""
  cfg = kde.KDEConfig(samples=samples, bandwidth_rule=rule, bandwidth=bandwidth)
  chains = jax.jit(jax.vmap(lambda s: kde.replace_chain(kde.family(cfg), s, samples,
                                                        generations, knobs)[1]))
  spread_GxS = np.asarray(chains(jnp.arange(seeds))).T
  var0 = kde.target_variance(cfg.truth, cfg.target_noise)
  law = lambda **kw: kde.spread_theory(  # noqa: E731
      var0, 2, samples, rule, kw.pop('bandwidth', bandwidth), generations, **kw)
  return spread_GxS, law


def test_fixed_bandwidth_spread_follows_its_finite_sample_law():
  """E S_g = r^n V_0 + d h^2 N (1 - r^n), n = g + 1, r = (N-1)/N: inside 99.9% over 3,000
  seeds; the same interval rejects V_0 + n d h^2 (no finite-sample factor) and n = g."""
  spread_GxS, law = _chain_spreads('fixed')
  exact, naive, early = law(), law(finite=False), law(shift=0)
  for g in (0, 1, 5, 20):
    assert _in_ci(spread_GxS[g], exact[g]), (g, spread_GxS[g].mean(), exact[g])
  for g in (0, 20):
    assert not _in_ci(spread_GxS[g], naive[g]), g
  for g in (1, 5):
    assert not _in_ci(spread_GxS[g], early[g]), g
  # per dimension V_0/d + n h^2 while n << N; the fixed point N d h^2 as n grows
  far = kde.spread_theory(1.0, 2, 16, 'fixed', 0.5, 2000)
  np.testing.assert_allclose(far[-1], 16 * 2 * 0.25, rtol=1e-6)
  near = kde.spread_theory(1.0, 2, 10**6, 'fixed', 0.5, 10)
  np.testing.assert_allclose(near, 1.0 + 2 * 0.25 * np.arange(1, 12), rtol=1e-4)


def test_rule_bandwidth_spread_grows_geometrically():
  """Scott's rule: E S_g = (r + f^2)^n V_0, f = N^(-1/6); rejects (1 + f^2)^n and n = g."""
  spread_GxS, law = _chain_spreads('scott', generations=3)
  exact, naive, early = law(), law(finite=False), law(shift=0)
  for g in range(4):
    assert _in_ci(spread_GxS[g], exact[g]), (g, spread_GxS[g].mean(), exact[g])
  for g in (0, 3):
    assert not _in_ci(spread_GxS[g], naive[g]), g
    assert not _in_ci(spread_GxS[g], early[g]), g


@pytest.mark.parametrize('t', [0.8, 1.25])
def test_a_tempered_fixed_bandwidth_spread_follows_its_law(t):
  """Sampled at temperature t, each draw's kernel noise is t^2 h^2 a dimension while every
  fit keeps h: E S_g = r^n V_0 + d h^2 + t^2 d h^2 (r + ... + r^(n-1)). Inside 99.9% over
  3,000 seeds; the untempered law, and the law of a KDE whose own bandwidth were t h, are
  rejected."""
  spread_GxS, law = _chain_spreads('fixed', knobs={'temperature': jnp.float32(t)})
  exact, cold, wide = law(temperature=t), law(), law(bandwidth=0.5 * t)
  for g in (0, 1, 5, 20):
    assert _in_ci(spread_GxS[g], exact[g]), (g, spread_GxS[g].mean(), exact[g])
  for g in (5, 20):
    assert not _in_ci(spread_GxS[g], cold[g]), g
  for g in (0, 1):  # the two differ by d h^2 (t^2 - 1) at every g: clearest where S is tight
    assert not _in_ci(spread_GxS[g], wide[g]), g


def test_a_tempered_rule_bandwidth_spread_grows_by_r_plus_t2_f2():
  """Scott's rule at temperature t: E S_g = (r + f^2) V_0 (r + t^2 f^2)^(n-1); the
  untempered (r + f^2)^n V_0 is rejected."""
  t = 1.5
  spread_GxS, law = _chain_spreads('scott', generations=3, knobs={'temperature': jnp.float32(t)})
  exact, cold = law(temperature=t), law()
  for g in range(4):
    assert _in_ci(spread_GxS[g], exact[g]), (g, spread_GxS[g].mean(), exact[g])
  assert not _in_ci(spread_GxS[3], cold[3])


def test_the_closed_forms_at_temperature_1_are_the_untempered_ones_exactly():
  for rule in kde.RULES:
    for shift in (0, 1):
      np.testing.assert_array_equal(
          kde.spread_theory(1.3, 2, 50, rule, 0.2, 30, shift=shift, temperature=1.0),
          kde.spread_theory(1.3, 2, 50, rule, 0.2, 30, shift=shift))


# ---------------------------------------------------------------- the pieces

def _data(seed, n, d=2):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, d)).astype(np.float32)


def test_rule_bandwidths_match_their_closed_forms_scipy_and_scikit_learn():
  """h = f(n_eff) sqrt(tr C / d): the factor is scikit-learn's bandwidth and scipy's
  factor; C numpy's weighted covariance; Scott and Silverman agree in 2-D only."""
  for d in (2, 3):
    x = _data(0, 200, d)
    w = np.random.default_rng(1).uniform(0.2, 1.0, 200).astype(np.float32)
    c = np.cov(x.T.astype(np.float64), aweights=w)
    n_eff = w.sum() ** 2 / (w**2).sum()
    for rule, formula in (('scott', n_eff ** (-1 / (d + 4))),
                          ('silverman', (n_eff * (d + 2) / 4) ** (-1 / (d + 4)))):
      h = float(kde.rule_bandwidth(jnp.asarray(x), jnp.asarray(w), rule))
      np.testing.assert_allclose(h, formula * math.sqrt(np.trace(c) / d), rtol=1e-5)
      scipy_kde = stats.gaussian_kde(x.T, bw_method=rule, weights=w)
      np.testing.assert_allclose(h / math.sqrt(np.trace(c) / d), scipy_kde.factor, rtol=1e-5)
      unweighted = KernelDensity(bandwidth=rule).fit(x).bandwidth_
      np.testing.assert_allclose(kde.rule_factor(200.0, d, rule), unweighted, rtol=1e-6)
    scott, silverman = (kde.rule_factor(200.0, d, rule) for rule in ('scott', 'silverman'))
    assert (scott == pytest.approx(silverman)) == (d == 2)


def test_log_density_is_scikit_learns_and_padding_never_counts():
  x, y = _data(2, 120), _data(3, 50)
  w = np.random.default_rng(4).uniform(0.1, 1.0, 120).astype(np.float32)
  junk = np.full((30, 2), 1e4, np.float32)  # padding rows: weight 0, any content
  x_pad, w_pad = np.concatenate([x[:60], junk, x[60:]]), np.r_[w[:60], np.zeros(30), w[60:]]
  for rule in kde.RULES:
    plain, _ = fit(jnp.asarray(x), jnp.asarray(w), rule, 0.3, 150)
    padded, metrics = fit(jnp.asarray(x_pad), jnp.asarray(w_pad, jnp.float32), rule, 0.3, 160)
    h = float(plain['bandwidth'])
    assert float(padded['bandwidth']) == pytest.approx(h, rel=1e-6)
    assert float(metrics['effective_n']) == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-5)
    reference = KernelDensity(bandwidth=h).fit(x, sample_weight=w)
    far = y + np.float32(40.0)  # every kernel underflows float32: the shifted sum's branch
    for params in (plain, padded):
      for points in (y, far):
        np.testing.assert_allclose(log_density(params, jnp.asarray(points)),
                                   reference.score_samples(points), rtol=1e-5, atol=1e-4)
    cov = np.cov(x.T.astype(np.float64), aweights=w, bias=True)
    np.testing.assert_allclose(kde.spread(padded), np.trace(cov) + 2 * h**2, rtol=1e-5)


def test_samples_pick_live_points_by_weight():
  """Draws land only on rows of positive weight, each as often as its weight says."""
  points = np.arange(8, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
  w = np.array([0.0, 0.1, 0.0, 0.4, 0.2, 0.0, 0.3, 0.0], np.float32)
  params = {'points': jnp.asarray(points), 'weights': jnp.asarray(w),
            'bandwidth': jnp.float32(1e-4)}
  x = np.asarray(jax.jit(kde.sample, static_argnums=2)(params, jax.random.key(0), 100_000))
  picked = np.round(x[:, 0]).astype(int)
  assert set(picked) == {1, 3, 4, 6}
  share = np.bincount(picked, minlength=8) / len(picked)
  np.testing.assert_array_less(np.abs(share - w), Z999 * np.sqrt(w * (1 - w) / len(picked)) + 1e-9)
  assert np.std(x[:, 0] - picked) == pytest.approx(1e-4, rel=0.02)  # the kernel's noise


def test_a_temperature_widens_the_kernel_and_one_changes_nothing():
  """Tempered at t, the draws' kernel noise has standard deviation t h (its variance inside
  the 99.9% chi-square interval over 100,000 draws; h and t^2 h are outside); the points
  and weights are the fit's; at t = 1 the draws are the untempered ones, bit for bit."""
  points = np.arange(8, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
  params = {'points': jnp.asarray(points), 'weights': jnp.full(8, 0.125),
            'bandwidth': jnp.float32(0.01)}
  draw = jax.jit(kde.sample, static_argnums=2)
  t, n = 1.25, 100_000
  hot = kde.tempered(params, {'temperature': jnp.float32(t)})
  assert hot['points'] is params['points'] and hot['weights'] is params['weights']
  x = np.asarray(draw(hot, jax.random.key(0), n), np.float64)
  noise = x - np.round(x[:, :1])
  lo, hi = (stats.chi2.ppf(q, 2 * n) / (2 * n) for q in (0.0005, 0.9995))
  ratio = lambda h: np.mean(noise**2) / h**2  # noqa: E731
  assert lo <= ratio(t * 0.01) <= hi, ratio(t * 0.01)
  assert not lo <= ratio(0.01) <= hi and not lo <= ratio(t * t * 0.01) <= hi
  same = kde.tempered(params, {'temperature': jnp.float32(1.0)})
  np.testing.assert_array_equal(draw(same, jax.random.key(1), 100),
                                draw(params, jax.random.key(1), 100))


@pytest.mark.parametrize('name', ['blobs', 'circles'])
def test_the_verifier_is_the_target_moved_and_widened_about_its_mean(name):
  """verifier(x, shift, scale) is the target's density under y = c + scale (x - c) + shift
  (c the target's mean): log p(c + (x - c - shift) / scale) - d log scale. Blobs widened
  about the origin instead are rejected; shift 0 and scale 1 give the truth's scores. The
  targets without a density have no verifier."""
  target = kde.TARGETS[name]
  fam = kde.family(kde.KDEConfig(target=name))
  noise = target.noise
  c = np.asarray(target.mean, np.float64)
  x = np.random.default_rng(6).uniform(-1.5, 2.0, (300, 2)).astype(np.float32)
  x64 = np.asarray(x, np.float64)
  got = np.asarray(jax.jit(fam.verifier)(jnp.asarray(x), 0.3, 1.4).values_N, np.float64)
  back = jnp.asarray(c + (x64 - c - 0.3) / 1.4, jnp.float32)
  want = np.asarray(target.log_density(back, noise), np.float64) - 2 * math.log(1.4)
  near = want > -60  # where float32's densities are exact enough to compare
  np.testing.assert_allclose(got[near], want[near], rtol=1e-4, atol=1e-3)
  if name == 'blobs':
    about_origin = np.asarray(target.log_density(jnp.asarray((x64 - 0.3) / 1.4, jnp.float32),
                                                 noise)) - 2 * math.log(1.4)
    assert np.max(np.abs(got - about_origin)[near]) > 1.0
  np.testing.assert_allclose(fam.verifier(jnp.asarray(x), 0.0, 1.0).values_N,
                             fam.true_log_density(jnp.asarray(x)).values_N, rtol=1e-5, atol=1e-4)
  assert kde.family(kde.KDEConfig(target='moons')).verifier is None


@pytest.mark.parametrize('name', list(kde.TARGETS))
def test_target_mean_and_variance_are_the_closed_forms(name):
  target, noise = kde.TARGETS[name], kde.TARGETS[name].noise
  draw = jax.jit(lambda key: kde.draw_target(target, key, 200_000, noise))
  x = np.asarray(draw(jax.random.key(7)), np.float64)
  for i in range(2):
    assert _in_ci(x[:, i], target.mean[i]), (i, x[:, i].mean(), target.mean[i])
  assert _in_ci(np.sum((x - target.mean) ** 2, 1), kde.target_variance(target, noise))


def test_exact_target_densities_match_numerical_integrals():
  """Blobs: scipy's normal mixture; circles: the angular integral by the trapezoid rule
  (exact to rounding for a periodic integrand)."""
  y = np.random.default_rng(5).uniform(-1.6, 1.6, (200, 2))
  s = 0.25
  blobs = np.log(np.mean([stats.multivariate_normal(c, s**2 * np.eye(2)).pdf(y)
                          for c in kde.BLOB_CENTRES], axis=0))
  np.testing.assert_allclose(kde.blobs_log_density(jnp.asarray(y, jnp.float32), s), blobs,
                             rtol=1e-5)
  s = 0.05
  theta = np.linspace(0, 2 * np.pi, 4096, endpoint=False)
  quad = 0.0
  for a in kde.CIRCLE_RADII:
    c = a * np.stack([np.cos(theta), np.sin(theta)], 1)
    sq = np.sum((y[:, None] - c[None]) ** 2, -1)
    quad = quad + 0.5 * np.mean(np.exp(-sq / (2 * s**2)), 1) / (2 * np.pi * s**2)
  near = quad > 1e-30  # where float64 holds the integral
  got = kde.circles_log_density(jnp.asarray(y, jnp.float32), s)
  np.testing.assert_allclose(np.asarray(got)[near], np.log(quad[near]), rtol=2e-4, atol=2e-3)


def test_mmd_is_unbiased_and_near_zero_for_the_truth():
  """Two samples of the truth: mean 0 over seeds; the same shifted by 0.3: clearly above."""
  target = kde.TARGETS['moons']

  @jax.jit
  def mmd_S(shift):
    draw = jax.vmap(lambda k: kde.draw_target(target, k, 64, 0.1))
    y_SxNxD = draw(jax.random.split(jax.random.key(0), 400)) + shift
    t_SxNxD = draw(jax.random.split(jax.random.key(1), 400))
    t_self = lambda t: sampling.kernel_mean_off_diagonal(sampling.squared_distances(t, t), 0.5)  # noqa: E731
    return jax.vmap(lambda y, t: sampling.mmd2(y, t, 0.5, t_self(t)))(y_SxNxD, t_SxNxD)
  assert _in_ci(mmd_S(0.0), 0.0)
  shifted_S = mmd_S(0.3)
  assert float(jnp.mean(shifted_S)) > 0 and not _in_ci(shifted_S, 0.0)


# ---------------------------------------------------------------- flags

@pytest.mark.parametrize('change, flag', [
    (dict(target='spiral'), 'target'), (dict(bandwidth_rule='isj'), 'bandwidth_rule'),
    (dict(bandwidth=0.0), 'bandwidth'), (dict(noise=-0.1), 'noise'), (dict(heldout=1), 'heldout'),
    (dict(samples=1), 'samples'), (dict(mmd_scale=0.0), 'mmd_scale'),
    (dict(reward_target=(1.0,)), 'reward_target'), (dict(regimes=('replace', 'keep')), 'regime'),
    (dict(real_fractions=(0.5,)), 'real_fraction'),
    (dict(keep_fractions=(0.0,), regimes=('verify',), target='blobs'), 'keep_fraction')])
def test_bad_configs_name_their_flag(change, flag):
  with pytest.raises(validation.ConfigError, match=f'^--{flag}:'):
    kde.KDEConfig(**change).validate()


@pytest.mark.parametrize('target, score', [('moons', None), ('swiss_roll', 'truth'),
                                           ('moons', 'noisy')])
def test_targets_without_an_exact_density_refuse_the_truth_score(target, score):
  with pytest.raises(validation.ConfigError, match='^--score:.*no closed form') as e:
    kde.KDEConfig(target=target, regimes=('verify',), score=score).validate()
  assert '\n' not in str(e.value)
  kde.KDEConfig(target=target, regimes=('verify',), score='self').validate()  # these remain


def test_the_command_line_prints_one_line_and_writes_nothing(tmp_path):
  proc = run_experiment('kde', '--bandwidth=-1', f'--workdir={tmp_path / "run"}')
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == ['error: --bandwidth: must be positive, got -1.0']
  assert not (tmp_path / 'run').exists()


# ---------------------------------------------------------------- the driver

@pytest.mark.heavy  # a whole run of every group: the tempered law's unit tests stay fast
def test_a_temperature_sweep_runs_as_three_groups_with_their_closed_forms(tmp_path):
  """temperatures (0.8, 1, 1.25) through run(): a temperature column in the curves, three
  groups of runs, each with the spread's closed form at its own temperature and each seed's
  spreads those of replace_chain at that temperature (the chain the laws are tested on)."""
  cfg = kde.KDEConfig(seeds=3, generations=3, samples=20, heldout=20, target='blobs',
                      regimes=('replace',), temperatures=(0.8, 1.0, 1.25), checkpoint_every=3)
  curves = kde.run(cfg, str(tmp_path), **QUIET)
  table = results.load(str(tmp_path))
  groups = results.groups(curves)
  assert [dict(g.knobs)['temperature'] for g in groups] == pytest.approx([0.8, 1.0, 1.25])
  var0 = kde.target_variance(cfg.truth, cfg.target_noise)
  for g in groups:
    sub = results.select(curves, 'replace', 0.0, 20, g.knobs)
    t = dict(g.knobs)['temperature']
    np.testing.assert_allclose(sub['spread_theory'][:, 0], kde.spread_theory(
        var0, 2, 20, 'fixed', cfg.bandwidth, 3, temperature=t), rtol=1e-6)
    assert np.all(sub['seeds'] == 3) and np.all(np.isfinite(sub['spread_mean']))
    rows = table[np.isclose(table['temperature'], t)]  # read back as float64: not float32(t)
    chain = jax.jit(lambda seed: kde.replace_chain(kde.family(cfg), seed, 20, 3,
                                                    {'temperature': jnp.float32(t)})[1])
    for seed in range(3):
      mine = rows[rows['seed'] == seed].sort_values('generation')['spread']
      np.testing.assert_allclose(chain(seed), mine, rtol=1e-5)
  assert (tmp_path / 'spread.png').stat().st_size > 0


ALL = kde.KDEConfig(seeds=3, generations=4, samples=12, heldout=10, target='blobs',
                    bandwidth_rule='silverman', regimes=tuple(regimes.REGIMES),
                    real_fractions=(0.0, 0.5), age_decays=(0.5,), checkpoint_every=2)


@pytest.fixture(scope='session')
def every_regime(tmp_path_factory):
  """Blobs (an exact truth for verify and curate) under all eight regimes: its workdir."""
  workdir = tmp_path_factory.mktemp('kde') / 'whole'
  kde.run(ALL, str(workdir), **QUIET)
  return workdir


def _reloaded(workdir, regime):
  """A finished sweep's metrics, read back from its checkpoint (nothing compiles)."""
  sweep = ALL.sweep(regime)
  return driver.run(kde.family(ALL, kde.fit_rows(ALL, sweep)), sweep,
                    str(workdir / 'checkpoints' / regime), ALL.checkpoint_every, progress=False)


@pytest.mark.heavy  # eight regimes, sixteen compiled programs
def test_every_regime_runs(every_regime):
  table = results.load(str(every_regime))
  assert set(table.regime) == set(regimes.REGIMES) and set(table.experiment) == {'kde'}
  runs = sum(2 if r in ('mix', 'fresh') else 1 for r in regimes.REGIMES)
  assert len(table) == runs * 3 * 5
  assert table[['heldout_nll', 'spread', 'mmd2', 'truth_ll', 'train_score']].notna().all().all()
  # the pool grows by N a generation; decay 0.5 weights the block of age a by 0.5^a
  accumulate = table[table.regime == 'accumulate']
  w_G = [0.5 ** np.arange(g + 1) for g in range(5)]
  np.testing.assert_allclose(accumulate.groupby('generation').effective_n.mean(),
                             [12 * w.sum() ** 2 / (w**2).sum() for w in w_G], rtol=1e-5)
  augment = table[(table.regime == 'augment') & (table.generation > 0)]
  assert np.all(augment.effective_n == 12 + 6)  # N original rows and 0.5 N samples
  for name in ('collapse.png', 'spread.png', 'scatter.png', 'tradeoff.png', 'summary.txt',
               'curves.csv'):
    assert (every_regime / name).stat().st_size > 0


@pytest.mark.heavy  # eight regimes, sixteen compiled programs
def test_a_cut_run_resumes_bit_identically(every_regime, tmp_path):
  """accumulate (a growing pool, weighted by age) cut after its first checkpoint and resumed:
  the same table, byte for byte."""
  shutil.copytree(every_regime, tmp_path / 'cut')
  checkpoints = tmp_path / 'cut' / 'checkpoints' / 'accumulate'
  assert sorted(os.listdir(checkpoints)) == ['2', '4']
  shutil.rmtree(checkpoints / '4')
  kde.run(ALL, str(tmp_path / 'cut'), **QUIET)
  assert filecmp.cmp(every_regime / 'metrics.csv', tmp_path / 'cut' / 'metrics.csv', shallow=False)


@pytest.mark.heavy  # eight regimes, sixteen compiled programs
def test_vmapped_seeds_equal_a_per_seed_loop(every_regime, tmp_path):
  """A device's runs vectorised (vmap) against the same runs one at a time (the CPU's default
  for this family: a loop over seeds and real fractions)."""
  sweep = ALL.sweep('mix')
  looped = _reloaded(every_regime, 'mix')
  batched = driver.run(kde.family(ALL, kde.fit_rows(ALL, sweep)), sweep, str(tmp_path / 'vmap'),
                       ALL.checkpoint_every, progress=False, width=6)
  assert {'heldout_nll', 'spread', 'bandwidth', 'mmd2', 'truth_ll', 'effective_n'} <= set(batched)
  for k in batched:
    assert batched[k].shape == (5, 6)
    np.testing.assert_allclose(batched[k], looped[k], rtol=2e-5, atol=1e-6, err_msg=k)


@pytest.mark.heavy  # eight regimes, sixteen compiled programs
def test_the_replace_chain_is_the_drivers_run(every_regime):
  """kde.replace_chain (the laws' and the scatter figure's runs) draws what the driver draws."""
  spread_GxS = _reloaded(every_regime, 'replace')['spread']
  chain = jax.jit(lambda seed: kde.replace_chain(kde.family(ALL), seed, ALL.samples,
                                                  ALL.generations)[1])
  for seed in range(3):
    np.testing.assert_allclose(chain(seed), spread_GxS[:, seed], rtol=1e-5)
