"""Linear regression refitted on its own labels: model collapse in closed form.

Inputs x ~ N(0, Sigma) in P dimensions, Sigma = diag(lam), lam_i = i^-alpha
(alpha = 0: isotropic; alpha > 0: the power-law spectrum of the scaling-law
studies); labels y = x w* + e, e ~ N(0, sigma^2), w* = (1, ..., 1) / sqrt(P).
Generation 0 fits ordinary or ridge least squares to T such samples; generation
n >= 1 fits T samples whose labels are generation n - 1's predictions plus fresh
noise of the same sigma, on fresh inputs (--inputs=fresh) or on the same inputs
every generation (--inputs=same: one design X, T x P, drawn once from
--design_seed and shared by every seed and generation, so that averages over seeds
are expectations given X, the form the fixed-design closed forms take).

Several ridge penalties run in one compiled program, as the regimes' parameters do:
a sample is a row [x_1 .. x_P, y_1 .. y_L], one label per penalty (L = len(ridges)),
and each label column belongs to its own chain of models. The columns share the
inputs and the noise draws (common random numbers), so each chain has exactly the
law of a run with that penalty alone, and their differences are measured with less
noise. Stored so, samples go through every regime's pools, mixing and selection
unchanged. A penalty lam minimises the weighted mean squared error plus
lam |w|^2: w = (X^T W X / n + lam I)^-1 X^T W y / n, n = sum of the weights
(0: ordinary least squares).

Knobs (core/knobs.py): --temperature=t samples the next generation's labels with noise
t sigma (labels x w + t sigma z, z ~ N(0, 1)), on the rows and on the refit alike;
--real_weight reweights the real rows of the regimes that mix them, which the weighted fit
honours; --score=verifier ranks by the truth with its weights moved by --verifier_shift and
its noise widened --verifier_scale times.

Shapes in names: N rows, D = P + L their width, P input dimensions, L penalties,
K = P + 1 (an input and its noise).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.core import (experiment, knobs, placement, plots, protocol, regimes, results,
                               validation)
from collapse_jax.core.settings import setting

INPUTS = ('fresh', 'same')
METRICS = ('test_error', 'param_error', 'label_var')
Z999 = 3.2905  # two-sided 99.9% normal quantile, for the figure's bands


# ---------------------------------------------------------------- the truth

def spectrum(dims: int, alpha: float) -> np.ndarray:
  """lam_i = i^-alpha, i = 1..P: the variances of the inputs' coordinates."""
  return (np.arange(1, dims + 1, dtype=np.float64) ** -alpha).astype(np.float32)


def true_weights(dims: int) -> np.ndarray:
  return np.full(dims, 1 / np.sqrt(dims), np.float32)


def design(samples: int, dims: int, alpha: float, seed: int) -> np.ndarray:
  """The inputs of --inputs=same: T x P, rows N(0, Sigma), the same for every seed."""
  z_TxP = jax.random.normal(jax.random.key(seed), (samples, dims))
  return np.asarray(z_TxP * np.sqrt(spectrum(dims, alpha)), np.float32)


# ---------------------------------------------------------------- sufficient statistics and the fit
# The fit depends on weighted data through n = sum w, X^T W X, X^T W Y and the
# labels' weighted sums and sums of squares; `accumulate` keeps them running.

def statistics(xy_NxD, w_N, dims: int):
  """Sufficient statistics of weighted rows [x, y_1 .. y_L]; rows of weight 0 count for nothing."""
  x_NxP, y_NxL = xy_NxD[:, :dims], xy_NxD[:, dims:]
  wx_NxP = w_N[:, None] * x_NxP
  return {'n': jnp.sum(w_N), 'xx': wx_NxP.T @ x_NxP, 'xy': wx_NxP.T @ y_NxL,
          'y1': w_N @ y_NxL, 'y2': w_N @ y_NxL**2}


def combine(a, b):
  """The statistics of two data sets together: every one is a sum."""
  return jax.tree.map(jnp.add, a, b)


def solve_spd(a_PxP, b_P):
  """a^-1 b for a symmetric positive definite a, by Gauss-Jordan elimination without
  pivoting (stable for such a) on [a | b], P x Q, Q = P + 1. Elementwise steps, so a
  vmapped batch is vectorised rather than a LAPACK call per matrix (which, batched on a
  CPU split into devices, can deadlock: core/linalg.py)."""
  p = a_PxP.shape[0]
  ab_PxQ = jnp.concatenate([a_PxP, b_P[:, None]], axis=1)

  def eliminate(j, ab_PxQ):
    row_Q = jax.lax.dynamic_index_in_dim(ab_PxQ, j, 0, keepdims=False)
    row_Q = row_Q / jax.lax.dynamic_index_in_dim(row_Q, j, 0, keepdims=False)
    col_P = jax.lax.dynamic_index_in_dim(ab_PxQ, j, 1, keepdims=False)
    ab_PxQ = ab_PxQ - jnp.where(jnp.arange(p) == j, 0.0, col_P)[:, None] * row_Q
    return jax.lax.dynamic_update_index_in_dim(ab_PxQ, row_Q, j, 0)
  return jax.lax.fori_loop(0, p, eliminate, ab_PxQ)[:, p]


def fit_statistics(stats, ridge_L):
  """The L penalised least-squares fits the statistics determine, and the training
  labels' weighted variance. Solved in Jacobi-scaled coordinates (unit diagonal), so a
  power-law spectrum's small variances cost no precision."""
  n = stats['n']
  g_PxP, b_PxL = stats['xx'] / n, stats['xy'] / n
  diag_P = jnp.diagonal(g_PxP)
  s_P = jnp.where(diag_P > 0, jax.lax.rsqrt(jnp.where(diag_P > 0, diag_P, 1.0)), 1.0)
  a_LxPxP = (s_P[:, None] * g_PxP * s_P)[None] + ridge_L[:, None, None] * jnp.diag(s_P**2)
  w_LxP = s_P * jax.vmap(solve_spd)(a_LxPxP, (s_P[:, None] * b_PxL).T)
  mean_L = stats['y1'] / n
  return {'w': w_LxP}, {'label_var': jnp.maximum(stats['y2'] / n - mean_L**2, 0.0)}


# ---------------------------------------------------------------- the model's data

def labelled(w_LxP, key, n: int, scale_P, noise: float, design_TxP=None):
  """n rows [x, x w_1 + e, .., x w_L + e]: one input and one noise draw shared by the L
  models; the inputs fresh N(0, Sigma) draws, or the design's rows in turn (repeated past T).
  One normal draw for both (each draw is a random-number program XLA compiles)."""
  p = scale_P.shape[0]
  if design_TxP is None:
    z_NxK = jax.random.normal(key, (n, p + 1))
    x_NxP, e_Nx1 = z_NxK[:, :p] * scale_P, noise * z_NxK[:, p:]
  else:
    x_NxP = jnp.asarray(design_TxP)[jnp.arange(n) % design_TxP.shape[0]]
    e_Nx1 = noise * jax.random.normal(key, (n, 1))
  # elementwise: a CPU runs batched matrix-vector products slowly
  y_NxL = jnp.sum(x_NxP[:, None, :] * w_LxP[None], axis=-1) + e_Nx1
  return jnp.concatenate([x_NxP, y_NxL], axis=1)


# The law sampled at temperature t: its labels' noise t sigma (label_noise); the weights, what
# evaluate reads, unchanged.
tempered = knobs.with_temperature


def label_noise(params, noise: float):
  """The standard deviation of the noise the law `params` labels its samples with: sigma,
  times its temperature where it is tempered (a traced factor, so a gradient reaches it)."""
  return noise * params['temperature'] if 'temperature' in params else noise


def chi_square(key, dof_K):
  """chi2(dof) draws, dof > 0: 2 x Gamma(dof / 2) by Marsaglia and Tsang's exact rejection
  (ACM TOMS 2000), shape a < 1 boosted as Gamma(a + 1) U^(1/a). All K draws share one
  loop (each round accepts with probability above 0.95): far less for XLA to compile than
  jax.random.gamma's."""
  a_K = dof_K / 2.0
  d_K = jnp.where(a_K < 1, a_K + 1, a_K) - 1 / 3
  c_K = jax.lax.rsqrt(9 * d_K)
  boost_key, key = jax.random.split(key)

  def draw(state):
    i, done_K, value_K = state
    z_K, u_K = jnp.split(jax.random.normal(jax.random.fold_in(key, i), (2 * d_K.shape[0],)), 2)
    u_K = jax.scipy.special.ndtr(u_K)  # a uniform from the second normal
    v_K = (1 + c_K * z_K) ** 3
    ok_K = (v_K > 0) & (jnp.log(u_K) < 0.5 * z_K**2 + d_K - d_K * v_K
                        + d_K * jnp.log(jnp.where(v_K > 0, v_K, 1.0)))
    return i + 1, done_K | ok_K, jnp.where(done_K | ~ok_K, value_K, d_K * v_K)

  init = (jnp.int32(0), jnp.zeros(d_K.shape, bool), jnp.zeros(d_K.shape))
  _, _, gamma_K = jax.lax.while_loop(lambda state: ~jnp.all(state[1]), draw, init)
  u_K = jax.random.uniform(boost_key, d_K.shape, minval=jnp.finfo(jnp.float32).tiny)
  boost_K = u_K ** (1 / a_K)
  return 2 * gamma_K * jnp.where(a_K < 1, boost_K, 1.0)


def drawn_statistics(key, n: int, scale_K):
  """Sufficient statistics of n rows z ~ N(0, diag(scale^2)) in K dimensions, drawn
  without drawing the rows: {'sum': sum of z, 'moment': sum of z z^T}.

  A Helmert rotation splits n iid normal rows into sqrt(n) times their mean,
  N(0, diag(scale^2)), and n - 1 rows whose scatter is the centred one,
  Wishart(n - 1); by Bartlett's decomposition that is A A^T with A lower triangular,
  A_ii^2 ~ chi2(n - i) (i = 1..K) and A_ij ~ N(0, 1) below the diagonal (needs n >= K + 1).
  K(K + 3)/2 draws in place of n K.
  """
  k = scale_K.shape[0]
  below = np.tril_indices(k, -1)
  normal_key, chi_key = jax.random.split(key)
  z_M = jax.random.normal(normal_key, (len(below[0]) + k,))
  diag_K = jnp.sqrt(chi_square(chi_key, n - 1.0 - jnp.arange(k)))
  a_KxK = jnp.diag(diag_K).at[below].set(z_M[k:])
  a_KxK = scale_K[:, None] * a_KxK
  root_K = scale_K * z_M[:k]  # sqrt(n) x the rows' mean
  return {'sum': jnp.sqrt(float(n)) * root_K,
          'moment': a_KxK @ a_KxK.T + jnp.outer(root_K, root_K)}


def refit(params, key, n: int, scale_P, noise: float, ridge_L):
  """Replace's next fit, to n fresh samples of `params`, drawn as sufficient statistics.

  A row is (x, e) ~ N(0, diag(Sigma, sigma^2)) and its labels y_l = x w_l + e, so
  X^T X, X^T e, e^T e and the sums of x and e (drawn_statistics) give every statistic
  of the fit: X^T y_l = X^T X w_l + X^T e, sum y_l, sum y_l^2. The same law as fitting
  n drawn rows, at a cost that does not grow with n (tests: the closed forms hold for both).
  A tempered `params` (tempered) draws e with its noise.
  """
  p = scale_P.shape[0]
  e_scale = label_noise(params, noise)
  drawn = drawn_statistics(key, n, jnp.concatenate([scale_P, jnp.full((1,), e_scale)]))
  m_KxK, s_K = drawn['moment'], drawn['sum']
  w_LxP = params['w']
  xx_PxP, xe_P = m_KxK[:p, :p], m_KxK[:p, p]
  stats = {'n': jnp.float32(n), 'xx': xx_PxP, 'xy': (w_LxP @ xx_PxP).T + xe_P[:, None],
           'y1': w_LxP @ s_K[:p] + s_K[p],
           'y2': jnp.sum((w_LxP @ xx_PxP) * w_LxP, axis=1) + 2 * w_LxP @ xe_P + m_KxK[p, p]}
  return fit_statistics(stats, ridge_L)


def log_likelihood(w_LxP, xy_NxD, noise: float):
  """log N(y_l; x w_l, sigma^2) of each row, averaged over its L labels: the conditional
  density of the labels given the inputs. The inputs' own density, N(0, Sigma), is the
  same under every model and the truth, and is left out: ranked by it, verify would
  filter inputs rather than labels."""
  p = w_LxP.shape[1]
  resid_NxL = xy_NxD[:, p:] - jnp.sum(xy_NxD[:, None, :p] * w_LxP[None], axis=-1)
  return (jnp.mean(-0.5 * (resid_NxL / noise) ** 2, axis=1) - jnp.log(noise)
          - 0.5 * jnp.log(2 * jnp.pi))


# ---------------------------------------------------------------- metrics

def evaluate(params, w_star_P, lam_P):
  """Per penalty: the test error against the true function, E_x (x w - x w*)^2 =
  |w - w*|^2_Sigma, and the parameter error |w - w*|^2."""
  err_LxP = params['w'] - w_star_P
  return {'test_error': jnp.sum(lam_P * err_LxP**2, axis=1),
          'param_error': jnp.sum(err_LxP**2, axis=1)}


# ---------------------------------------------------------------- closed forms

def fresh_ols_theory(regime: str, samples: int, lam_P, noise: float, generations: int,
                     temperature: float = 1.0):
  """E test error, E parameter error and E training-label variance at generations 0..G
  for ordinary least squares on fresh Gaussian inputs (T >= P + 2), any Sigma, the labels
  of generation g >= 1 sampled at temperature t (noise t sigma; generation 0's are real).

  With delta_g = w_g - w*, each generation adds S_g^-1 X_g^T e_g, independent
  zero-mean noise of variance s_g^2 (s_0 = sigma, s_g = t sigma), where S_g is the Gram
  matrix of the data the fit pools:
    replace: delta_g = delta_{g-1} + (X_g^T X_g)^-1 X_g^T e_g; E (X^T X)^-1 =
      Sigma^-1 / (T - P - 1) (the inverse Wishart's mean), so every fit, generation 0's
      on real labels included, adds s_g^2 P / (T - P - 1) to the test error:
      E |delta_g|^2_Sigma = (1 + g t^2) sigma^2 P / (T - P - 1), a growth of
      t^2 sigma^2 P / (T - P - 1) a generation (t = 1: Dohmatob, Feng and Kempe 2024, Model
      collapse demystified: the case of regression: linear growth in the number of
      generations) and E |delta_g|^2 = (1 + g t^2) sigma^2 tr Sigma^-1 / (T - P - 1).
    accumulate: the pool S_g = sum_{k<=g} X_k^T X_k and S_g delta_g = S_g delta_{g-1} +
      X_g^T e_g, so delta_g = sum_{k<=g} S_k^-1 X_k^T e_k. By exchangeability of the
      k + 1 blocks, E S_k^-1 A_k S_k^-1 = E S_k^-1 / (k + 1), S_k ~ Wishart((k + 1) T), so
      E |delta_g|^2_Sigma = P sum_{j=1}^{g+1} s_{j-1}^2 / (j (j T - P - 1)); at t = 1
      below sigma^2 P / (T - P - 1) sum 1/j^2 < (pi^2 / 6) x the one-shot error
      (Gerstgrasser et al. 2024, Is model collapse inevitable?); the 1/j^2 form is
      exact for the same inputs every generation (fixed_design_theory).
    labels: with Ew_k = w* (OLS is unbiased) and rows independent given the past,
      the pooled variance of N = (g + 1) T labels has E = T (N - 1) / N^2 x
      sum_{k<=g} (|w*|^2_Sigma + s_k^2 + E |delta_{k-1}|^2_Sigma), delta_{-1} = 0.
  """
  lam_P = np.asarray(lam_P, np.float64)
  t, p, var = float(samples), lam_P.shape[0], noise**2
  j_G = np.arange(1, generations + 2, dtype=np.float64)  # fits so far, g + 1
  heat_G = np.where(j_G > 1, float(temperature) ** 2, 1.0)  # s_g^2 / sigma^2
  if regime == 'replace':
    unit_G = var * (np.cumsum(heat_G) / (t - p - 1))
  else:
    unit_G = var * np.cumsum(heat_G / (j_G * (j_G * t - p - 1)))
  test_G, param_G = p * unit_G, np.sum(1 / lam_P) * unit_G
  signal_G = float(np.sum(lam_P * true_weights(p).astype(np.float64) ** 2)) + var * heat_G
  block_G = signal_G + np.concatenate([[0.0], test_G[:-1]])  # E |y|^2 per row of block k
  rows_G = j_G * t if regime == 'accumulate' else np.full_like(j_G, t)
  pooled_G = np.cumsum(block_G) if regime == 'accumulate' else block_G
  return {'test_error': test_G, 'param_error': param_G,
          'label_var': t * (rows_G - 1) / rows_G**2 * pooled_G}


def fixed_design_theory(regime: str, x_TxP, lam_P, noise: float, ridge: float, generations: int,
                        temperature: float = 1.0):
  """E test and parameter error at generations 0..G given the design X (--inputs=same),
  for any penalty: exact linear-Gaussian recursions over the noise.

  H = (X^T X + lam T I)^-1. replace: w_g = A w_{g-1} + H X^T e_g, A = H X^T X,
  w_{-1} = w*, so the mean follows m_g = A m_{g-1} and the covariance C_g = A C_{g-1} A^T
  + sigma^2 H X^T X H (ridge: the bias grows as A^(g+1) shrinks w* towards 0).
  accumulate: w_g = H u_g / (g + 1), u_g = X^T (y_0 + .. + y_g) and y_k = X w_{k-1} + e_k, so
  u_g = (I + X^T X H / g) u_{g-1} + X^T e_g, u_0 = X^T X w* + X^T e_0. With lam = 0 these
  give E |delta_g|^2_M = sigma^2 tr((X^T X)^-1 M) x (g + 1) (replace) or x sum_{j<=g+1} 1/j^2
  (accumulate), whose average over X is the fresh-input forms' with T - P - 1.
  E |delta|^2_M = (m - w*)^T M (m - w*) + tr(M C). At temperature t the noise e_g of every
  generation g >= 1 has variance t^2 sigma^2 in place of sigma^2 (generation 0's is real):
  the means are unchanged, the covariances' added terms scale by t^2.
  """
  x_TxP = np.asarray(x_TxP, np.float64)
  t, p = x_TxP.shape
  lam_P = np.asarray(lam_P, np.float64)
  w_star = true_weights(p).astype(np.float64)
  g_PxP = x_TxP.T @ x_TxP
  h_PxP = np.linalg.inv(g_PxP + ridge * t * np.eye(p))
  var, hot = noise**2, noise**2 * float(temperature) ** 2  # e_0's variance, e_g's (g >= 1)
  out = {'test_error': [], 'param_error': []}

  def record(m_P, c_PxP):
    err_P = m_P - w_star
    out['test_error'].append(err_P @ (lam_P * err_P) + np.sum(lam_P * np.diagonal(c_PxP)))
    out['param_error'].append(err_P @ err_P + np.trace(c_PxP))

  if regime == 'replace':
    a_PxP, m_P, c_PxP = h_PxP @ g_PxP, w_star, np.zeros((p, p))
    for g in range(generations + 1):
      s2 = hot if g else var
      m_P, c_PxP = a_PxP @ m_P, a_PxP @ c_PxP @ a_PxP.T + s2 * h_PxP @ g_PxP @ h_PxP
      record(m_P, c_PxP)
  else:
    mu_P, cov_PxP = g_PxP @ w_star, var * g_PxP
    for g in range(generations + 1):
      if g:
        f_PxP = np.eye(p) + g_PxP @ h_PxP / g
        mu_P, cov_PxP = f_PxP @ mu_P, f_PxP @ cov_PxP @ f_PxP.T + hot * g_PxP
      record(h_PxP @ mu_P / (g + 1), h_PxP @ cov_PxP @ h_PxP / (g + 1) ** 2)
  return {k: np.asarray(v) for k, v in out.items()}


def theory(cfg: 'RegressionConfig', regime: str, value: float, ridge: float,
           generations: int, knob_values=None) -> dict[str, np.ndarray]:
  """Expectations over seeds of METRICS at generations 0..G where a closed form holds
  (replace; accumulate with every generation and row weighted equally), at the group's
  temperature (`knob_values`: {knob: value} of the group); NaN elsewhere."""
  knob_values = knob_values or {}
  nan = np.full(generations + 1, np.nan)
  out = {k: nan for k in METRICS}
  if regime not in ('replace', 'accumulate') or (regime == 'accumulate' and (
      value != 1.0 or 'real_weight' in knob_values)):
    return out
  t = knobs.value(knob_values, 'temperature')
  lam_P = spectrum(cfg.dims, cfg.alpha)
  if cfg.inputs == 'same':
    x_TxP = design(cfg.samples, cfg.dims, cfg.alpha, cfg.design_seed)
    return {**out, **fixed_design_theory(regime, x_TxP, lam_P, cfg.noise, ridge, generations, t)}
  if ridge == 0.0 and cfg.samples >= cfg.dims + 2:
    return fresh_ols_theory(regime, cfg.samples, lam_P, cfg.noise, generations, t)
  return out


# ---------------------------------------------------------------- the experiment

@dataclasses.dataclass(frozen=True)
class RegressionConfig(experiment.SweepConfig):
  """Recursive linear regression; defaults sized for an accelerator (100 dimensions, 500
  samples a generation, 1,000 seeds x 100 generations, replace beside accumulate, OLS)."""
  samples: int = setting(500, 'Samples T each generation is fitted on.')
  dims: int = setting(100, 'Input dimensions d.')
  alpha: float = setting(0.0, "The inputs' spectrum: variances lam_i = i^-alpha (0: isotropic; "
                         'the scaling-law studies take alpha > 1).')
  noise: float = setting(1.0, 'Standard deviation sigma of the label noise, real and synthetic.')
  ridges: tuple[float, ...] = setting(
      (0.0,), 'Comma-separated ridge penalties, all in one compiled program (0: ordinary least '
      'squares); each fit minimises the mean squared error plus ridge x |w|^2.', flag='ridge')
  inputs: str = setting('fresh', 'fresh: new inputs every generation; same: one design of T '
                        'inputs, drawn from --design_seed, for every generation and seed.',
                        choices=INPUTS)
  design_seed: int = setting(0, 'The seed of the design of --inputs=same.')
  reward_target: float = setting(0.0, '--score=reward: the reward of a sample is -(y - c)^2 for '
                                 'its label y and c this value.')
  regimes: tuple[str, ...] = ('replace', 'accumulate')
  checkpoint_every: int = 50

  def validate(self) -> 'RegressionConfig':
    self.validate_sweep(min_samples=2)
    if not self.ridges:
      raise validation.ConfigError('ridge', 'needs at least one value')
    for r in self.ridges:
      if not r >= 0:
        raise validation.ConfigError('ridge', f'{r} is negative; a penalty is at least 0 (0: OLS)')
    validation.check_choice('inputs', self.inputs, INPUTS)
    checks = [('dims', self.dims >= 1, 'must be at least 1'),
              ('samples', min(self.ridges) > 0 or self.samples > self.dims,
               f'must exceed --dims={self.dims} for ordinary least squares (--ridge=0)'),
              ('alpha', np.isfinite(self.alpha) and self.alpha >= 0, 'must be non-negative'),
              ('noise', self.noise > 0, 'must be positive'),
              ('design_seed', self.design_seed >= 0, 'must be non-negative')]
    validation.check_fields(self, checks)
    if len(self.ridges) > 1 and any(regimes.get(r).scored for r in self.regimes):
      raise validation.ConfigError('ridge', 'verify and curate rank whole samples, which carry one '
                                   'label per penalty: give them one --ridge value')
    validation.validate_options(self, family(self))
    return self


SMALL = dict(seeds=1000, generations=50, samples=50, dims=10, ridges=(0.0, 0.1),
             checkpoint_every=25)
# The knobs on a CPU: replace and fresh (real fraction 0.5), temperatures 0.5, 1, 1.5, the real
# rows' weight 0 .. 1 (fresh; 0.5 is the pooled fit's), every group of one regime in one program.
KNOBS = dict(seeds=1000, generations=20, samples=50, dims=10, regimes=('replace', 'fresh'),
             real_fractions=(0.5,), temperatures=(0.5, 1.0, 1.5),
             real_weights=(0.0, 0.25, 0.5, 0.75, 1.0), checkpoint_every=10)
PRESETS = {'paper': {}, 'small': SMALL, 'knobs': KNOBS}


def family(cfg: RegressionConfig) -> protocol.Family:
  """The regression as a driver family: running statistics for accumulate, and under
  replace with fresh inputs a refit drawn as sufficient statistics; sampled at a
  temperature (tempered), ranked by a biased verifier (the truth's weights moved by a
  shift, its noise widened by a scale)."""
  lam_P = spectrum(cfg.dims, cfg.alpha)
  scale_P, w_star_P = np.sqrt(lam_P), true_weights(cfg.dims)
  ridge_L = jnp.asarray(cfg.ridges, jnp.float32)
  x_TxP = (design(cfg.samples, cfg.dims, cfg.alpha, cfg.design_seed) if cfg.inputs == 'same'
           else None)
  truth_LxP = np.tile(w_star_P, (len(cfg.ridges), 1))
  fit_stats = lambda stats, key: fit_statistics(stats, ridge_L)  # noqa: E731
  refitting = cfg.inputs == 'fresh' and cfg.samples >= cfg.dims + 2  # Bartlett needs T >= K + 1
  return protocol.Family(
      draw_real=lambda key, n: labelled(truth_LxP, key, n, scale_P, cfg.noise, x_TxP),
      fit=lambda xy_NxD, w_N, key: fit_statistics(statistics(xy_NxD, w_N, cfg.dims), ridge_L),
      sample=lambda params, key, n: labelled(params['w'], key, n, scale_P,
                                             label_noise(params, cfg.noise), x_TxP),
      reference=lambda params0, key: {},
      evaluate=lambda params, synth_NxD, ref: evaluate(params, w_star_P, lam_P),
      summary=protocol.Summary(lambda xy_NxD, w_N: statistics(xy_NxD, w_N, cfg.dims), combine,
                               fit_stats),
      refit=(lambda params, key, n: refit(params, key, n, scale_P, cfg.noise, ridge_L))
      if refitting else None,
      log_density=lambda params, xy_NxD: log_likelihood(params['w'], xy_NxD, cfg.noise),
      true_log_density=lambda xy_NxD: log_likelihood(truth_LxP, xy_NxD, cfg.noise),
      reward=lambda xy_NxD: -jnp.mean((xy_NxD[:, cfg.dims:] - cfg.reward_target) ** 2, axis=1),
      biased=tempered, sampling_knobs=('temperature',),
      verifier=lambda xy_NxD, shift, scale: log_likelihood(truth_LxP + shift, xy_NxD,
                                                           cfg.noise * scale))


# ---------------------------------------------------------------- tables and figures

def per_ridge(cfg: RegressionConfig, sweeps):
  """(ridge, [(sweep, metrics of that penalty's chains)]) for each penalty."""
  for l, ridge in enumerate(cfg.ridges):
    yield ridge, [(sweep, {k: v[..., l] if v.ndim == 3 else v for k, v in m.items()})
                  for sweep, m in sweeps]


def _with_ridge(table, ridge: float):
  """The table with a 'ridge' column after 'samples'."""
  out = {}
  for k, v in table.items():
    out[k] = v
    if k == 'samples':
      out['ridge'] = np.full(len(v), ridge, np.float32)
  return out


def curves_table(cfg: RegressionConfig, sweeps):
  """Statistics over seeds per generation x regime x value x penalty, with the closed
  forms as *_mean_theory columns."""
  def closed_form(ridge):  # over_seeds passes each group of runs, its knobs' values alone
    return lambda sweep, value: {f'{k}_mean_theory': v for k, v in theory(
        cfg, sweep.regime, value, ridge, sweep.generations,
        sweep.group_knobs()).items()}
  return results.stacked([_with_ridge(results.over_seeds(pairs, extra=closed_form(ridge)), ridge)
                 for ridge, pairs in per_ridge(cfg, sweeps)])


def _lines(curves):
  """(regime, parameter value, knobs' values, penalty) of each group of runs, in the order
  they appear, and each one's rows of the table."""
  value_R = _values(curves)
  for ridge in dict.fromkeys(curves['ridge']):
    of_ridge_R = curves['ridge'] == ridge
    for group in results.groups({k: v[of_ridge_R] for k, v in curves.items()}):
      rows_R = of_ridge_R & (curves['regime'] == group.regime) & (value_R == group.value)
      for k, v in group.knobs:
        rows_R &= curves[k] == np.float32(v)
      yield (group.regime, group.value, group.knobs, ridge), rows_R


def draw(curves, path: str, title: str):
  """Mean test error and training-label variance against generation, a column per regime,
  a line per parameter value, knobs' values and penalty with its 99.9% band, closed forms
  dashed."""
  import matplotlib.pyplot as plt  # noqa: PLC0415 (plots set the backend)
  lines = list(_lines(curves))
  names = list(dict.fromkeys(key[0] for key, _ in lines))
  panels = (('test_error', 'test error |w_n - w*|^2_Sigma'),
            ('label_var', "training labels' variance"))
  fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 7), squeeze=False, sharex=True)
  for col, name in enumerate(names):
    for i, ((regime, value, knob_values, ridge), rows) in enumerate(
        item for item in lines if item[0][0] == name):
      g_G, n = curves['generation'][rows], curves['seeds'][rows]
      column = results.value_column(curves, regime)
      shown = column != 'real_fraction' or regimes.get(regime).parameter == column
      label = ((f'{column.replace("_", " ")} {value:g}, ' if shown else '')
               + ''.join(f'{k.replace("_", " ")} {v:g}, ' for k, v in knob_values)
               + f'ridge {ridge:g}')
      for ax, (metric, ylabel) in zip(axes[:, col], panels):
        mean_G = curves[f'{metric}_mean'][rows]
        half_G = Z999 * curves[f'{metric}_sd'][rows] / np.sqrt(n)
        line, = ax.plot(g_G, mean_G, color=f'C{i}', label=label)
        ax.fill_between(g_G, mean_G - half_G, mean_G + half_G, color=line.get_color(), alpha=0.2,
                        linewidth=0)
        theory_G = curves[f'{metric}_mean_theory'][rows]
        if np.isfinite(theory_G).any():
          ax.plot(g_G, theory_G, color='k', linestyle='--', linewidth=1)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0, col].set_title(name)
    axes[-1, col].set_xlabel('generation')
    axes[0, col].legend(fontsize=7, title='dashed: closed form; band: 99.9% of the mean',
                        title_fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  if placement.is_primary():
    fig.savefig(path, dpi=120)
  plt.close(fig)


def _values(table):
  """Each row's value of its regime's parameter (real fraction, age decay, ...)."""
  value_R = np.asarray(table['real_fraction'], np.float64).copy()
  for regime in dict.fromkeys(table['regime']):
    rows = table['regime'] == regime
    value_R[rows] = table[results.value_column(table, regime)][rows]
  return value_R


def per_seed_table(cfg: RegressionConfig, sweeps):
  """metrics.csv: one row per generation x seed x regime x value x penalty."""
  return results.stacked([_with_ridge(results.long_table(pairs, first=METRICS), ridge)
                          for ridge, pairs in per_ridge(cfg, sweeps)])


def figures(cfg: RegressionConfig, out: experiment.Outcome) -> None:
  """errors.png, and tradeoff.png of the first penalty."""
  curves = out.curves
  draw(curves, out.path('errors.png'), _title(cfg))
  first = curves['ridge'] == np.float32(cfg.ridges[0])
  plots.scores_against({k: v[first] for k, v in curves.items()},
                       ('test_error', 'test error'), out.path('tradeoff.png'), _title(cfg))


def _title(cfg: RegressionConfig) -> str:
  spectrum_name = 'isotropic' if cfg.alpha == 0 else f'lam_i = i^-{cfg.alpha:g}'
  return (f'linear regression on its own labels: d={cfg.dims}, T={cfg.samples}, {spectrum_name}, '
          f'sigma={cfg.noise:g}, {cfg.inputs} inputs, {cfg.seeds} seeds')


def summary(cfg: RegressionConfig, out: experiment.Outcome) -> str:
  """The statistics over seeds of each penalty."""
  curves = out.curves
  return '\n\n'.join(
      f'ridge {ridge:g}' + (' (OLS)' if ridge == 0 else '') + '\n' + results.summary(
          {k: v[curves['ridge'] == np.float32(ridge)] for k, v in curves.items()}, METRICS,
          generations=(1, 10, 100))
      for ridge in cfg.ridges)


def run(cfg: RegressionConfig, workdir: str, progress: bool = True, log=print):
  """Runs, resumes or reloads the experiment in `workdir`; returns the curves.

  Leaves there: config.json, checkpoints/<regime>/, metrics.csv (one row per generation x
  seed x regime x value x penalty), curves.csv (statistics over seeds beside the closed
  forms), errors.png, tradeoff.png with a score, and summary.txt.
  """
  exp = experiment.Experiment(
      'regression', lambda: family(cfg), METRICS, generations=(1, 10, 100), curves_csv=True,
      table=functools.partial(per_seed_table, cfg), curves=functools.partial(curves_table, cfg),
      figures=functools.partial(figures, cfg), text=functools.partial(summary, cfg))
  return experiment.run_experiment(exp, cfg, workdir, progress, log).curves
