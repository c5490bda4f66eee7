"""A Gaussian refitted on its own samples: the paper's theory, simulated and in closed form.

Generation 0 fits mean and covariance to M samples of N(mu, sigma^2 I) in d
dimensions; generation g >= 1 fits them to M samples of generation g - 1's fit.
In the paper's indexing (Nature 2024, Section 3 and its supplement) the fit of
generation g is (mu_{g+1}, Sigma_{g+1}): n = g + 1 fits separate it from the
truth, and every closed form below is written in that n.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from collapse_jax.core import experiment, knobs, linalg, plots, protocol, scores, validation
from collapse_jax.core.settings import setting

ESTIMATORS = ('mle', 'unbiased')


# ---------------------------------------------------------------- fit and sample
# A fit is {'mean': mu_D, 'unit': U_DxD, 'log_scale': l_D}: its samples are
# mu + U (e^l * z), z ~ N(0, I), with U unit lower triangular, so Sigma = A A^T for
# A = U diag(e^l). Collapse drives the scales e^l below float32's range and the
# columns' scales apart by orders of magnitude; kept as logarithms they stay exact.
# A singular fit (M <= d samples) has dead columns, l = -inf, after its live ones.

def _mm(a, b):
  """A matmul in full float32 on every backend: a TPU's default (one bfloat16 pass) would
  make its fits and samples differ from the CPU's that the tests check."""
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def summarise(x_NxD, w_N):
  """Sufficient statistics of weighted data: total weight, mean, scatter matrix.

  One pass over the data, shifted by its first row: the shifted sums stay of
  the order of the spread even when the spread is tiny against the mean.
  """
  n = jnp.sum(w_N)
  xc_NxD = x_NxD - x_NxD[0]
  s1_D = jnp.sum(w_N[:, None] * xc_NxD, axis=0)
  if x_NxD.shape[1] == 1:  # elementwise: a CPU runs a batch of 1 x 1 matmuls slowly
    s2_DxD = jnp.sum(w_N * xc_NxD[:, 0] ** 2)[None, None]
  else:
    s2_DxD = _mm((w_N[:, None] * xc_NxD).T, xc_NxD)
  return {'n': n, 'mean': x_NxD[0] + s1_D / n, 'scatter': s2_DxD - jnp.outer(s1_D, s1_D) / n}


def combine(a, b):
  """The statistics of two data sets together (the pairwise update of Chan et al.)."""
  n = a['n'] + b['n']
  delta_D = b['mean'] - a['mean']
  return {'n': n, 'mean': a['mean'] + delta_D * (b['n'] / n),
          'scatter': a['scatter'] + b['scatter'] + jnp.outer(delta_D, delta_D) * (a['n'] * b['n'] / n)}


def _divisor(n, estimator: str):
  """The covariance's divisor: n - 1 (unbiased, Theorem 3.1) or n (mle, the figure code)."""
  return n - (1.0 if estimator == 'unbiased' else 0.0)


def _factor(b_KxD, rank=None):
  """{'unit', 'log_scale'} of the lower factor C of B^T B (C C^T = B^T B), by QR of B,
  which needs no positive definiteness: columns whose scale is lost in rounding, or past
  `rank` (what B is known to have at most), are dead."""
  k, d = b_KxD.shape
  if d == 1:
    return {'unit': jnp.ones((1, 1)), 'log_scale': 0.5 * jnp.log(jnp.sum(b_KxD**2))[None]}
  r_KxD = linalg.qr_r(b_KxD)
  c_DxD = jnp.zeros((d, d), b_KxD.dtype).at[:min(k, d)].set(r_KxD[:d]).T
  c_DxD = c_DxD * jnp.where(jnp.diagonal(c_DxD) < 0, -1.0, 1.0)  # columns' signs: C_jj >= 0
  c_D = jnp.diagonal(c_DxD)
  alive_D = c_D > max(k, d) * jnp.finfo(c_D.dtype).eps * jnp.max(c_D)
  if rank is not None:  # rounding alone leaves a column past the rank alive now and then
    alive_D = alive_D & (jnp.arange(d) < rank)
  alive_D = jnp.cumprod(alive_D) > 0
  unit_DxD = jnp.where(alive_D, c_DxD / jnp.where(alive_D, c_D, 1.0), jnp.eye(d))
  return {'unit': unit_DxD, 'log_scale': jnp.where(alive_D, jnp.log(c_D), -jnp.inf)}


def fit(x_NxD, w_N, estimator: str):
  """Mean and covariance factor of weighted samples."""
  n = jnp.sum(w_N)
  mean_D = jnp.sum(w_N[:, None] * x_NxD, 0) / n  # elementwise: batched 1-D matvecs are slow on a CPU
  b_NxD = jnp.sqrt(w_N / _divisor(n, estimator))[:, None] * (x_NxD - mean_D)
  return {'mean': mean_D, **_factor(b_NxD, rank=jnp.sum(w_N > 0) - 1)}, {}  # centred: one less


def fit_summary(stats, estimator: str):
  """The fit that sufficient statistics determine; the scatter's factor through its
  eigenvectors, so a singular scatter factors too."""
  cov_DxD = stats['scatter'] / _divisor(stats['n'], estimator)
  if cov_DxD.shape[0] == 1:
    return {'mean': stats['mean'], 'unit': jnp.ones((1, 1)),
            'log_scale': 0.5 * jnp.log(cov_DxD[0])}, {}
  lam_D, q_DxD = linalg.eigh(cov_DxD)
  return {'mean': stats['mean'], **_factor((q_DxD * jnp.sqrt(jnp.maximum(lam_D, 0.0))).T)}, {}


def covariance(params):
  """Sigma = U diag(e^2l) U^T (underflows with the scales; for checks and small runs)."""
  a_DxD = params['unit'] * jnp.exp(params['log_scale'])
  return _mm(a_DxD, a_DxD.T)


def sample(params, key, n):
  z_NxD = jax.random.normal(key, (n, params['mean'].shape[0]))
  if z_NxD.shape[1] == 1:  # elementwise, as summarise
    return params['mean'] + z_NxD * jnp.exp(params['log_scale'])
  return params['mean'] + _mm(z_NxD * jnp.exp(params['log_scale']), params['unit'].T)


def tempered(params, knobs):
  """The law the fit samples at temperature t: its spread times t (knobs: {'temperature': t})."""
  return {**params, 'log_scale': params['log_scale'] + jnp.log(knobs['temperature'])}


def known_spread(params, true_std: float):
  """The fit with its covariance replaced by the truth's, true_std^2 I: the mean alone fitted."""
  d = params['mean'].shape[0]
  return {'mean': params['mean'], 'unit': jnp.eye(d), 'log_scale': jnp.full(d, jnp.log(true_std))}


def refit(params, key, n, estimator: str):
  """The next generation's fit to n samples of `params`, made in its own coordinates from the
  law of those samples' statistics (draw_standard_fit): no rows drawn, exact in law."""
  local = draw_standard_fit(key, n, params['mean'].shape[0], estimator)
  return in_own_coordinates(params, local), {}


def in_own_coordinates(params, local):
  """The fit to samples mu + A z of `params`, given `local`, the fit to the z.

  The fit to z (mean m, factor C_z = V diag(e^c)) gives mu + A m and
  A C_z = U W diag(e^(l + c)), W = diag(e^l) V diag(e^-l) unit lower triangular
  with entries V_ij e^(l_i - l_j), i > j, which stay small: later columns shrink
  faster (Bartlett). Nothing is ever rounded at the fit's own scale.
  """
  d = params['mean'].shape[0]
  l_D, u_DxD = params['log_scale'], params['unit']
  if d == 1:
    mean_D = params['mean'] + jnp.exp(l_D) * local['mean']
    return {'mean': mean_D, 'unit': u_DxD, 'log_scale': l_D + local['log_scale']}
  mean_D = params['mean'] + _mm(u_DxD, jnp.exp(l_D) * local['mean'])
  alive_D = l_D > -jnp.inf
  both_DxD = alive_D[:, None] & alive_D[None] & (jnp.arange(d)[:, None] > jnp.arange(d))
  gap_DxD = jnp.where(both_DxD, l_D[:, None] - l_D[None], -jnp.inf)
  w_DxD = jnp.eye(d) + jnp.where(both_DxD, local['unit'] * jnp.exp(jnp.minimum(gap_DxD, 60.0)), 0.0)
  l_D = l_D + local['log_scale']
  unit_DxD = jnp.where(l_D > -jnp.inf, _mm(u_DxD, w_DxD), jnp.eye(d))
  return {'mean': mean_D, 'unit': unit_DxD, 'log_scale': l_D}


def _whitener(params):
  """v -> the coordinates z with v = U diag(e^l) z over the live columns (0 on dead ones)."""
  u_DxD, l_D = params['unit'], params['log_scale']
  alive_D = l_D > -jnp.inf
  inv_scale_D = jnp.where(alive_D, jnp.exp(-jnp.where(alive_D, l_D, 0.0)), 0.0)
  if l_D.shape[0] == 1:  # elementwise, as sample
    return lambda v_NxD: v_NxD * inv_scale_D
  return lambda v_NxD: inv_scale_D * jax.scipy.linalg.solve_triangular(
      u_DxD, v_NxD.T, lower=True, unit_diagonal=True).T


def _log_norm(params):
  l_D = params['log_scale']
  alive_D = l_D > -jnp.inf
  return -jnp.sum(jnp.where(alive_D, l_D, 0.0)) - 0.5 * jnp.sum(alive_D) * jnp.log(2 * jnp.pi)


def log_density(params, x_NxD):
  """log N(x; mu, Sigma) of each row. A collapsed fit's dead columns (scale -inf) are left
  out: the density is over the directions the fit still spans."""
  z_NxD = _whitener(params)(x_NxD - params['mean'])
  return -0.5 * jnp.sum(z_NxD**2, axis=1) + _log_norm(params)


def log_density_scores(params, x_NxD):
  """log_density as scores.Relative: the ranking of rows far narrower than the fit (or
  far from it, for generation 0's fit scoring a collapsed model) stays exact."""
  return scores.gaussian(x_NxD, params['mean'], _whitener(params), _log_norm(params))


def true_log_density(x_NxD, true_mean: float, true_std: float):
  d = x_NxD.shape[1]
  return (-0.5 * jnp.sum((x_NxD - true_mean) ** 2, axis=1) / true_std**2
          - d * jnp.log(true_std) - 0.5 * d * jnp.log(2 * jnp.pi))


def true_log_density_scores(x_NxD, true_mean: float, true_std: float):
  """true_log_density as scores.Relative."""
  d = x_NxD.shape[1]
  return scores.gaussian(x_NxD, jnp.full(d, true_mean, x_NxD.dtype), lambda v: v / true_std,
                         -d * jnp.log(true_std) - 0.5 * d * jnp.log(2 * jnp.pi))


# ---------------------------------------------------------------- statistics drawn, not rows
# n samples of N(0, I_d) have mean N(0, I/n) and, independent of it, a scatter matrix
# Wishart(n - 1, I) whose lower Cholesky factor T is Bartlett's: T_ii = sqrt(chi2_{n-i}),
# T_ij ~ N(0, 1) below the diagonal. With n - 1 < d only the first n - 1 columns live and
# the rest are dead, the fits' convention. About d min(n, d + 1) random numbers instead
# of n d, and no QR.

def _tries(a: float) -> int:
  """Marsaglia-Tsang candidates to draw at once for shapes >= a: two reject together about once
  in 3 million draws at a = 49.5 (chi2_99), four about once in 200,000 at a = 1 (worst)."""
  return 2 if a >= 10 else 4


def _uniforms(key, shape):
  """Uniforms in (-1, 1), from which jax.random.normal makes its normals."""
  low = np.nextafter(np.float32(-1), np.float32(0))
  return jax.random.uniform(key, shape, minval=low, maxval=1)


def _normals(w):
  return np.sqrt(2) * jax.lax.erf_inv(w)


def _log_gamma(w_KxD, loop_key, a_D):
  """log Gamma(a, 1) draws, exact: Marsaglia and Tsang's rejection sampler (ACM TOMS 2000),
  with a < 1 boosted (Gamma(a) = Gamma(a + 1) U^(1/a)), from K = 2 T + 1 rows of uniforms:
  T candidates at once, the first accepted kept. Lanes that reject all draw on from loop_key
  in a loop, rarely entered. (jax.random.gamma loops from the first candidate, a call for
  each number: a 1-D draw with it costs about twice as much CPU.)"""
  boost_D = a_D < 1
  d_D = jnp.where(boost_D, a_D + 1, a_D) - 1 / 3
  c_D = 1 / jnp.sqrt(9 * d_D)

  def candidates(w_2xTxD):
    """(accepted_TxD, log (Gamma / d)_TxD) of candidates, each a normal and a uniform."""
    x_TxD, log_u_TxD = _normals(w_2xTxD[0]), jnp.log((w_2xTxD[1] + 1) / 2)
    v_TxD = 1 + c_D * x_TxD
    log_v_TxD = 3 * jnp.log(jnp.where(v_TxD > 0, v_TxD, 1.0))
    ok_TxD = (v_TxD > 0) & (log_u_TxD < 0.5 * x_TxD**2 + d_D * (1 - jnp.exp(log_v_TxD) + log_v_TxD))
    return ok_TxD, log_v_TxD

  ok_TxD, log_v_TxD = candidates(w_KxD[:-1].reshape((2, -1) + d_D.shape))
  first_D = jnp.take_along_axis(log_v_TxD, jnp.argmax(ok_TxD, 0)[None], 0)[0]

  def draw_on(state):
    done_D, log_v_D, i = state
    ok_1xD, log_v_1xD = candidates(_uniforms(jax.random.fold_in(loop_key, i), (2, 1) + d_D.shape))
    return done_D | ok_1xD[0], jnp.where(done_D, log_v_D, log_v_1xD[0]), i + 1

  _, log_v_D, _ = jax.lax.while_loop(lambda state: ~jnp.all(state[0]), draw_on,
                                     (jnp.any(ok_TxD, 0), first_D, 0))
  log_boost_D = jnp.log((w_KxD[-1] + 1) / 2) / a_D  # log U / a, U in (0, 1)
  return jnp.log(d_D) + log_v_D + jnp.where(boost_D, log_boost_D, 0.0)


def draw_standard_statistics(key, n: int, d: int):
  """(mean_D, below_DxD, log_chi2_D) of n samples of N(0, I_d), drawn from their law: the
  mean, and the scatter's Bartlett factor T as its strictly lower part and log T_ii^2
  (-inf in dead columns). Random numbers only for the k = min(n - 1, d) live columns, in
  one call: they are a CPU's main cost here."""
  if n < 2:
    raise ValueError(f'a scatter needs two samples, got {n}')
  k = min(n - 1, d)
  df_K = n - 1 - np.arange(k)
  tries = _tries(df_K[-1] / 2)
  draw_key, loop_key = jax.random.split(key)
  # flat: a CPU vectorises the last axis, and a short one badly
  w_W = _uniforms(draw_key, (d * (k + 1) + (2 * tries + 1) * k,))
  z_DxE = _normals(w_W[:d * (k + 1)]).reshape(d, k + 1)
  below_DxK = jnp.where(np.tril(np.ones((d, k), bool), -1), z_DxE[:, 1:], 0.0)
  log_chi2_K = np.log(2.0) + _log_gamma(w_W[d * (k + 1):].reshape(-1, k), loop_key,
                                        jnp.asarray(df_K / 2, jnp.float32))
  return (z_DxE[:, 0] / np.sqrt(n), jnp.pad(below_DxK, ((0, 0), (0, d - k))),
          jnp.pad(log_chi2_K, (0, d - k), constant_values=-jnp.inf))


def draw_standard_fit(key, n: int, d: int, estimator: str):
  """The fit to n samples of N(0, I_d), drawn from its law without the samples."""
  mean_D, below_DxD, log_chi2_D = draw_standard_statistics(key, n, d)
  log_scale_D = 0.5 * (log_chi2_D - jnp.log(_divisor(n, estimator)))
  if d == 1:
    return {'mean': mean_D, 'unit': jnp.ones((1, 1)), 'log_scale': log_scale_D}
  inverse_D = jnp.exp(-0.5 * jnp.where(log_chi2_D > -jnp.inf, log_chi2_D, 0.0))  # 1 / T_jj
  unit_DxD = jnp.eye(d) + below_DxD * inverse_D
  return {'mean': mean_D, 'unit': unit_DxD, 'log_scale': log_scale_D}


def sample_summary(params, key, n: int):
  """The statistics (summarise's) of n samples of `params`, drawn from their law without
  the samples: mean mu + A zbar, scatter (A T)(A T)^T, T the Bartlett factor."""
  mean_D, below_DxD, log_chi2_D = draw_standard_statistics(key, n, params['mean'].shape[0])
  l_D = params['log_scale']
  if mean_D.shape[0] == 1:  # elementwise, as sample
    return {'n': jnp.float32(n), 'mean': params['mean'] + jnp.exp(l_D) * mean_D,
            'scatter': jnp.exp(2 * l_D + log_chi2_D)[None]}
  a_DxD = params['unit'] * jnp.exp(l_D)
  k = min(n - 1, mean_D.shape[0])  # the live columns of T
  t_DxK = (below_DxD + jnp.diag(jnp.exp(0.5 * log_chi2_D)))[:, :k]
  b_DxK = _mm(a_DxD, t_DxK)
  return {'n': jnp.float32(n), 'mean': params['mean'] + _mm(a_DxD, mean_D),
          'scatter': _mm(b_DxK, b_DxK.T)}


# ---------------------------------------------------------------- metrics

def mean_sq_distance(synth, true_mean: float):
  """sample_msd: the mean of |x - mu|^2 over the model's samples, given as rows x_NxD or as
  their statistics (sample_summary): |xbar - mu|^2 + tr(scatter) / n."""
  if isinstance(synth, dict):
    err_D = synth['mean'] - true_mean
    return err_D @ err_D + jnp.trace(synth['scatter']) / synth['n']
  return jnp.mean(jnp.sum((synth - true_mean) ** 2, axis=1))


def evaluate(params, synth, true_mean: float, true_std: float):
  """Distances of one fit from the truth N(true_mean, true_std^2 I), finite however far
  it has collapsed: logarithms of trace and (pseudo-)determinant, and the rank. synth:
  the model's samples, or their statistics (mean_sq_distance)."""
  mean_D, u_DxD, l_D = params['mean'], params['unit'], params['log_scale']
  d = mean_D.shape[0]
  err_D = mean_D - true_mean
  alive_D = l_D > -jnp.inf
  top = jnp.where(jnp.any(alive_D), jnp.max(l_D), 0.0)  # no live column: a point mass
  # trace = sum_j e^2l_j |U_:j|^2; tr Sigma^1/2 = the singular values of U diag(e^l), summed.
  log_trace = top * 2 + jnp.log(jnp.sum(jnp.exp(2 * (l_D - top)) * jnp.sum(u_DxD**2, 0)))
  if d == 1:
    root_D, log_pdet = jnp.exp(l_D), 2 * l_D[0]
  else:
    a_DxD = u_DxD * jnp.exp(l_D - top)
    root_D = jnp.exp(top) * linalg.svdvals(a_DxD)  # the square roots of Sigma's eigenvalues
    # pdet = e^(2 sum l) det(U_a^T U_a) over the live columns a (1 when all live), the
    # determinant through QR of U_a: a Gram matrix would square U's condition, which grows
    # while later columns' scales overtake earlier ones'.
    r_D = jnp.abs(jnp.diagonal(linalg.qr_r(jnp.where(alive_D, u_DxD, 0.0))))
    log_pdet = 2 * jnp.sum(jnp.where(alive_D, l_D + jnp.log(jnp.where(alive_D, r_D, 1.0)), 0.0))
  trace = jnp.exp(log_trace)
  sigma = jnp.exp(0.5 * (log_trace - jnp.log(d)))
  # W2^2 between Gaussians: |m - mu|^2 + tr(S + Sigma - 2 (Sigma^1/2 S Sigma^1/2)^1/2), and
  # Sigma = true_std^2 I makes the trace sum_i (sqrt(lambda_i) - true_std)^2 over S's
  # eigenvalues: summed so, with no difference of large terms, it is exact near the truth too.
  w2_sq = err_D @ err_D + jnp.sum((root_D - true_std) ** 2)
  return {'mean_error': jnp.sqrt(err_D @ err_D), 'sigma': sigma,
          'sigma_error': jnp.abs(sigma - true_std), 'trace': trace, 'log_trace': log_trace,
          'logdet': log_pdet, 'rank': jnp.sum(alive_D).astype(jnp.int32),
          'w2_sq': w2_sq,
          'sample_msd': mean_sq_distance(synth, true_mean)}


# ---------------------------------------------------------------- closed forms

def theory(regime: str, estimator: str, samples: int, dims: int, true_std: float,
           generations: int, temperature: float = 1.0) -> dict[str, np.ndarray]:
  """Expected values over seeds at generations 0..G, where a closed form exists.

  temperature t: each generation's model samples its successor's data with its spread times t,
  so every closed form of replace below holds with the scatter's factor r t^2 in place of r
  for the n - 1 fits that follow generation 0: E tr S_n = d sigma^2 r^n t^(2(n-1)), that is
  E sigma^2_g = (t^2 r)^g E sigma^2_0 with r = (M - 1)/M (mle) or 1 (unbiased); the mean's
  steps grow alike, E |m_n - mu|^2 = (d sigma^2 / M) sum_{j<n} (r t^2)^j, and
  E log det S_n gains (n - 1) d log t^2. Accumulate's law assumes t = 1 (NaN otherwise).

  Replace (n = g + 1 fits, k = M - 1 degrees of freedom, divisor v = M - 1
  unbiased or M mle, r = k / v): each fit's scatter is a Wishart(k) draw around
  the last fit's covariance, so (Bartlett)
    E tr S_n = d sigma^2 r^n;  E log det S_n = d log sigma^2 + n (sum_i psi((k-i+1)/2) + d log(2/v)),
    with variance n sum_i psi'((k-i+1)/2);
    E |m_n - mu|^2 = (d sigma^2 / M) sum_{j<n} r^j  (n d sigma^2 / M unbiased: the
    sample variance grows like sigma^2 (1 + n/M), the paper's supplement);
    d = 1: E s_n = sigma a^n with a = E sqrt(chi2_k / v), hence E (s_n - sigma)^2 and
    E W2^2 = E (m_n - mu)^2 + E (s_n - sigma)^2, which grows without bound for the
    unbiased estimator (Nature, Theorem 3.1) and tends to 2 sigma^2 for mle.
  Accumulate: with the variance known, the mean of n pooled generations errs by
    E |m_n - mu|^2 = (d sigma^2 / M) sum_{j<=n} 1/j^2 < (pi^2/6) d sigma^2 / M
    (Dey and Donoho 2024; Gerstgrasser et al. 2024); estimating the variance too
    changes it by O(1/M).
  Other regimes: no closed form (NaN).
  """
  n_G = np.arange(1, generations + 2, dtype=np.float64)
  nan = np.full_like(n_G, np.nan)
  var = true_std**2
  out = {k: nan for k in ('mean_error_rms', 'sigma_mean', 'sigma_error_rms', 'trace_mean',
                          'logdet_mean', 'logdet_sd', 'w2_sq_mean', 'sample_msd_mean')}
  if regime == 'accumulate':
    if temperature == 1.0:
      out['mean_error_rms'] = np.sqrt(dims * var / samples * np.cumsum(1.0 / n_G**2))
    return out
  if regime != 'replace':
    return out
  k = samples - 1.0
  v = k if estimator == 'unbiased' else float(samples)
  r = k / v
  t2 = temperature**2
  rt = r * t2  # the scatter's factor a generation after the first
  mean_sq = dims * var / samples * (n_G if rt == 1.0 else (1 - rt**n_G) / (1 - rt))
  trace = dims * var * r**n_G * t2 ** (n_G - 1)
  nu_d = k - np.arange(dims)  # Bartlett: det W = prod_i chi2_{k - i + 1}
  # the model's samples have the spread of the fit tempered for the next generation
  out.update(mean_error_rms=np.sqrt(mean_sq), trace_mean=trace,
             sample_msd_mean=mean_sq + trace * t2)
  if k >= dims:  # M <= d: a singular fit, whose pseudo-determinant has no closed form here
    out.update(logdet_mean=dims * np.log(var) + n_G * (special.digamma(nu_d / 2).sum()
                                                       + dims * np.log(2 / v))
               + (n_G - 1) * dims * np.log(t2),
               logdet_sd=np.sqrt(n_G * special.polygamma(1, nu_d / 2).sum()))
  if dims == 1:
    a = np.exp(0.5 * np.log(2 / v) + special.gammaln((k + 1) / 2) - special.gammaln(k / 2))
    at_G = a**n_G * temperature ** (n_G - 1)  # E s_n / sigma
    sigma_sq_err = var * (r**n_G * t2 ** (n_G - 1) - 2 * at_G + 1)
    out.update(sigma_mean=true_std * at_G, sigma_error_rms=np.sqrt(sigma_sq_err),
               w2_sq_mean=mean_sq + sigma_sq_err)
  return out


def weighted_mean_error(real_weight, real_fraction: float, samples: int, true_std: float,
                        generations: int) -> np.ndarray:
  """E (mu_g - mu)^2 at generations 0..G under `fresh` with the covariance known (--known_std),
  the real rows carrying a share w of the fit's weight (--real_weight; pooled: w = their share
  of the rows); `real_weight` one value, or a schedule w_1..w_G.

  Each generation fits n_r = round(f M) fresh real rows and n_s = M - n_r rows of the last fit,
  so mu_g - mu = w eta_g + (1 - w)(mu_{g-1} - mu + eps_g), eta ~ N(0, sigma^2 / n_r),
  eps ~ N(0, sigma^2 / n_s), generation 0 the mean of M real rows:
    V_g = w_g^2 sigma^2 / n_r + (1 - w_g)^2 (V_{g-1} + sigma^2 / n_s),  V_0 = sigma^2 / M.
  At a constant w its long run is sigma^2 (w^2 / n_r + (1 - w)^2 / n_s) / (w (2 - w)), which at
  f = 1/2 (n = M/2 of each) is n V / sigma^2 = (w^2 + (1 - w)^2) / (w (2 - w)) (golden_long_run),
  least at the golden ratio w = (sqrt 5 - 1) / 2 = 0.618, where it is 0.618 itself, against 2/3
  pooled and 1 for the real rows alone (He, Xu and Cheng 2025).
  """
  n_r = round(real_fraction * samples)
  n_s = samples - n_r
  var = true_std**2
  w_G = np.broadcast_to(np.asarray(real_weight, np.float64), (generations,))
  v_G1 = [var / samples]
  for w in w_G:
    v_G1.append((w**2 * var / n_r if n_r else 0.0)
                + ((1 - w) ** 2 * (v_G1[-1] + var / n_s) if n_s else 0.0))
  return np.asarray(v_G1)


def golden_long_run(real_weight):
  """n MSE / sigma^2 in the long run of weighted_mean_error at equal real and synthetic rows
  (of one weight or an array of them)."""
  w = real_weight
  return (w**2 + (1 - w) ** 2) / (w * (2 - w))


def tempered_errors(t_G1, samples: int, estimator: str = 'mle') -> dict[str, np.ndarray]:
  """E mean_error^2, E sigma_error^2 and E W2^2, over sigma^2, at g = 1..G of a 1-D Gaussian
  refitted (replace) to M samples of the last fit tempered by t_g, a temperature a generation
  (t_0..t_G; theory's laws at one temperature, as a schedule).

  The fit's spread is s_g = t_{g-1} s_{g-1} sqrt(chi2_{M-1} / v), v = M (mle) or M - 1, so
  E s_g^2 = r^{g+1} prod_{j<g} t_j^2 and E s_g = a^{g+1} prod_{j<g} t_j (r = (M - 1) / v,
  a = E sqrt(chi2_{M-1} / v)); the mean gains t_{g-1}^2 s_{g-1}^2 / M in variance a
  generation: E (m_g - mu)^2 = (1 + sum_{j<g} t_j^2 E s_j^2) / M.
  """
  t_G1 = np.asarray(t_G1, np.float64)
  m, k = float(samples), samples - 1.0
  v = m if estimator == 'mle' else k
  r = k / v
  a = math.exp(0.5 * math.log(2 / v) + math.lgamma((k + 1) / 2) - math.lgamma(k / 2))
  g_G1 = np.arange(len(t_G1), dtype=np.float64)
  p_G1 = np.concatenate([[1.0], np.cumprod(t_G1[:-1])])  # prod_{j<g} t_j
  s2_G1 = r ** (g_G1 + 1) * p_G1**2
  mean_G1 = (1 + np.concatenate([[0.0], np.cumsum(t_G1[:-1] ** 2 * s2_G1[:-1])])) / m
  sigma_G1 = s2_G1 - 2 * a ** (g_G1 + 1) * p_G1 + 1
  return {'mean_error': mean_G1[1:], 'sigma_error': sigma_G1[1:],
          'w2_sq': (mean_G1 + sigma_G1)[1:]}


def verified_moments(mean: float, var: float, keep: float, centre: float,
                     temperature: float = 1.0) -> tuple[float, float]:
  """(mean, variance) of N(mean, t^2 var) kept where a verifier centred at `centre` keeps the
  share `keep` of its candidates: the normal truncated to [c - h, c + h], h such that the
  interval holds `keep` of it (a verifier whose density falls with |x - c| keeps the nearest;
  its width does not change the ranking). With alpha, beta the interval's ends in standard
  units and Z = Phi(beta) - Phi(alpha) (Johnson, Kotz and Balakrishnan, Section 10.1):
    mean + s (phi(alpha) - phi(beta)) / Z,
    s^2 (1 + (alpha phi(alpha) - beta phi(beta)) / Z - ((phi(alpha) - phi(beta)) / Z)^2)."""
  from scipy import optimize  # noqa: PLC0415 (a closed form's root, off the compiled path)
  s = temperature * np.sqrt(var)
  u = (centre - mean) / s
  held = lambda h: special.ndtr(u + h) - special.ndtr(u - h) - keep  # noqa: E731
  h = optimize.brentq(held, 0.0, abs(u) + 40.0) if keep < 1 else np.inf
  alpha, beta = u - h, u + h
  z = special.ndtr(beta) - special.ndtr(alpha)
  phi = lambda x: np.exp(-x**2 / 2) / np.sqrt(2 * np.pi) if np.isfinite(x) else 0.0  # noqa: E731
  lam = (phi(alpha) - phi(beta)) / z
  edge = ((alpha * phi(alpha) if np.isfinite(alpha) else 0.0)
          - (beta * phi(beta) if np.isfinite(beta) else 0.0))
  return mean + s * lam, s**2 * (1 + edge / z - lam**2)


def verified_theory(samples: int, keep: float, centre: float, true_mean: float, true_std: float,
                    estimator: str, generations: int, temperature: float = 1.0):
  """(mean_G, variance_G) of the 1-D fit at generations 0..G under `verify` with a verifier
  centred at `centre` (--score=verifier: true_mean + verifier_shift), as M grows: the
  truncated-normal recursion of verified_moments from generation 0's fit (the truth, its
  variance times r), each fit's variance times r = (M - 1)/M (mle) or 1 (unbiased). The
  share kept is M / ceil(M / keep), as verify draws it."""
  r = (samples - 1) / samples if estimator == 'mle' else 1.0
  q = samples / math.ceil(samples / keep - 1e-6 * samples)
  mean_G, var_G = [float(true_mean)], [true_std**2 * r]
  for _ in range(generations):
    m, v = verified_moments(mean_G[-1], var_G[-1], q, centre, temperature)
    mean_G.append(m)
    var_G.append(v * r)
  return np.asarray(mean_G), np.asarray(var_G)


def verify_factor(keep: float) -> float:
  """c_q: the variance of N(0, 1) kept inside its central fraction q, the truncated normal's
  1 - 2 z phi(z) / (2 Phi(z) - 1), z = Phi^-1((1 + q) / 2) (Johnson, Kotz and Balakrishnan,
  Continuous Univariate Distributions, Vol. 1, Section 13.10).

  Under `verify` scored by the true density, a model centred on the truth keeps the central
  q of its candidates, so each generation multiplies the variance by c_q (with the
  estimator's factor, (M - 1)/M for mle): E sigma_n^2 ~ sigma^2 (r c_q)^g r for large M,
  r the estimator's factor, q the share kept, M / ceil(M / keep_fraction).
  """
  if keep >= 1:
    return 1.0
  z = special.ndtri((1 + keep) / 2)
  phi = np.exp(-z**2 / 2) / np.sqrt(2 * np.pi)
  return float(1 - 2 * z * phi / (2 * special.ndtr(z) - 1))


def curate_limit(mean: float, var: float, scale: float, target: float) -> tuple[float, float]:
  """(mean, variance) of N(mean, var) tilted by exp(scale * r), r = -(x - c)^2: `curate`'s
  step as its candidates K -> infinity (Ferbach et al. 2024: p_{t+1} proportional to
  p_t e^{beta r}). The tilt adds 2 scale to the precision and pulls the mean to c."""
  precision = 1 / var + 2 * scale
  return (mean / var + 2 * scale * target) / precision, 1 / precision


def augment_mean_error(samples: int, ratio: float, true_std: float, generations: int):
  """E (mu_g - mu)^2 in one dimension under `augment`: the M original samples and
  round(ratio M) = lam M samples of the last fit, fitted together.

  The fit's mean is mu_g = (xbar_0 + lam ybar_g) / (1 + lam), ybar_g ~ N(mu_{g-1},
  s^2 / (lam M)), so e_g = mu_g - xbar_0 follows the linear recursion e_g = a (e_{g-1} + eps_g),
  a = lam / (1 + lam), e_0 = 0: Var e_g = a^2 s^2 / (lam M) (1 - a^2g) / (1 - a^2), and with
  s = sigma (the variance stays near it: real data hold it)
    E (mu_g - mu)^2 = sigma^2 / M (1 + lam / (1 + 2 lam) (1 - a^2g)),
  bounded by 1.5 sigma^2 / M for every lam, where replace's grows like g sigma^2 / M
  (Bertrand et al. 2024 prove stability for small enough lam in general).
  """
  g_G = np.arange(generations + 1, dtype=np.float64)
  lam = round(ratio * samples) / samples
  if lam == 0:
    return np.full_like(g_G, true_std**2 / samples)
  a = lam / (1 + lam)
  return true_std**2 / samples * (1 + lam / (1 + 2 * lam) * (1 - a ** (2 * g_G)))


# ---------------------------------------------------------------- the experiment

@dataclasses.dataclass(frozen=True)
class GaussianConfig(experiment.SweepConfig):
  """The Gaussian experiment; defaults are the paper's (Section 3, its figure of a
  1-D Gaussian refitted with M samples) as its released figure code runs it (the
  maximum-likelihood estimator), with accumulate beside replace."""
  seeds: int = 1000
  generations: int = 1000
  samples: tuple[int, ...] = setting((100, 500, 1000, 10000), 'Comma-separated sample sizes M: '
                                     'each generation fits M samples.')
  dims: int = setting(1, 'Dimension of the Gaussian.')
  estimator: str = setting('mle', 'Covariance divisor: mle (M, as the released figure code, '
                           "np.std) or unbiased (M - 1, the paper's Theorem 3.1).",
                           choices=ESTIMATORS)
  regimes: tuple[str, ...] = ('replace', 'accumulate')
  true_mean: float = setting(0.0, 'Mean of the true distribution, in every dimension.')
  true_std: float = setting(1.0, 'Standard deviation of the true distribution.')
  known_std: bool = setting(False, "Fit the mean alone, the covariance known (the truth's, "
                           'true_std^2 I): the setting of the weighted-mixing law (real_weight).',
                           recorded='changed')
  reward_target: float = setting(1.0, '--score=reward: the reward is -|x - c|^2 for c this '
                                 'value in every dimension.')
  checkpoint_every: int = 250
  per_seed_csv: bool = experiment.per_seed_csv()

  def validate(self) -> 'GaussianConfig':
    if self.dims < 1:
      raise validation.ConfigError('dims', f'must be at least 1, got {self.dims}')
    self.validate_sweep(min_samples=2)  # a spread needs two
    validation.check_choice('estimator', self.estimator, ESTIMATORS)
    validation.check_fields(self, [('true_std', self.true_std > 0, 'must be positive')])
    validation.validate_options(self, family(self))
    return self


SMALL = dict(seeds=200, generations=100, samples=(10, 100), checkpoint_every=50)
PRESETS = {
    'paper': {}, 'small': SMALL,
    # sampling bias: each generation samples its successor's data at temperature t
    'sampling': {**SMALL, 'temperatures': (0.9, 0.95, 1.0, 1.05, 1.1)},
    # weighted real data (the golden-ratio law): fresh real rows, half of each generation
    'weights': {**SMALL, 'samples': (20,), 'seeds': 2000, 'regimes': ('fresh', 'mix'),
                'real_fractions': (0.5,), 'known_std': True,
                'real_weights': (0.3, 0.5, 0.618, 0.8, 1.0)},
    # a biased verifier: verify keeps the half of the candidates nearest its centre, curate
    # picks one of 4 with probability proportional to the verifier's density
    'verifier': {**SMALL, 'samples': (1000,), 'generations': 20, 'regimes': ('verify', 'curate'),
                 'verifier_shifts': (0.0, 0.5, 1.0), 'verifier_scales': (0.5, 1.0, 2.0)},
}


def family(cfg: GaussianConfig) -> protocol.Family:
  """The Gaussian as a driver family: sufficient statistics for accumulate, under replace a
  refit in the last generation's own coordinates, and both (and the metrics) drawn as the
  statistics of samples rather than the samples where no regime needs the rows."""
  known = (lambda out: (known_spread(out[0], cfg.true_std), out[1])) if cfg.known_std else (
      lambda out: out)
  fit_stats = lambda stats, key: known(fit_summary(stats, cfg.estimator))
  return protocol.Family(
      draw_real=lambda key, n: cfg.true_mean + cfg.true_std * jax.random.normal(key, (n, cfg.dims)),
      fit=lambda x_NxD, w_N, key: known(fit(x_NxD, w_N, cfg.estimator)),
      sample=sample,
      reference=lambda params0, key: {},
      evaluate=lambda params, synth, ref: evaluate(params, synth, cfg.true_mean, cfg.true_std),
      summary=protocol.Summary(summarise, combine, fit_stats),
      refit=lambda params, key, n: known(refit(params, key, n, cfg.estimator)),
      sample_summary=sample_summary,
      unbounded_below=('log_trace', 'logdet'),
      log_density=log_density_scores,
      true_log_density=lambda x_NxD: true_log_density_scores(x_NxD, cfg.true_mean, cfg.true_std),
      reward=lambda x_NxD: scores.squared_distance(
          x_NxD, jnp.full(cfg.dims, cfg.reward_target, x_NxD.dtype)),
      biased=tempered, sampling_knobs=('temperature',),
      verifier=lambda x_NxD, shift, scale: true_log_density_scores(
          x_NxD, cfg.true_mean + shift, cfg.true_std * scale))


ERRORS = ('mean_error', 'sigma_error')  # their root mean square is what theory gives
SUMMARY_COLUMNS = ('mean_error', 'sigma', 'logdet', 'w2_sq')


def closed_forms(cfg: GaussianConfig):
  """The closed forms beside each sweep's statistics over seeds, as curves' columns."""
  def closed_form(sweep, fraction):
    knob = lambda name: knobs.value(sweep.group_knobs(), name)  # noqa: E731
    out = theory(sweep.regime, cfg.estimator, sweep.samples, cfg.dims, cfg.true_std,
                 sweep.generations, knob('temperature'))
    weighted = 'real_weight' in dict(sweep.knobs) and knob('temperature') == 1.0
    if sweep.regime == 'fresh' and cfg.known_std and cfg.dims == 1 and weighted:
      out['mean_error_rms'] = np.sqrt(weighted_mean_error(
          knob('real_weight'), fraction, sweep.samples, cfg.true_std, sweep.generations))
    if sweep.regime == 'verify' and sweep.score == 'verifier' and cfg.dims == 1:
      mean_G, var_G = verified_theory(
          sweep.samples, fraction, cfg.true_mean + knob('verifier_shift'), cfg.true_mean,
          cfg.true_std, cfg.estimator, sweep.generations, knob('temperature'))
      out['mean_error_rms'] = np.abs(mean_G - cfg.true_mean)  # the large-M limit: no spread
      out['sigma_mean'] = np.sqrt(var_G)
    return {f'{k}_theory': v for k, v in out.items()}
  return closed_form


def figures(cfg: GaussianConfig, out: experiment.Outcome) -> None:
  """panels.png and w2.png (statistics over seeds beside the closed forms), tradeoff.png."""
  curves = out.curves
  second = ('sigma_error_rms', 'RMS |sigma_n - sigma|') if cfg.dims == 1 else (
      'logdet_mean', 'mean log det Sigma_n')
  title = f'{cfg.dims}-D Gaussian refitted on M of its own samples ({cfg.estimator}), {cfg.seeds} seeds'
  plots.theory_panels(curves, [('mean_error_rms', 'RMS |mu_n - mu|'), second],
                      out.path('panels.png'), title)
  w2 = ('w2_sq_mean', 'mean W2^2 to the original') if cfg.dims == 1 else (
      'trace_mean', 'mean trace Sigma_n')
  plots.theory_panels(curves, [w2], out.path('w2.png'), title)
  plots.scores_against(curves, ('sigma', 'sigma of the fit') if cfg.dims == 1 else
                       ('log_trace', 'log trace of the covariance'), out.path('tradeoff.png'), title)


def run(cfg: GaussianConfig, workdir: str, progress: bool = True, log=print):
  """Runs, resumes or reloads the Gaussian experiment in `workdir`; returns the curves.

  Leaves there: config.json, checkpoints/<regime>/M<samples>/, curves.csv (one
  row per generation x regime x M x real fraction: statistics over seeds beside
  the closed forms), metrics.csv with --per_seed_csv (one row per seed too),
  panels.png, w2.png, tradeoff.png and summary.txt.
  """
  exp = experiment.Experiment(
      'gaussian', lambda: family(cfg), SUMMARY_COLUMNS, generations=(1, 10, 100, 1000),
      rms=ERRORS, closed_form=closed_forms(cfg), curves_csv=True, knob_metric='w2_sq',
      figures=functools.partial(figures, cfg))
  return experiment.run_experiment(exp, cfg, workdir, progress, log).curves
