"""Linear regression refitted on its own labels, against its closed forms.

One run of every regime (1,000 seeds, fresh inputs, a power-law spectrum) carries the
fresh-input laws, the files and the resume; the fixed-design ridge laws run as chains of the
family's own functions, vmapped over seeds. Few compilations: XLA compiling dominates here.
"""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from collapse_jax.core import regimes, results, validation
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


def _chain(fam, n, generations, pooled):
  """One run of replace (pooled=False) or accumulate from the family's functions: the
  generations' metrics, (G + 1) x L each."""
  def one(key):
    keys, ones = jax.random.split(key, generations + 1), jnp.ones(n)
    stats = fam.summary.of(fam.draw_real(keys[0], n), ones)
    params, fitted = fam.summary.fit(stats, None)
    first = {**fitted, **fam.evaluate(params, None, {})}

    def step(carry, k):
      params, stats = carry
      new = fam.summary.of(fam.sample(params, k, n), ones)
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
    (dict(real_fractions=(0.5,)), 'real_fraction'), (dict(keep_fractions=(0.2,)), 'keep_fraction')])
def test_bad_configs_name_their_flag(change, flag):
  with pytest.raises(validation.ConfigError, match=f'--{flag}'):
    regression.RegressionConfig(**change).validate()


def test_ridge_fits_more_dimensions_than_samples():
  regression.RegressionConfig(samples=10, dims=10, ridges=(0.1,)).validate()
  assert regression.family(regression.RegressionConfig(samples=11, dims=10)).refit is None
