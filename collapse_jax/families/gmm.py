"""Gaussian mixtures fitted by EM, written for one run and batched with vmap.

Shapes in names: N samples, K components, D dimensions, T k-means++ trials.
The fit follows scikit-learn's `GaussianMixture(covariance_type='full')`:
k-means (k-means++ seeding, Lloyd iterations) for the initial responsibilities,
then EM until the mean log-likelihood changes by less than `tol`.
Every function takes per-sample weights `w_N` (1 for data, 0 for padding), so
pools of growing size fit in one fixed-shape program.
"""

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from collapse_jax.core import experiment, plots, protocol, scores, validation
from collapse_jax.core.settings import setting

_LOG_2PI = math.log(2 * math.pi)
# The precision of every matmul that decides a fit or a sample: float32 products and sums on
# every backend. A TPU's default is one bfloat16 pass, which would change convergence,
# iteration counts and results from those the CPU tests check; on a CPU it changes nothing.
_EXACT = jax.lax.Precision.HIGHEST


def _mm(a, b):
  """a @ b in float32 on every backend (_EXACT)."""
  return jnp.matmul(a, b, precision=_EXACT)


class Mixture(NamedTuple):
  """A Gaussian mixture: weights_K, means_KxD, covs_KxDxD."""
  weights: jax.Array
  means: jax.Array
  covs: jax.Array


@dataclasses.dataclass(frozen=True)
class EMConfig:
  """The fitting protocol; defaults are the paper's (scikit-learn's, tol 1e-5)."""
  components: int = 2
  tol: float = 1e-5
  max_iter: int = 2000
  reg_covar: float = 1e-6
  kmeans_max_iter: int = 300
  kmeans_tol: float = 1e-4


# ---------------------------------------------------------------- densities

def _precision_cholesky(covs_KxDxD):
  """Upper factor P with P P^T = inverse covariance, as scikit-learn keeps it."""
  chol = jnp.linalg.cholesky(covs_KxDxD)
  eye = jnp.broadcast_to(jnp.eye(covs_KxDxD.shape[-1]), covs_KxDxD.shape)
  return jnp.swapaxes(jax.scipy.linalg.solve_triangular(chol, eye, lower=True), -1, -2)


def component_log_prob(mix: Mixture, x_NxD):
  """log w_k + log N(x_n; mu_k, Sigma_k) for every sample and component, NxK."""
  prec_KxDxD = _precision_cholesky(mix.covs)
  diff_KxDxN = x_NxD.T[None] - mix.means[..., None]  # samples on the minor axis
  y_KxDxN = jnp.sum(prec_KxDxD[..., None] * diff_KxDxN[:, :, None], axis=1)
  log_det_K = jnp.sum(jnp.log(jnp.diagonal(prec_KxDxD, axis1=1, axis2=2)), -1)
  d = x_NxD.shape[-1]
  log_gauss_KxN = -0.5 * (d * _LOG_2PI + jnp.sum(y_KxDxN**2, 1)) + log_det_K[:, None]
  return log_gauss_KxN.T + jnp.log(mix.weights)


def log_prob(mix: Mixture, x_NxD):
  """Mixture log-density at each sample, N."""
  return jax.nn.logsumexp(component_log_prob(mix, x_NxD), axis=-1)


def _whitener(p_DxD):
  """v -> P^T v of each row, one dimension at a time (elementwise: exact in float32 on every
  backend, where a matmul's default precision may not be)."""
  return lambda v_NxD: sum(v_NxD[:, i, None] * p_DxD[i] for i in range(p_DxD.shape[0]))


def log_prob_scores(mix: Mixture, x_NxD):
  """log_prob as scores.Relative: the ranking of rows far narrower than the mixture (a
  collapsed model's candidates, scored by the truth or generation 0) stays exact."""
  c_D = scores.centre(x_NxD)
  gap = lambda p_DxD, m_D: scores.quadratic_gap(_whitener(p_DxD), x_NxD, c_D, m_D)
  dq_KxN = jax.vmap(gap)(_precision_cholesky(mix.covs), mix.means)
  return scores.mixture_gap(component_log_prob(mix, c_D[None])[0], dq_KxN.T)


def draw_index(key, p_N, shape=()):
  """Indices drawn with probability proportional to p_N, by inverting the CDF.

  One uniform per draw (a Gumbel draw would need N), which matters in a loop
  that runs millions of times.
  """
  cdf_N = jnp.cumsum(p_N)
  u = jax.random.uniform(key, shape) * cdf_N[-1]
  method = 'compare_all' if p_N.shape[0] <= 16 else 'scan'
  return jnp.minimum(jnp.searchsorted(cdf_N, u, side='right', method=method), p_N.shape[0] - 1)


def sample(mix: Mixture, key, n: int):
  """n samples from the mixture, NxD."""
  comp_key, noise_key = jax.random.split(key)
  z_N = draw_index(comp_key, mix.weights, (n,))
  eps_DxN = jax.random.normal(noise_key, (mix.means.shape[-1], n))
  chol_KxDxD = jnp.linalg.cholesky(mix.covs)
  # Every component transforms the noise and each sample keeps its own (K is small).
  k, d = mix.means.shape
  y_KxDxN = mix.means[..., None] + _mm(chol_KxDxD.reshape(k * d, d), eps_DxN).reshape(k, d, n)
  x_DxN = y_KxDxN[0]
  for c in range(1, k):
    x_DxN = jnp.where(z_N == c, y_KxDxN[c], x_DxN)
  return x_DxN.T


def tempered(mix: Mixture, knobs) -> Mixture:
  """The law the fit samples at temperature t (knobs: {'temperature': t}): every component's
  noise times t, its covariance times t^2; weights and means unchanged."""
  return mix._replace(covs=mix.covs * knobs['temperature'] ** 2)


def moved(mix: Mixture, shift, scale) -> Mixture:
  """The law of c + scale (X - c) + shift for X ~ mix, c the mixture's mean: every mean
  moved so, every covariance times scale^2 (a biased verifier's truth)."""
  c_D = _mm(mix.weights, mix.means)
  return Mixture(mix.weights, c_D + scale * (mix.means - c_D) + shift, mix.covs * scale**2)


# ---------------------------------------------------------------- features
# With features f = [1, x_d, x_d x_e (d <= e)] (F of them) of centred data, a
# Gaussian's log-density is a linear function of f and every statistic EM and
# k-means need is a moment r @ f^T: each iteration is two small matmuls, which
# is what makes thousands of fits a second possible.

def features(xc_NxD):
  """Features of centred samples, FxN with F = 1 + D + D(D+1)/2."""
  d = xc_NxD.shape[-1]
  i, j = np.triu_indices(d)
  x_DxN = xc_NxD.T
  return jnp.concatenate([jnp.ones_like(x_DxN[:1]), x_DxN, x_DxN[i] * x_DxN[j]])


def _log_density_coefs(mix: Mixture):
  """Coefficients A_KxF with A @ f = log w_k + log N(x; mu_k, Sigma_k)."""
  d = mix.means.shape[-1]
  i, j = np.triu_indices(d)
  prec_KxDxD = _precision_cholesky(mix.covs)
  lam_KxDxD = _mm(prec_KxDxD, jnp.swapaxes(prec_KxDxD, -1, -2))
  lam_mu_KxD = jnp.sum(lam_KxDxD * mix.means[:, None], -1)
  log_det_K = jnp.sum(jnp.log(jnp.diagonal(prec_KxDxD, axis1=1, axis2=2)), -1)
  const_K = (jnp.log(mix.weights) + log_det_K - 0.5 * d * _LOG_2PI
             - 0.5 * jnp.sum(lam_mu_KxD * mix.means, -1))
  quad_KxP = jnp.where(i == j, -0.5, -1.0) * lam_KxDxD[:, i, j]
  return jnp.concatenate([const_K[:, None], lam_mu_KxD, quad_KxP], -1)


def _from_moments(m_KxF, d: int, reg_covar: float) -> Mixture:
  """Maximum-likelihood mixture from weighted moments sum_n r_nk f_n."""
  i, j = np.triu_indices(d)
  n_K = m_KxF[:, 0] + 10 * jnp.finfo(m_KxF.dtype).eps
  means_KxD = m_KxF[:, 1:1 + d] / n_K[:, None]
  second_KxDxD = jnp.zeros((m_KxF.shape[0], d, d), m_KxF.dtype)
  second_KxDxD = second_KxDxD.at[:, i, j].set(m_KxF[:, 1 + d:]).at[:, j, i].set(m_KxF[:, 1 + d:])
  covs_KxDxD = (second_KxDxD / n_K[:, None, None] - means_KxD[:, :, None] * means_KxD[:, None]
                + reg_covar * jnp.eye(d))
  # A component with almost no data, or narrower than float32 resolves at its
  # distance from the data's centre, can round to a matrix that is not positive
  # definite; it keeps its (floored) variances and loses its correlations.
  pd_K = jnp.all(jnp.isfinite(jnp.linalg.cholesky(covs_KxDxD)), axis=(-2, -1))
  var_KxD = jnp.maximum(jnp.diagonal(covs_KxDxD, axis1=-2, axis2=-1), reg_covar)
  covs_KxDxD = jnp.where(pd_K[:, None, None], covs_KxDxD, var_KxD[..., None] * jnp.eye(d))
  return Mixture(n_K / jnp.sum(n_K), means_KxD, covs_KxDxD)


# ---------------------------------------------------------------- k-means init

def _columns(x_DxN, idx_T):
  """x_DxN[:, idx_T], DxT. On accelerators a masked sum (exact: one term is not zero) in
  place of a gather, which a TPU lays out with D minor, padding the samples 64x at D = 2;
  CPUs keep the gather (the sum changes XLA's fusions and so the last bits elsewhere)."""
  def masked(x_DxN, idx_T):
    hit_TxN = jnp.arange(x_DxN.shape[-1]) == idx_T[:, None]
    return jnp.sum(jnp.where(hit_TxN, x_DxN[:, None], 0.0), -1)
  return jax.lax.platform_dependent(x_DxN, idx_T, cpu=lambda x, i: x[:, i], default=masked)


def kmeans_plus_plus(x_DxN, w_N, key, k: int):
  """Greedy k-means++ seeding (2 + log k candidates per centre), KxD; samples DxN, their
  dimensions first (as TPU tiles want them)."""
  trials = 2 + int(math.log(k))
  first_key, *keys = jax.random.split(key, k)
  first_D = _columns(x_DxN, draw_index(first_key, w_N)[None])[:, 0]
  centres_KxD = jnp.broadcast_to(first_D, (k, x_DxN.shape[0]))
  d2_N = jnp.sum((x_DxN - first_D[:, None]) ** 2, 0)
  for c, trial_key in enumerate(keys, start=1):
    # Candidates drawn with probability proportional to weight x squared distance;
    # the tiny floor keeps a fully collapsed pool drawable.
    cand_DxT = _columns(x_DxN, draw_index(trial_key, w_N * (d2_N + 1e-30), (trials,)))
    d2_TxN = jnp.minimum(d2_N, jnp.sum((cand_DxT[:, :, None] - x_DxN[:, None]) ** 2, 0))
    best = jnp.argmin(jnp.sum(w_N * d2_TxN, -1))
    centres_KxD = centres_KxD.at[c].set(_columns(cand_DxT, best[None])[:, 0])
    d2_N = d2_TxN[best]
  return centres_KxD


def _nearest_onehot_KxN(f_FxN, centres_KxD):
  """One-hot nearest-centre assignment; |x - c|^2 - |x|^2 is linear in f."""
  d = centres_KxD.shape[-1]
  coef_KxF = jnp.concatenate([jnp.sum(centres_KxD**2, -1, keepdims=True), -2 * centres_KxD], -1)
  label_N = jnp.argmin(_mm(coef_KxF, f_FxN[:1 + d]), 0)
  return jax.nn.one_hot(label_N, centres_KxD.shape[0], axis=0, dtype=f_FxN.dtype)


def lloyd_step(centres_KxD, f_FxN, w_N):
  """One Lloyd iteration: each centre moves to the weighted mean of its nearest samples."""
  d = centres_KxD.shape[-1]
  m_KxF = _mm(_nearest_onehot_KxN(f_FxN, centres_KxD) * w_N, f_FxN[:1 + d].T)
  count_K = m_KxF[:, :1]
  return jnp.where(count_K > 0, m_KxF[:, 1:] / jnp.maximum(count_K, 1e-30),
                   centres_KxD)  # an empty cluster keeps its centre


def lloyd_step_fused(centres_KxD, f_FxN, w_N):
  """lloyd_step as one pass over each run's coordinates, for accelerators: elementwise
  distances and one variadic reduction (float32 throughout, ties to the first centre as
  argmin breaks them); agrees with lloyd_step to float32 rounding of the distances."""
  k, d = centres_KxD.shape
  x = [f_FxN[1 + e] for e in range(d)]
  dist = [jnp.sum(centres_KxD[c] ** 2) - 2 * sum(centres_KxD[c, e] * x[e] for e in range(d))
          for c in range(k)]
  best_N, low_N = jnp.zeros(x[0].shape, jnp.int32), dist[0]
  for c in range(1, k):
    best_N, low_N = jnp.where(dist[c] < low_N, c, best_N), jnp.minimum(dist[c], low_N)
  mine = [jnp.where(best_N == c, w_N, 0.0) for c in range(k)]
  terms = [mine[c] * row for c in range(k) for row in [jnp.ones_like(x[0])] + x]
  zero = jnp.zeros((), f_FxN.dtype)
  sums = jax.lax.reduce(tuple(terms), (zero,) * len(terms),
                        lambda a, b: tuple(u + v for u, v in zip(a, b)), (x[0].ndim - 1,))
  m_KxF = jnp.stack(sums).reshape(k, 1 + d)
  count_K = m_KxF[:, :1]
  return jnp.where(count_K > 0, m_KxF[:, 1:] / jnp.maximum(count_K, 1e-30), centres_KxD)


def kmeans_onehot(xc_NxD, f_FxN, w_N, key, cfg: EMConfig, fused: bool | str | None = None):
  """Lloyd iterations from k-means++ until centres move less than tol.

  Returns the one-hot assignment KxN and the number of iterations. fused: which Lloyd
  step (as em() chooses its step).
  """
  d = xc_NxD.shape[-1]
  w_sum = jnp.sum(w_N)
  tol = cfg.kmeans_tol * jnp.mean(_mm(w_N, (xc_NxD - _mm(w_N, xc_NxD) / w_sum) ** 2) / w_sum)

  def step(state, data):
    centres_KxD, it, _, tol = state
    if fused is None:
      new_KxD = jax.lax.platform_dependent(centres_KxD, *data, cpu=lloyd_step,
                                           default=lloyd_step_fused)
    else:
      new_KxD = (lloyd_step_fused if fused else lloyd_step)(centres_KxD, *data)
    return new_KxD, it + 1, jnp.sum((new_KxD - centres_KxD) ** 2), tol

  def moving(state):
    _, it, shift, tol = state
    return (it < cfg.kmeans_max_iter) & (shift > tol)

  centres_KxD = kmeans_plus_plus(f_FxN[1:1 + d], w_N, key, cfg.components)
  init = (centres_KxD, jnp.array(0), jnp.array(jnp.inf, f_FxN.dtype), tol)
  centres_KxD, iters, _, _ = iterate(step, moving, init, (f_FxN, w_N))
  return _nearest_onehot_KxN(f_FxN, centres_KxD), iters


# ---------------------------------------------------------------- EM

def em_step(mix: Mixture, f_FxN, w_N, reg_covar: float):
  """One E and M step on centred features; returns the new mixture and the
  weighted mean log-likelihood of the old one (scikit-learn's lower bound)."""
  log_prob_KxN = _mm(_log_density_coefs(mix), f_FxN)
  top_N = jnp.max(log_prob_KxN, 0)
  p_KxN = jnp.exp(log_prob_KxN - top_N)  # K exponentials and one log per sample
  norm_N = jnp.sum(p_KxN, 0)
  bound = jnp.sum(w_N * (top_N + jnp.log(norm_N))) / jnp.sum(w_N)
  resp_KxN = p_KxN * (w_N / norm_N)
  return _from_moments(_mm(resp_KxN, f_FxN.T), mix.means.shape[-1], reg_covar), bound


def em_step_fused(mix: Mixture, f_FxN, w_N, reg_covar: float):
  """em_step as one pass over each run's data, for accelerators.

  The K x F moments, the bound and the weights' sum are one reduction over N of
  elementwise float32 terms (no matmul, so no precision to choose), which XLA fuses into
  a single read of f_FxN; the matmul form reads it twice and the KxN responsibilities
  once more. The sums run in another order than em_step's, so results agree with it to
  float32 rounding, not bit for bit: CPUs keep em_step.
  """
  a_KxF = _log_density_coefs(mix)
  k, f = a_KxF.shape
  d = mix.means.shape[-1]
  i, j = np.triu_indices(d)
  x = [f_FxN[1 + e] for e in range(d)]  # only the coordinates are read: the rest is products
  rows = [jnp.ones_like(x[0])] + x + [x[a] * x[b] for a, b in zip(i, j)]
  logp = [a_KxF[c, 0] + sum(a_KxF[c, m] * rows[m] for m in range(1, f)) for c in range(k)]
  top_N = functools.reduce(jnp.maximum, logp)
  p = [jnp.exp(lp - top_N) for lp in logp]
  norm_N = sum(p)
  r = [pc * (w_N / norm_N) for pc in p]
  terms = [r[c] * rows[m] for c in range(k) for m in range(f)]
  terms += [w_N * (top_N + jnp.log(norm_N)), w_N]
  # One variadic reduction: every sum reads the same sample n at once, so the shared
  # terms are computed once per sample in one kernel (a stack of sums would be one
  # reduction whose rows recompute them, which XLA avoids by writing them out).
  zero = jnp.zeros((), f_FxN.dtype)
  sums = jax.lax.reduce(tuple(terms), (zero,) * len(terms),
                        lambda a, b: tuple(u + v for u, v in zip(a, b)), (terms[0].ndim - 1,))
  bound = sums[-2] / sums[-1]
  return _from_moments(jnp.stack(sums[:k * f]).reshape(k, f), d, reg_covar), bound


def _em_sums_kernel(n: int, k: int, a_ref, *refs):
  """em_step_fused's sums for one run, in one pass: each sample is read once, from registers
  on; the block is N rounded up to a power of two, the samples past N masked out.
  refs: each coordinate's row, the weights, then the sums."""
  *x_refs, w_ref, out_ref = refs
  d, block = len(x_refs), w_ref.shape[0]
  valid = jax.lax.broadcasted_iota(jnp.int32, (block,), 0) < n
  x = [pl_triton.load(x_ref, mask=valid, other=0.0) for x_ref in x_refs]
  w = pl_triton.load(w_ref, mask=valid, other=0.0)
  i, j = np.triu_indices(d)
  rows = [None] + x + [x[a] * x[b] for a, b in zip(i, j)]
  f = len(rows)
  logp = [a_ref[c * f] + sum(a_ref[c * f + m] * rows[m] for m in range(1, f)) for c in range(k)]
  top = functools.reduce(jnp.maximum, logp)
  p = [jnp.exp(lp - top) for lp in logp]
  norm = sum(p)
  scale = w / norm
  for c in range(k):
    r = p[c] * scale
    out_ref[c * f] = jnp.sum(r)
    for m in range(1, f):
      out_ref[c * f + m] = jnp.sum(r * rows[m])
  out_ref[k * f] = jnp.sum(w * (top + jnp.log(norm)))
  out_ref[k * f + 1] = jnp.sum(w)


def em_step_triton(mix: Mixture, x_DxN, w_N, reg_covar: float, interpret: bool = False):
  """em_step_fused as one Pallas (Triton) kernel a run, for NVIDIA GPUs: XLA splits the fused
  step in two kernels (the responsibilities written out and read back, about 65 KB a
  run-iteration at N = 1,000); this one reads the coordinates and weights once (12 KB).
  Takes the D coordinate rows of the centred data. Same sums as em_step_fused, in another
  order: equal to float32 rounding. interpret: run the kernel as plain JAX (any backend)."""
  a_KxF = _log_density_coefs(mix)
  k, f = a_KxF.shape
  d, n = x_DxN.shape
  coefs = 1 << (k * f - 1).bit_length()  # Triton's blocks are powers of two
  sums = 1 << (k * f + 1).bit_length()
  block = 1 << (n - 1).bit_length()
  a_C = jnp.zeros(coefs, a_KxF.dtype).at[:k * f].set(a_KxF.reshape(-1))
  out = pl.pallas_call(
      functools.partial(_em_sums_kernel, n, k),
      out_shape=jax.ShapeDtypeStruct((sums,), x_DxN.dtype),
      in_specs=[pl.BlockSpec((coefs,), lambda: (0,))]
      + [pl.BlockSpec((None, block), functools.partial(lambda e: (e, 0), e)) for e in range(d)]
      + [pl.BlockSpec((block,), lambda: (0,))],
      out_specs=pl.BlockSpec((sums,), lambda: (0,)),
      interpret=interpret)(a_C, *[x_DxN] * d, w_N)
  bound = out[k * f] / out[k * f + 1]
  return _from_moments(out[:k * f].reshape(k, f), d, reg_covar), bound


# Under vmap, EM and k-means iterate in rounds: a round runs a batch of runs until at most the next
# round's size still iterate, which then continue alone. Sizes shrink by ROUND_SHRINK down
# to ROUND_MIN, so the work is about proportional to each run's own iterations instead of
# every run iterating as long as the batch's slowest. Smaller batches iterate as one.
ROUND_SHRINK, ROUND_MIN = 2, 256


def round_sizes(batch: int) -> tuple[int, ...]:
  """The batch sizes of EM's rounds for a vmapped batch of `batch` runs."""
  sizes = [batch]
  while sizes[-1] // ROUND_SHRINK >= ROUND_MIN:
    sizes.append(sizes[-1] // ROUND_SHRINK)
  return tuple(sizes)


def round_work(iters_B) -> int:
  """Run-iterations the rounds compute for runs that need iters_B iterations each (each
  round's batch steps together; a vmapped while_loop alone would compute B x max)."""
  left_B, work, it = np.sort(np.asarray(iters_B))[::-1], 0, 0
  sizes = round_sizes(len(left_B))
  for m, after in zip(sizes, sizes[1:] + (0,)):
    stop = left_B[after] if after else left_B[0]  # the round ends when `after` remain
    work += m * max(int(stop) - it, 0)
    it = max(it, int(stop))
  return work


def _take(tree, idx):
  return jax.tree.map(lambda v: v[idx], tree)


def _rounds(step, running, state_B, data_B):
  """step(state, data) -> state for every run while running(state), in rounds (above)."""
  sizes = round_sizes(running(state_B).shape[0])
  for m, after in zip(sizes, sizes[1:] + (0,)):
    idx_M = jnp.argsort(~running(state_B), stable=True)[:m]  # the runs still iterating first
    data_M = _take(data_B, idx_M)

    def body(state_M):
      new_M = step(state_M, data_M)
      go_M = running(state_M)
      return jax.tree.map(lambda a, b: jnp.where(go_M.reshape((-1,) + (1,) * (a.ndim - 1)),
                                                 a, b), new_M, state_M)

    state_M = jax.lax.while_loop(lambda s: jnp.sum(running(s)) > after, body,
                                 _take(state_B, idx_M))
    state_B = jax.tree.map(lambda a, b: a.at[idx_M].set(b), state_B, state_M)
  return state_B


def em(mix: Mixture, f_FxN, w_N, cfg: EMConfig, fused: bool | str | None = None):
  """EM from `mix` until the bound changes by less than tol: (mix, iterations, converged).

  fused: em_step (False), em_step_fused (True), em_step_triton ('triton'; run as plain JAX
  where the backend is not a GPU's); None: by the platform the program is lowered for,
  em_step on a CPU, em_step_triton on an NVIDIA GPU, em_step_fused on others.
  """
  r = cfg.reg_covar
  steps = {  # each (mix, features, weights, coordinates) -> (mix, bound)
      False: lambda m, f, w, x: em_step(m, f, w, r),
      True: lambda m, f, w, x: em_step_fused(m, f, w, r),
      'triton': lambda m, f, w, x: em_step_triton(m, x, w, r,
                                                  interpret=jax.default_backend() != 'gpu')}

  def step_one(state, data):
    mix, lower_bound, it, _ = state
    if fused is None:
      mix, new_bound = jax.lax.platform_dependent(
          mix, *data, cpu=steps[False], default=steps[True],
          cuda=lambda m, f, w, x: em_step_triton(m, x, w, r))
    else:
      mix, new_bound = steps[fused](mix, *data)
    return mix, new_bound, it + 1, jnp.abs(new_bound - lower_bound) < cfg.tol

  def running_one(state):
    _, _, it, converged = state
    return (~converged) & (it < cfg.max_iter)

  init = (mix, jnp.array(-jnp.inf, f_FxN.dtype), jnp.array(0), jnp.array(False))
  x_DxN = f_FxN[1:1 + mix.means.shape[-1]]  # the Triton step's, sliced once, not each iteration
  mix, _, iters, converged = iterate(step_one, running_one, init, (f_FxN, w_N, x_DxN))
  return mix, iters, converged


def iterate(step_one, running_one, init, data):
  """lax.while_loop(running_one, step_one(., data), init) for one run; vmapped, the runs
  iterate in rounds (round_sizes), each with the result it gets alone."""
  def alone(state, data):
    return jax.lax.while_loop(running_one, lambda s: step_one(s, data), state)

  @jax.custom_batching.custom_vmap
  def loop(state, data):
    return alone(state, data)

  @loop.def_vmap
  def loop_vmapped(axis_size, in_batched, state, data):
    state, data = jax.tree.map(
        lambda v, b: v if b else jnp.broadcast_to(v, (axis_size,) + jnp.shape(v)),
        (state, data), tuple(in_batched))
    if len(round_sizes(axis_size)) == 1:
      out = jax.vmap(alone)(state, data)
    else:
      out = _rounds(jax.vmap(step_one), jax.vmap(running_one), state, data)
    return out, jax.tree.map(lambda _: True, out)

  return loop(init, data)


def fit(x_NxD, w_N, key, cfg: EMConfig, fused: bool | str | None = None):
  """EM from a k-means start; returns the mixture and its iteration counts.

  The data are centred on their weighted mean first, which keeps the moment
  form of the covariance accurate in float32. fused: which EM step (em()).
  """
  d = x_NxD.shape[-1]
  w_sum = jnp.sum(w_N)
  shift_D = _mm(w_N, x_NxD) / w_sum
  xc_NxD = x_NxD - shift_D
  f_FxN = features(xc_NxD)
  resp_KxN, kmeans_iters = kmeans_onehot(xc_NxD, f_FxN, w_N, key, cfg, fused)
  mix = _from_moments(_mm(resp_KxN * w_N, f_FxN.T), d, cfg.reg_covar)
  mix, iters, converged = em(mix, f_FxN, w_N, cfg, fused)
  return mix._replace(means=mix.means + shift_D), {
      'em_iters': iters, 'kmeans_iters': kmeans_iters, 'converged': converged}


# ---------------------------------------------------------------- distances

def _overlap(p: Mixture, q: Mixture):
  """Closed form of the integral of p(x) q(x) dx for two mixtures.

  Each pair of components contributes w_i w_j N(mu_i - mu_j; 0, S_i + S_j). A
  component collapsed onto a line can have a covariance whose smallest eigenvalue
  float32 cannot resolve against its largest; eigenvalues are floored at that
  resolution (where a Cholesky factor would turn NaN).
  """
  s_KxKxDxD = p.covs[:, None] + q.covs[None]
  d_KxKxD = p.means[:, None] - q.means[None]
  lam_KxKxD, vec_KxKxDxD = jnp.linalg.eigh(s_KxKxDxD)
  dim = p.means.shape[-1]
  floor_KxK = dim * jnp.finfo(lam_KxKxD.dtype).eps * jnp.max(jnp.abs(lam_KxKxD), -1)
  lam_KxKxD = jnp.maximum(lam_KxKxD, floor_KxK[..., None])
  y_KxKxD = jnp.sum(vec_KxKxDxD * d_KxKxD[..., None], axis=-2)  # V^T d
  log_n = -0.5 * (dim * _LOG_2PI + jnp.sum(jnp.log(lam_KxKxD) + y_KxKxD**2 / lam_KxKxD, -1))
  return jnp.sum(p.weights[:, None] * q.weights[None] * jnp.exp(log_n))


def l2_squared(p: Mixture, q: Mixture):
  """Squared L2 distance between two mixture densities, the integral of (p - q)^2: the
  paper's measure of how far a generation's fit has moved (its figures plot its log)."""
  return jnp.maximum(_overlap(p, p) - 2 * _overlap(p, q) + _overlap(q, q), 0.0)


def total_variance(mix: Mixture):
  """Trace of the mixture's covariance: the fitted spread."""
  mean_D = _mm(mix.weights, mix.means)
  second = jnp.sum(mix.weights * (jnp.trace(mix.covs, axis1=1, axis2=2)
                                  + jnp.sum(mix.means**2, -1)))
  return second - jnp.sum(mean_D**2)


def canonical(mix: Mixture) -> Mixture:
  """Components ordered by their first mean coordinate, so reports line up."""
  order = jnp.argsort(mix.means[:, 0])
  return Mixture(mix.weights[order], mix.means[order], mix.covs[order])


def tail_thresholds(true: Mixture, probs=(0.95, 0.99), n: int = 1 << 20):
  """Log-density levels whose super-level sets hold `probs` of the true mass.

  The highest-density region holding 95% of a distribution is {x: log p(x) >= t}
  with t the 5% quantile of log p(X), X ~ p; estimated once from 2^20 draws.
  """
  lp = jax.jit(lambda k: log_prob(true, sample(true, k, n)))(jax.random.key(0))
  return tuple(float(np.quantile(np.asarray(lp), 1 - p)) for p in probs)


# ---------------------------------------------------------------- the experiment

@dataclasses.dataclass(frozen=True)
class GMMConfig(experiment.SweepConfig):
  """The GMM experiment; defaults are the paper's protocol as its released notebook runs it.

  The truth is one standard 2-D Gaussian, N(0, I) (the notebook's
  `make_blobs(centers=[[0, 0]], cluster_std=1)`), fitted by a 2-component
  full-covariance mixture. Any true mixture can be given: per-component
  `true_weights` (empty: equal), `true_means` and `true_covs` (each a D x D
  matrix, row-major; empty: `true_std`^2 I).
  """
  seeds: int = 64
  generations: int = 2000
  components: int = setting(2, 'Mixture components fitted.')
  tol: float = setting(1e-5, 'EM stops when the mean log-likelihood changes less.')
  max_iter: int = setting(2000, 'EM iterations at most.')
  reg_covar: float = setting(1e-6, 'Added to covariance diagonals.')
  heldout: int = setting(1000, 'Held-out original samples scored each generation.')
  true_weights: tuple[float, ...] = setting(
      (), "Weights of the true mixture's components, summing to 1 (empty: equal).")
  true_means: tuple[tuple[float, ...], ...] = setting(
      ((0.0, 0.0),), "Means of the true mixture's components, 'x,y;x,y'.")
  true_covs: tuple[tuple[float, ...], ...] = setting(
      (), "Covariances of the true mixture's components, each D x D row-major, "
      "'a,b,c,d;a,b,c,d' (empty: true_std^2 I for every component).")
  true_std: float = setting(1.0, 'Standard deviation of each true component, when --true_covs '
                            'is empty.')
  reward_target: tuple[float, ...] = setting(
      (), '--score=reward: the reward is -|x - c|^2 for this point c (empty: 1 in every '
      'dimension).')

  @property
  def em(self) -> EMConfig:
    return EMConfig(self.components, self.tol, self.max_iter, self.reg_covar)

  def true_mixture(self) -> Mixture:
    means_KxD = np.asarray(self.true_means, np.float64)
    k, d = means_KxD.shape
    weights_K = np.asarray(self.true_weights or [1.0 / k] * k, np.float64)
    if self.true_covs:
      covs_KxDxD = np.asarray(self.true_covs, np.float64).reshape(k, d, d)
    else:
      covs_KxDxD = np.broadcast_to(self.true_std**2 * np.eye(d), (k, d, d))
    return Mixture(*(jnp.asarray(v, jnp.float32) for v in (weights_K, means_KxD, covs_KxDxD)))

  def target(self) -> np.ndarray:
    """The reward's target point c."""
    d = len(self.true_means[0]) if self.true_means else 2
    return np.asarray(self.reward_target or (1.0,) * d, np.float32)

  def validate(self) -> 'GMMConfig':
    if self.components < 1:
      raise validation.ConfigError('components', f'must be at least 1, got {self.components}')
    self.validate_sweep(min_samples=self.components)
    checks = [('tol', self.tol > 0, 'must be positive'),
              ('max_iter', self.max_iter >= 1, 'must be at least 1'),
              ('reg_covar', self.reg_covar >= 0, 'must be non-negative'),
              ('heldout', self.heldout >= 1, 'must be at least 1'),
              ('true_std', self.true_std > 0, 'must be positive')]
    validation.check_fields(self, checks)
    self._validate_truth()
    if self.reward_target and len(self.reward_target) != len(self.true_means[0]):
      raise validation.ConfigError('reward_target', f'needs {len(self.true_means[0])} coordinates, '
                                   f'one per dimension, got {len(self.reward_target)}')
    validation.validate_options(self, family(self))
    return self

  def _validate_truth(self) -> None:
    """The true mixture's flags: matching sizes, weights summing to one, covariances that are
    symmetric and positive definite."""
    if not self.true_means or len({len(m) for m in self.true_means}) != 1:
      raise validation.ConfigError('true_means', 'needs one or more means of the same dimension')
    k, d = len(self.true_means), len(self.true_means[0])
    w = np.asarray(self.true_weights, np.float64)
    if self.true_weights and (len(w) != k or not np.all(np.isfinite(w)) or np.any(w <= 0)):
      raise validation.ConfigError('true_weights', f'needs {k} positive weights, one per mean, got '
                                   f'{list(self.true_weights)}')
    if self.true_weights and abs(w.sum() - 1) > 1e-6:
      raise validation.ConfigError('true_weights', f'sum to {w.sum():.6g}, not 1; divide each by '
                                   'their sum')
    if not self.true_covs:
      return
    if len(self.true_covs) != k or any(len(c) != d * d for c in self.true_covs):
      raise validation.ConfigError('true_covs', f'needs {k} covariances of {d * d} numbers each '
                                   "(row-major), e.g. '1,0,0,1;2,0.5,0.5,1'")
    for c in self.true_covs:
      cov = np.asarray(c, np.float64).reshape(d, d)
      if not (np.all(np.isfinite(cov)) and np.allclose(cov, cov.T)
              and np.all(np.linalg.eigvalsh(cov) > 0)):
        raise validation.ConfigError('true_covs', f'{list(c)} is not a symmetric positive definite '
                                     'matrix')


SMALL = dict(seeds=8, generations=100, samples=200, heldout=200, checkpoint_every=25)
TWO_BLOBS = dict(true_means=((-2.0, 0.0), (2.0, 0.0)))  # two unit Gaussians, well apart
# Sampling temperature on a CPU: `python -m experiments.gmm --preset=sampling`, replace and
# accumulate each at five temperatures, 8 seeds x 100 generations of N = 200, all in one
# invocation; about 3 min on 2 cores. Under replace the fit's median spread at generation 100
# shrinks at t <= 1 (faster below 1) and grows from t = 1.01 (docs/gmm.md).
SAMPLING = dict(SMALL, checkpoint_every=100, regimes=('replace', 'accumulate'),
                temperatures=(0.98, 1.0, 1.01, 1.02, 1.05))
PRESETS = {'paper': {}, 'two-blobs': TWO_BLOBS, 'small': SMALL, 'sampling': SAMPLING}


def metric_fns(cfg: GMMConfig):
  """reference and evaluate for the driver: what each generation is measured by."""
  true = cfg.true_mixture()
  t95, t99 = tail_thresholds(true)

  def reference(mix0: Mixture, key):
    return {'mix0': mix0, 'heldout': sample(true, key, cfg.heldout)}

  def evaluate(mix: Mixture, synth_NxD, ref):
    lp_true_N = log_prob(true, synth_NxD)  # the fit's samples, scored by the truth
    out = {'l2sq_gen0': l2_squared(mix, ref['mix0']), 'l2sq_true': l2_squared(mix, true),
           'heldout_ll': jnp.mean(log_prob(mix, ref['heldout'])),
           'tail_mass_95': jnp.mean(lp_true_N < t95), 'tail_mass_99': jnp.mean(lp_true_N < t99),
           'total_var': total_variance(mix)}
    c = canonical(mix)
    d = c.means.shape[-1]
    for k in range(cfg.components):
      out[f'weight_{k}'] = c.weights[k]
      out.update({f'mean_{k}_{i}': c.means[k, i] for i in range(d)})
      out.update({f'cov_{k}_{i}{j}': c.covs[k, i, j] for i, j in zip(*np.triu_indices(d))})
      out[f'cov_trace_{k}'] = jnp.trace(c.covs[k])
      out[f'cov_det_{k}'] = jnp.linalg.det(c.covs[k])
    return out

  return reference, evaluate


def family(cfg: GMMConfig):
  """The GMM as a driver family: true data, EM fit, sampling, the paper's metrics."""
  true = cfg.true_mixture()
  reference, evaluate = metric_fns(cfg)
  em = cfg.em
  target_D = jnp.asarray(cfg.target())
  return protocol.Family(draw_real=lambda key, n: sample(true, key, n),
                         fit=lambda x_NxD, w_N, key: fit(x_NxD, w_N, key, em),
                         sample=sample, reference=reference, evaluate=evaluate,
                         one_at_a_time_on_cpu=True, log_density=log_prob_scores,
                         true_log_density=lambda x_NxD: log_prob_scores(true, x_NxD),
                         reward=lambda x_NxD: scores.squared_distance(x_NxD, target_D),
                         biased=tempered, sampling_knobs=('temperature',),
                         verifier=lambda x_NxD, shift, scale: log_prob_scores(
                             moved(true, shift, scale), x_NxD))


SUMMARY_COLUMNS = ('l2sq_gen0', 'total_var', 'heldout_ll', 'tail_mass_99', 'em_iters')
LEADING_COLUMNS = ('l2sq_gen0', 'l2sq_true', 'total_var', 'heldout_ll', 'tail_mass_95',
                   'tail_mass_99', 'em_iters', 'kmeans_iters', 'converged')


def figures(cfg: GMMConfig, out: experiment.Outcome) -> None:
  """collapse.png, tradeoff.png and, in 2-D, scatter.png."""
  plots.curves(out.curves, [('l2sq_gen0', 'squared L2 distance to the generation-0 fit', True),
                            ('total_var', 'fitted spread (trace of covariance)', True)],
               out.path('collapse.png'), title=f'GMM refitted on its own samples, {cfg.seeds} seeds')
  plots.scores_against(out.curves, ('total_var', 'fitted spread (trace of covariance)'),
                       out.path('tradeoff.png'),
                       title=f'GMM: score and spread, {cfg.seeds} seeds')
  if len(cfg.true_means[0]) == 2:
    plots.gmm_scatter(out.table, out.path('scatter.png'))


def run(cfg: GMMConfig, workdir: str, progress: bool = True, log=print):
  """Runs, resumes or reloads the GMM experiment in `workdir`; returns its table.

  Leaves there: config.json, checkpoints/<regime>/, metrics.csv (one row per
  generation x seed x regime x real fraction), collapse.png, tradeoff.png, scatter.png
  (2-D only) and summary.txt.
  """
  exp = experiment.Experiment(
      'gmm', lambda: family(cfg), SUMMARY_COLUMNS, generations=(1, 10, 100, 200, 1000),
      first=LEADING_COLUMNS, figures=functools.partial(figures, cfg))
  return experiment.run_experiment(exp, cfg, workdir, progress, log).table
