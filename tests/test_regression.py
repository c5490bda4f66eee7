"""Linear regression refitted on its own labels, against its closed forms.

One run of every regime (1,000 seeds, fresh inputs, a power-law spectrum) carries the
fresh-input laws, the files and the resume; the fixed-design ridge laws run as chains of the
family's own functions, vmapped over seeds. Few compilations: XLA compiling dominates here.
"""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from collapse_jax.core import driver, regimes, results, validation
from collapse_jax.families import regression

Z999 = 3.2905  # two-sided 99.9% normal quantile

# d = 20, T = 40: the fresh design's pooled blocks differ from the 1/j^2 law by ~17%, and
# T - d - 7 > 0 keeps the errors' fourth moments finite (a trustworthy sample sd).
MAIN = regression.RegressionConfig(seeds=1000, generations=10, samples=40, dims=20, alpha=1.0,
                                   noise=0.5, regimes=tuple(regimes.REGIMES),
                                   real_fractions=(0.0, 0.5), checkpoint_every=5)


def _in_ci(values_S, expected):
  """Whether the mean of values_S lies in the 99.9% interval around `expected`."""
  values_S = np.asarray(values_S, np.float64)
  return abs(values_S.mean() - expected) <= Z999 * values_S.std(ddof=1) / np.sqrt(len(values_S))


@pytest.fixture(scope='session')
def main_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('regression')
  regression.run(MAIN, str(workdir), progress=False, log=lambda *_: None)
  return workdir, pd.read_csv(workdir / 'metrics.csv')


def _per_seed(table, regime, metric, g, fraction=0.0):
  rows = (table.regime == regime) & (table.real_fraction == fraction) & (table.generation == g)
  return table[rows][metric].to_numpy()


# ---------------------------------------------------------------- the fresh-input laws

@pytest.mark.heavy  # the shared run of every regime
def test_replace_adds_one_term_a_generation_counting_generation_0(main_run):
  """E |w_g - w*|^2_Sigma = (g + 1) sigma^2 d / (T - d - 1) (Dohmatob et al. 2024), for the
  refit drawn as sufficient statistics (replace) and for fits to drawn rows (fresh with no
  real data: the same protocol); without generation 0's own term the law fails."""
  _, table = main_run
  law = regression.fresh_ols_theory('replace', 40, regression.spectrum(20, 1.0), 0.5, 10)
  unit = 0.25 * 20 / 19
  np.testing.assert_allclose(law['test_error'], unit * np.arange(1, 12))
  for regime in ('replace', 'fresh'):
    for g in (0, 1, 10):
      for metric in regression.METRICS:
        assert _in_ci(_per_seed(table, regime, metric, g), law[metric][g]), (regime, metric, g)
    for g in (1, 10):  # the count that forgets generation 0's fit
      assert not _in_ci(_per_seed(table, regime, 'test_error', g), unit * g), (regime, g)


@pytest.mark.heavy  # the shared run of every regime
def test_accumulate_stays_below_pi_squared_over_six_of_one_fit(main_run):
  """Pooled fresh blocks: E |delta_g|^2_Sigma = sigma^2 d sum_{j<=g+1} 1/(j (jT - d - 1)),
  below the 1/j^2 law (exact for one fixed design), itself below pi^2/6 x the one-shot error;
  the measured mean rejects the 1/j^2 law."""
  _, table = main_run
  law = regression.fresh_ols_theory('accumulate', 40, regression.spectrum(20, 1.0), 0.5, 10)
  one_shot = 0.25 * 20 / 19
  j = np.arange(1, 12)
  squares = one_shot * np.cumsum(1 / j**2)
  assert np.all(law['test_error'] <= squares + 1e-12) and squares[-1] < np.pi**2 / 6 * one_shot
  for g in (0, 1, 10):
    for metric in regression.METRICS:
      assert _in_ci(_per_seed(table, 'accumulate', metric, g), law[metric][g]), (metric, g)
  assert _per_seed(table, 'accumulate', 'test_error', 10).mean() < np.pi**2 / 6 * one_shot
  assert not _in_ci(_per_seed(table, 'accumulate', 'test_error', 10), squares[10])


@pytest.mark.heavy  # the shared run of every regime
def test_every_regime_runs_and_reads_back(main_run):
  workdir, _ = main_run
  runs = results.load(str(workdir))
  assert set(runs.regime) == set(regimes.REGIMES) and set(runs.experiment) == {'regression'}
  assert len(runs) == (len(regimes.REGIMES) + 2) * 1000 * 11  # mix and fresh: 2 fractions
  assert runs[['test_error', 'param_error', 'label_var', 'train_score']].notna().all().all()
  verify = runs[runs.regime == 'verify']
  assert np.all(verify.pass_rate[verify.generation > 0] == 0.5)  # generation 0 filters nothing
  curves = pd.read_csv(workdir / 'curves.csv')
  assert curves[curves.regime == 'mix'].test_error_mean_theory.isna().all()
  for name in ('errors.png', 'tradeoff.png', 'summary.txt'):
    assert (workdir / name).stat().st_size > 0


@pytest.mark.heavy  # the shared run of every regime
def test_resume_is_bit_identical(main_run):
  """A kill after accumulate-subsample's generation-5 checkpoint (its carry: every generation's
  samples): the rerun recompiles only that sweep, resumes it, and writes the same bytes."""
  workdir, _ = main_run
  before = (workdir / 'metrics.csv').read_bytes()
  shutil.rmtree(workdir / 'checkpoints' / 'accumulate-subsample' / '10')
  regression.run(MAIN, str(workdir), progress=False, log=lambda *_: None)
  assert (workdir / 'metrics.csv').read_bytes() == before


# ---------------------------------------------------------------- one fixed design, ridge

SAME = regression.RegressionConfig(samples=20, dims=5, alpha=0.5, noise=0.5, ridges=(0.0, 0.5),
                                   inputs='same', design_seed=3)


def _chain(fam, n, generations, pooled, temperature=None):
  """One run of replace (pooled=False) or accumulate from the family's functions, sampled at
  `temperature` where given: the generations' metrics, (G + 1) x L each."""
  law = (lambda params: params) if temperature is None else (
      lambda params: fam.biased(params, {'temperature': jnp.float32(temperature)}))

  def one(key):
    keys, ones = jax.random.split(key, generations + 1), jnp.ones(n)
    stats = fam.summary.of(fam.draw_real(keys[0], n), ones)
    params, fitted = fam.summary.fit(stats, None)
    first = {**fitted, **fam.evaluate(params, None, {})}

    def step(carry, k):
      params, stats = carry
      new = fam.summary.of(fam.sample(law(params), k, n), ones)
      stats = fam.summary.combine(stats, new) if pooled else new
      params, fitted = fam.summary.fit(stats, None)
      return (params, stats), {**fitted, **fam.evaluate(params, None, {})}
    _, rest = jax.lax.scan(step, (params, stats), keys[1:])
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)
  return one


@pytest.fixture(scope='session')
def fixed_design():
  fam, keys = regression.family(SAME.validate()), jax.random.split(jax.random.key(7), 3000)
  return {pooled: jax.jit(jax.vmap(_chain(fam, 20, 8, pooled)))(keys) for pooled in (False, True)}


def test_vmapped_seeds_equal_a_per_seed_loop(fixed_design):
  one = jax.jit(_chain(regression.family(SAME), 20, 8, False))
  keys = jax.random.split(jax.random.key(7), 3000)
  for s in (0, 1, 2999):
    alone = one(keys[s])
    for k, v in alone.items():
      np.testing.assert_allclose(v, fixed_design[False][k][s], rtol=2e-5, atol=1e-7, err_msg=k)


@pytest.mark.parametrize('regime', ['replace', 'accumulate'])
def test_fixed_design_ridge_follows_its_linear_recursion(fixed_design, regime):
  """Given the design, w_g is linear in the noise: its mean and covariance follow exact
  recursions (bias A^(g+1) w* for ridge); OLS reduces to tr((X^T X)^-1 Sigma) sigma^2 times
  g + 1 (replace) or sum_{j<=g+1} 1/j^2 (accumulate). A generation off by one is rejected."""
  metrics = fixed_design[regime == 'accumulate']
  x_TxP = regression.design(20, 5, 0.5, 3).astype(np.float64)
  lam_P = regression.spectrum(5, 0.5).astype(np.float64)
  unit = 0.25 * np.trace(np.linalg.inv(x_TxP.T @ x_TxP) * lam_P)
  j = np.arange(1, 10)
  for l, ridge in enumerate(SAME.ridges):
    law = regression.fixed_design_theory(regime, x_TxP, lam_P, 0.5, ridge, 8)
    if ridge == 0:
      counts = j if regime == 'replace' else np.cumsum(1 / j**2)
      np.testing.assert_allclose(law['test_error'], unit * counts, rtol=1e-9)
    for g in (0, 1, 8):
      for metric in ('test_error', 'param_error'):
        assert _in_ci(metrics[metric][:, g, l], law[metric][g]), (ridge, metric, g)
    assert not _in_ci(metrics['test_error'][:, 1, l], law['test_error'][0]), ridge


@pytest.mark.parametrize('regime', ['replace', 'accumulate'])
def test_fixed_design_temperature_scales_the_added_noise(regime):
  """Sampled at t = 1.5, every generation after the first adds noise of variance t^2 sigma^2:
  the recursions with the t^2 terms hold (ridge's bias included) and the t-free ones fail."""
  fam, keys = regression.family(SAME), jax.random.split(jax.random.key(8), 3000)
  metrics = jax.jit(jax.vmap(_chain(fam, 20, 4, regime == 'accumulate', 1.5)))(keys)
  x_TxP = regression.design(20, 5, 0.5, 3)
  lam_P = regression.spectrum(5, 0.5)
  for l, ridge in enumerate(SAME.ridges):
    law = regression.fixed_design_theory(regime, x_TxP, lam_P, 0.5, ridge, 4, temperature=1.5)
    cold = regression.fixed_design_theory(regime, x_TxP, lam_P, 0.5, ridge, 4)
    for g in (0, 1, 4):
      for metric in ('test_error', 'param_error'):
        assert _in_ci(metrics[metric][:, g, l], law[metric][g]), (ridge, metric, g)
    assert not _in_ci(metrics['test_error'][:, 4, l], cold['test_error'][4]), ridge


# ---------------------------------------------------------------- the knobs

# d = 5, T = 20 (T - d - 7 > 0): replace refits from drawn statistics, fresh with no real
# data fits drawn rows, accumulate pools them; each at temperatures 0.5 and 1.5.
HOT = regression.RegressionConfig(seeds=1000, generations=4, samples=20, dims=5, alpha=1.0,
                                  noise=0.5, regimes=('replace', 'accumulate', 'fresh'),
                                  temperatures=(0.5, 1.5), checkpoint_every=4)


@pytest.fixture(scope='session')
def hot_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('regression_hot')
  regression.run(HOT, str(workdir), progress=False, log=lambda *_: None)
  return pd.read_csv(workdir / 'metrics.csv'), pd.read_csv(workdir / 'curves.csv')


@pytest.mark.heavy  # three regimes' programs
@pytest.mark.parametrize('temperature', [0.5, 1.5])
def test_temperature_scales_each_generations_noise_by_t_squared(hot_run, temperature):
  """Labels sampled as x w + t sigma z: the test error grows by t^2 sigma^2 d / (T - d - 1) a
  generation under replace (refit and drawn rows alike), accumulate's terms after the first
  scale by t^2, and so do the labels' variances; the t-free laws are rejected. curves.csv
  carries each temperature's own closed form."""
  table, curves = hot_run
  lam_P = regression.spectrum(5, 1.0)
  for regime in ('replace', 'fresh', 'accumulate'):
    kind = 'accumulate' if regime == 'accumulate' else 'replace'
    law = regression.fresh_ols_theory(kind, 20, lam_P, 0.5, 4, temperature)
    cold = regression.fresh_ols_theory(kind, 20, lam_P, 0.5, 4)
    rows = (table.regime == regime) & (table.temperature == temperature)
    for g in (0, 1, 4):
      for metric in regression.METRICS:
        values = table[rows & (table.generation == g)][metric].to_numpy()
        assert _in_ci(values, law[metric][g]), (regime, metric, g)
    last = table[rows & (table.generation == 4)]
    for metric in ('test_error', 'label_var'):
      assert not _in_ci(last[metric].to_numpy(), cold[metric][4]), (regime, metric)
    if regime != 'fresh':
      shown = curves[(curves.regime == regime) & (curves.temperature == temperature)]
      np.testing.assert_allclose(shown.test_error_mean_theory, law['test_error'], rtol=1e-6)
  unit = 0.25 * 5 / 14  # sigma^2 d / (T - d - 1)
  growth = regression.fresh_ols_theory('replace', 20, lam_P, 0.5, 4, temperature)['test_error']
  np.testing.assert_allclose(np.diff(growth), temperature**2 * unit, rtol=1e-12)


def test_a_fresh_fit_honours_the_real_rows_weight():
  """fresh at real fraction 0.5: real_weight 1 fits the real rows alone, 0 the synthetic
  rows alone (the previous model's last samples), to rounding."""
  cfg = regression.RegressionConfig(seeds=1, generations=1, samples=20, dims=3, noise=0.5,
                                    regimes=('fresh',), real_fractions=(0.5,),
                                    real_weights=(0.0, 1.0)).validate()
  fam, sweep = regression.family(cfg), cfg.sweep('fresh')

  def shown(xy_NxD, w_N, key):  # the fit, reporting the rows and weights it was given
    params, metrics = fam.fit(xy_NxD, w_N, key)
    return params, {**metrics, 'rows': xy_NxD, 'weights': w_N}
  watched = dataclasses.replace(fam, fit=shown)

  @jax.jit
  def generation_1(share):
    const, carry, _ = driver._first_generation(
        watched, sweep, jnp.int32(3), (jnp.float32(0.5), {'real_weight': share}))
    return carry['last'], driver._generation(watched, sweep, const, carry, 1)[1]
  for share in (0.0, 1.0):
    last_NxD, metrics = generation_1(jnp.float32(share))
    xy_NxD, w_N = metrics['rows'], metrics['weights']
    np.testing.assert_array_equal(xy_NxD[10:], last_NxD[10:])
    real_N = np.arange(20) < 10
    np.testing.assert_array_equal(w_N == 0, real_N if share == 0 else ~real_N)
    alone = xy_NxD[10:] if share == 0 else xy_NxD[:10]
    expected = fam.evaluate(fam.fit(alone, jnp.ones(10), None)[0], None, {})
    for k, v in expected.items():
      np.testing.assert_allclose(metrics[k], v, rtol=1e-5, err_msg=(share, k))


def test_a_shifted_verifier_drags_the_fit_to_the_shifted_truth():
  """verify (keep half) ranked by the truth moved by s in every weight: the fit reaches
  w* + s within a few generations (kept residuals symmetric about it); at s = 0 and scale 1
  the verifier ranks as the truth does, so the runs equal --score=truth's exactly."""
  base = dict(seeds=64, generations=6, samples=40, dims=3, noise=0.5, regimes=('verify',))
  cfg = regression.RegressionConfig(**base, score='verifier', verifier_shifts=(0.0, 0.5)).validate()
  truth = regression.RegressionConfig(**base, score='truth').validate().sweep('verify')
  fam, sweep = regression.family(cfg), cfg.sweep('verify')

  def weights(sweep, knob_values):
    def one(seed):
      value = (jnp.float32(0.5), knob_values) if knob_values else jnp.float32(0.5)
      const, carry, _ = driver._first_generation(fam, sweep, seed, value)

      def step(carry, g):
        carry, _ = driver._generation(fam, sweep, const, carry, g)
        return carry, carry['model']['w'][0]
      return jax.lax.scan(step, carry, jnp.arange(1, 7))[1]
    return jax.vmap(one)(jnp.arange(64))

  @jax.jit
  def runs(shift_V):
    verifier = jax.vmap(lambda s: weights(sweep, {'verifier_shift': s,
                                                  'verifier_scale': jnp.float32(1.0)}))(shift_V)
    return weights(truth, None), verifier
  by_truth, by_verifier = runs(jnp.array([0.0, 0.5]))
  np.testing.assert_array_equal(by_verifier[0], by_truth)
  moved_SxG = np.asarray(by_verifier[1] - regression.true_weights(3)).mean(axis=-1)
  assert 0.1 < moved_SxG[:, 0].mean() < 0.45  # generation 1: part of the way
  assert _in_ci(moved_SxG[:, -1], 0.5) and not _in_ci(moved_SxG[:, -1], 0.45)
  assert _in_ci(np.asarray(by_truth - regression.true_weights(3)).mean(axis=-1)[:, -1], 0.0)


def test_the_default_verifier_ranks_as_the_truth():
  """Unswept (shift 0, scale 1 as Python numbers) the verifier's scores are the truth's."""
  fam = regression.family(regression.RegressionConfig(dims=3, samples=40))
  rows = fam.sample({'w': jnp.full((1, 3), 0.3)}, jax.random.key(0), 200)
  by_truth = regimes.scorer(fam, 'truth')(None, None, rows, None)
  by_verifier = regimes.scorer(fam, 'verifier')(None, None, rows, None)
  np.testing.assert_array_equal(by_verifier.gap_N, by_truth.gap_N)
  assert by_verifier.at == by_truth.at


def test_gradient_through_a_fresh_generation_matches_finite_differences():
  """The sampling noise is reparameterised and the fit smooth: d(test error)/d(temperature)
  and d/d(real_weight) through the driver's generation 1 of fresh equal central differences
  of the same draws."""
  cfg = regression.RegressionConfig(seeds=1, generations=1, samples=30, dims=4, noise=0.5,
                                    regimes=('fresh',), real_fractions=(0.5,),
                                    temperatures=(0.5, 1.5), real_weights=(0.3, 0.7)).validate()
  fam, sweep = regression.family(cfg), cfg.sweep('fresh')

  def error(t, share):
    const, carry, _ = driver._first_generation(
        fam, sweep, jnp.int32(3), (jnp.float32(0.5), {'temperature': t, 'real_weight': share}))
    return driver._generation(fam, sweep, const, carry, 1)[1]['test_error'][0]
  t, share, eps = 1.2, 0.4, 1e-2
  grad_t, grad_share = jax.jit(jax.grad(error, argnums=(0, 1)))(jnp.float32(t), jnp.float32(share))
  t_4 = jnp.array([t + eps, t - eps, t, t], jnp.float32)
  share_4 = jnp.array([share, share, share + eps, share - eps], jnp.float32)
  f_4 = jax.jit(jax.vmap(error))(t_4, share_4)
  assert grad_t > 0 and grad_share != 0
  np.testing.assert_allclose(grad_t, (f_4[0] - f_4[1]) / (2 * eps), rtol=1e-2)
  np.testing.assert_allclose(grad_share, (f_4[2] - f_4[3]) / (2 * eps), rtol=1e-2)


# ---------------------------------------------------------------- pieces

def test_the_fit_is_weighted_ridge_and_ignores_padding():
  """Against float64 normal equations: rows of weight 0 change nothing; pooled statistics
  give the fit of the pooled rows; ridge minimises the weighted mean squared error + lam |w|^2."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(30, 4)) * [1.0, 0.3, 3.0, 0.01]
  y = x @ [1.0, -2.0, 0.5, 30.0] + 0.1 * rng.normal(size=30)
  w = rng.uniform(0.5, 2.0, size=30)
  xy = np.concatenate([x, y[:, None], y[:, None]], 1).astype(np.float32)
  ridge_L, padding = jnp.array([0.0, 0.3]), jnp.full((7, 6), 1e3)

  @jax.jit
  def fits(xy, w):  # the padded rows, and the statistics of two halves combined
    padded_w = jnp.concatenate([w, jnp.zeros(7)])
    halves = regression.combine(regression.statistics(xy[:11], w[:11], 4),
                                regression.statistics(xy[11:], w[11:], 4))
    return (regression.fit_statistics(regression.statistics(jnp.concatenate([xy, padding]),
                                                            padded_w, 4), ridge_L),
            regression.fit_statistics(halves, ridge_L)[0])
  (params, fitted), joined = fits(xy, w.astype(np.float32))
  g, b = (x * w[:, None]).T @ x / w.sum(), (x * w[:, None]).T @ y / w.sum()
  for l, ridge in enumerate((0.0, 0.3)):
    np.testing.assert_allclose(params['w'][l], np.linalg.solve(g + ridge * np.eye(4), b), rtol=2e-4)
  mean = w @ y / w.sum()
  np.testing.assert_allclose(fitted['label_var'], w @ (y - mean) ** 2 / w.sum(), rtol=1e-4)
  np.testing.assert_allclose(joined['w'], params['w'], rtol=1e-4)


@pytest.mark.parametrize('change, flag', [
    (dict(ridges=(-1.0,)), 'ridge'), (dict(ridges=()), 'ridge'),
    (dict(samples=10, dims=10), 'samples'), (dict(inputs='random'), 'inputs'),
    (dict(noise=0.0), 'noise'), (dict(alpha=-1.0), 'alpha'), (dict(dims=0), 'dims'),
    (dict(regimes=('verify',), ridges=(0.0, 0.1)), 'ridge'),
    (dict(real_fractions=(0.5,)), 'real_fraction'), (dict(keep_fractions=(0.2,)), 'keep_fraction'),
    (dict(top_ks=(3,)), 'top_k'),
    (dict(regimes=('replace',), real_weights=(0.5,)), 'real_weight')])
def test_bad_configs_name_their_flag(change, flag):
  with pytest.raises(validation.ConfigError, match=f'--{flag}'):
    regression.RegressionConfig(**change).validate()


def test_ridge_fits_more_dimensions_than_samples():
  regression.RegressionConfig(samples=10, dims=10, ridges=(0.1,)).validate()
  assert regression.family(regression.RegressionConfig(samples=11, dims=10)).refit is None
