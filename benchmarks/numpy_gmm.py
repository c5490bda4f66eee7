"""The GMM benchmark's protocol in NumPy, vectorised over seeds: what a user would write instead.

Every seed advances together each generation: k-means++ seeding and Lloyd iterations, then EM
to `tol` (at most `max_iter` iterations), each a Python loop over iterations in which seeds that
have converged leave the arrays; then N samples of each fit and the metrics gmm.metric_fns
measures. The algorithm is the family's (collapse_jax/families/gmm.py: data centred, EM on the
features [1, x, x_i x_j] so each iteration is two batched matmuls), in the dtype given. What
the family does for long runs in float32 (components collapsed onto a line: floored eigenvalues
in the L2 distance) is not done here: a covariance NumPy cannot factor raises LinAlgError. The
benchmark runs it for 10 generations.

Shapes in names: S seeds, N samples, K components, D dimensions, F features, H held-out rows.
"""

import math
from typing import NamedTuple

import numpy as np

_LOG_2PI = math.log(2 * math.pi)


class Mixtures(NamedTuple):
  """S Gaussian mixtures: weights_SxK, means_SxKxD, covs_SxKxDxD."""
  weights: np.ndarray
  means: np.ndarray
  covs: np.ndarray


def take(mix: Mixtures, rows) -> Mixtures:
  """The mixtures of the seeds `rows` (an index or a mask)."""
  return Mixtures(*(v[rows] for v in mix))


# ---------------------------------------------------------------- densities

def log_prob(mix: Mixtures, x_SxNxD):
  """Each seed's mixture log-density at its own rows, SxN."""
  chol_SxKxDxD = np.linalg.cholesky(mix.covs)
  prec_SxKxDxD = np.linalg.inv(chol_SxKxDxD)  # L^-1: |L^-1 (x - mu)|^2 is the Mahalanobis term
  diff_SxKxNxD = x_SxNxD[:, None] - mix.means[:, :, None]
  y_SxKxNxD = diff_SxKxNxD @ np.swapaxes(prec_SxKxDxD, -1, -2)
  log_det_SxK = np.sum(np.log(np.diagonal(chol_SxKxDxD, axis1=-2, axis2=-1)), -1)
  d = x_SxNxD.shape[-1]
  a_SxKxN = (-0.5 * (d * _LOG_2PI + np.sum(y_SxKxNxD**2, -1)) - log_det_SxK[..., None]
             + np.log(mix.weights)[..., None])
  top_SxN = a_SxKxN.max(1)
  return top_SxN + np.log(np.sum(np.exp(a_SxKxN - top_SxN[:, None]), 1))


def sample(mix: Mixtures, rng, n: int):
  """n samples of each seed's mixture, SxNxD: a component by its weight, then mu + L eps."""
  s, k, d = mix.means.shape
  dtype = mix.means.dtype
  cdf_SxK = np.cumsum(mix.weights, -1)
  u_SxN = rng.random((s, n), dtype=dtype) * cdf_SxK[:, -1:]
  z_SxN = np.minimum(np.sum(u_SxN[..., None] >= cdf_SxK[:, None], -1), k - 1)
  eps_SxNxD = rng.standard_normal((s, n, d), dtype=dtype)
  # every component transforms the noise and each sample keeps its own (K is small)
  y_SxKxNxD = mix.means[:, :, None] + eps_SxNxD[:, None] @ np.swapaxes(
      np.linalg.cholesky(mix.covs), -1, -2)
  return np.take_along_axis(y_SxKxNxD, z_SxN[:, None, :, None], 1)[:, 0]


# ---------------------------------------------------------------- features and moments

def features(xc_SxNxD):
  """Features [1, x_d, x_d x_e (d <= e)] of centred samples, SxFxN."""
  s, n, d = xc_SxNxD.shape
  i, j = np.triu_indices(d)
  x_SxDxN = np.swapaxes(xc_SxNxD, 1, 2)
  ones_Sx1xN = np.ones((s, 1, n), xc_SxNxD.dtype)
  return np.concatenate([ones_Sx1xN, x_SxDxN, x_SxDxN[:, i] * x_SxDxN[:, j]], 1)


def from_moments(m_SxKxF, d: int, reg_covar: float) -> Mixtures:
  """Maximum-likelihood mixtures from the moments sum_n r_nk f_n (gmm._from_moments)."""
  i, j = np.triu_indices(d)
  n_SxK = m_SxKxF[..., 0] + 10 * np.finfo(m_SxKxF.dtype).eps
  means_SxKxD = m_SxKxF[..., 1:1 + d] / n_SxK[..., None]
  second_SxKxDxD = np.zeros(m_SxKxF.shape[:2] + (d, d), m_SxKxF.dtype)
  second_SxKxDxD[..., i, j] = m_SxKxF[..., 1 + d:]
  second_SxKxDxD[..., j, i] = m_SxKxF[..., 1 + d:]
  covs_SxKxDxD = (second_SxKxDxD / n_SxK[..., None, None]
                  - means_SxKxD[..., :, None] * means_SxKxD[..., None, :]
                  + np.asarray(reg_covar * np.eye(d), m_SxKxF.dtype))
  # not positive definite (a component with almost no data): floored variances, no correlations
  pd_SxK = np.all(np.linalg.eigvalsh(covs_SxKxDxD) > 0, -1)
  if not pd_SxK.all():
    var_SxKxD = np.maximum(np.diagonal(covs_SxKxDxD, axis1=-2, axis2=-1), reg_covar)
    diag_SxKxDxD = var_SxKxD[..., None] * np.eye(d, dtype=m_SxKxF.dtype)
    covs_SxKxDxD = np.where(pd_SxK[..., None, None], covs_SxKxDxD, diag_SxKxDxD)
  return Mixtures(n_SxK / n_SxK.sum(-1, keepdims=True), means_SxKxD, covs_SxKxDxD)


def log_density_coefs(mix: Mixtures):
  """A_SxKxF with A @ f = log w_k + log N(x; mu_k, Sigma_k) (gmm._log_density_coefs)."""
  d = mix.means.shape[-1]
  i, j = np.triu_indices(d)
  lam_SxKxDxD = np.linalg.inv(mix.covs)
  lam_mu_SxKxD = np.einsum('skij,skj->ski', lam_SxKxDxD, mix.means)
  _, log_det_SxK = np.linalg.slogdet(mix.covs)
  const_SxK = (np.log(mix.weights) - 0.5 * log_det_SxK - 0.5 * d * _LOG_2PI
               - 0.5 * np.sum(lam_mu_SxKxD * mix.means, -1))
  quad_SxKxP = np.where(i == j, -0.5, -1.0).astype(mix.means.dtype) * lam_SxKxDxD[..., i, j]
  return np.concatenate([const_SxK[..., None], lam_mu_SxKxD, quad_SxKxP], -1)


# ---------------------------------------------------------------- k-means

def _draw_index(rng, p_SxN, trials: int):
  """trials indices per seed drawn with probability proportional to p, SxT."""
  cdf_SxN = np.cumsum(p_SxN, -1)
  u_SxT = rng.random((p_SxN.shape[0], trials), dtype=p_SxN.dtype) * cdf_SxN[:, -1:]
  return np.minimum(np.sum(cdf_SxN[:, None] <= u_SxT[..., None], -1), p_SxN.shape[1] - 1)


def kmeans_plus_plus(xc_SxNxD, rng, k: int):
  """Greedy k-means++ seeding, 2 + log k candidates per centre (gmm.kmeans_plus_plus), SxKxD."""
  s, n, _ = xc_SxNxD.shape
  rows_S = np.arange(s)
  first_S = rng.integers(n, size=s)
  centres_SxKxD = np.repeat(xc_SxNxD[rows_S, first_S][:, None], k, 1)
  d2_SxN = np.sum((xc_SxNxD - centres_SxKxD[:, :1]) ** 2, -1)
  trials = 2 + int(math.log(k))
  for c in range(1, k):
    cand_SxT = _draw_index(rng, d2_SxN + np.asarray(1e-30, d2_SxN.dtype), trials)
    cand_SxTxD = xc_SxNxD[rows_S[:, None], cand_SxT]
    d2_SxTxN = np.minimum(d2_SxN[:, None], np.sum((cand_SxTxD[:, :, None] - xc_SxNxD[:, None]) ** 2,
                                                  -1))
    best_S = np.argmin(d2_SxTxN.sum(-1), -1)
    centres_SxKxD[:, c] = cand_SxTxD[rows_S, best_S]
    d2_SxN = d2_SxTxN[rows_S, best_S]
  return centres_SxKxD


def nearest_onehot(f_SxFxN, centres_SxKxD):
  """One-hot nearest-centre assignment, SxKxN: |x - c|^2 - |x|^2 is linear in f."""
  d, k = centres_SxKxD.shape[-1], centres_SxKxD.shape[1]
  coef_SxKxF = np.concatenate([np.sum(centres_SxKxD**2, -1, keepdims=True), -2 * centres_SxKxD], -1)
  score_SxKxN = coef_SxKxF @ f_SxFxN[:, :1 + d]
  label_SxN, best_SxN = np.zeros(score_SxKxN[:, 0].shape, np.int64), score_SxKxN[:, 0]
  for c in range(1, k):  # an argmin over a short middle axis, as K elementwise passes
    better_SxN = score_SxKxN[:, c] < best_SxN
    label_SxN, best_SxN = np.where(better_SxN, c, label_SxN), np.minimum(best_SxN,
                                                                         score_SxKxN[:, c])
  return (label_SxN[:, None] == np.arange(k)[:, None]).astype(f_SxFxN.dtype)


def kmeans_onehot(xc_SxNxD, f_SxFxN, rng, k: int, max_iter: int, tol: float):
  """Lloyd iterations from k-means++ until each seed's centres move less than its tol (a
  fraction of its data's mean variance); seeds that stop leave the arrays. Returns the one-hot
  assignment SxKxN and each seed's iterations."""
  s, _, d = xc_SxNxD.shape
  tol_S = tol * np.mean(np.var(xc_SxNxD, 1), -1)
  centres_SxKxD = kmeans_plus_plus(xc_SxNxD, rng, k)
  iters_S = np.zeros(s, np.int32)
  live_A = np.arange(s)
  f_AxFxN, c_AxKxD, tol_A = f_SxFxN, centres_SxKxD.copy(), tol_S
  for it in range(1, max_iter + 1):
    m_AxKxF = nearest_onehot(f_AxFxN, c_AxKxD) @ np.swapaxes(f_AxFxN[:, :1 + d], 1, 2)
    count_AxKx1 = m_AxKxF[..., :1]
    new_AxKxD = np.where(count_AxKx1 > 0, m_AxKxF[..., 1:] / np.maximum(count_AxKx1, 1e-30),
                         c_AxKxD)  # an empty cluster keeps its centre
    moving_A = np.sum((new_AxKxD - c_AxKxD) ** 2, (1, 2)) > tol_A
    centres_SxKxD[live_A], iters_S[live_A] = new_AxKxD, it
    if not moving_A.any():
      break
    if not moving_A.all():
      live_A, f_AxFxN, tol_A = live_A[moving_A], f_AxFxN[moving_A], tol_A[moving_A]
      new_AxKxD = new_AxKxD[moving_A]
    c_AxKxD = new_AxKxD
  return nearest_onehot(f_SxFxN, centres_SxKxD), iters_S


# ---------------------------------------------------------------- EM

def em_step(mix: Mixtures, f_SxFxN, reg_covar: float):
  """One E and M step per seed on centred features: the new mixtures and the mean
  log-likelihood of the old ones (gmm.em_step with unit weights)."""
  log_prob_SxKxN = log_density_coefs(mix) @ f_SxFxN
  top_SxN = log_prob_SxKxN.max(1)
  p_SxKxN = np.exp(log_prob_SxKxN - top_SxN[:, None])
  norm_SxN = p_SxKxN.sum(1)
  bound_S = np.mean(top_SxN + np.log(norm_SxN), -1)
  resp_SxKxN = p_SxKxN / norm_SxN[:, None]
  return from_moments(resp_SxKxN @ np.swapaxes(f_SxFxN, 1, 2), mix.means.shape[-1],
                      reg_covar), bound_S


def em(mix: Mixtures, f_SxFxN, tol: float, max_iter: int, reg_covar: float):
  """EM from the mixtures given until each seed's mean log-likelihood changes by less than
  tol (or max_iter steps); seeds that stop leave the arrays. Returns the mixtures, each
  seed's iterations and whether it converged."""
  s = f_SxFxN.shape[0]
  out = Mixtures(*(v.copy() for v in mix))
  iters_S, converged_S = np.zeros(s, np.int32), np.zeros(s, bool)
  live_A, f_AxFxN, bound_A = np.arange(s), f_SxFxN, np.full(s, -np.inf, f_SxFxN.dtype)
  for it in range(1, max_iter + 1):
    mix, new_A = em_step(mix, f_AxFxN, reg_covar)
    converged_A = np.abs(new_A - bound_A) < tol
    done_A = converged_A | (it == max_iter)
    bound_A = new_A
    if done_A.any():
      rows_R = live_A[done_A]
      for v_out, v in zip(out, mix):
        v_out[rows_R] = v[done_A]
      iters_S[rows_R], converged_S[rows_R] = it, converged_A[done_A]
      keep_A = ~done_A
      if not keep_A.any():
        break
      live_A, f_AxFxN, bound_A, mix = live_A[keep_A], f_AxFxN[keep_A], bound_A[keep_A], take(
          mix, keep_A)
  return out, iters_S, converged_S


def fit(x_SxNxD, rng, k: int, tol: float, max_iter: int, reg_covar: float,
        kmeans_max_iter: int = 300, kmeans_tol: float = 1e-4):
  """Each seed's EM fit from its k-means start (gmm.fit): the mixtures and the iterations."""
  shift_Sx1xD = x_SxNxD.mean(1, keepdims=True)
  xc_SxNxD = x_SxNxD - shift_Sx1xD
  f_SxFxN = features(xc_SxNxD)
  resp_SxKxN, kmeans_iters_S = kmeans_onehot(xc_SxNxD, f_SxFxN, rng, k, kmeans_max_iter,
                                             kmeans_tol)
  start = from_moments(resp_SxKxN @ np.swapaxes(f_SxFxN, 1, 2), x_SxNxD.shape[-1], reg_covar)
  mix, em_iters_S, converged_S = em(start, f_SxFxN, tol, max_iter, reg_covar)
  return mix._replace(means=mix.means + shift_Sx1xD), {
      'em_iters': em_iters_S, 'kmeans_iters': kmeans_iters_S, 'converged': converged_S}


# ---------------------------------------------------------------- metrics

def _overlap(p: Mixtures, q: Mixtures):
  """The integral of p(x) q(x) dx per seed: sum_ij w_i w_j N(mu_i - mu_j; 0, S_i + S_j)."""
  s_SxKxKxDxD = p.covs[:, :, None] + q.covs[:, None]
  d_SxKxKxD = p.means[:, :, None] - q.means[:, None]
  _, log_det_SxKxK = np.linalg.slogdet(s_SxKxKxDxD)
  maha_SxKxK = np.sum(d_SxKxKxD * np.linalg.solve(s_SxKxKxDxD, d_SxKxKxD[..., None])[..., 0], -1)
  dim = p.means.shape[-1]
  log_n = -0.5 * (dim * _LOG_2PI + log_det_SxKxK + maha_SxKxK)
  return np.sum(p.weights[:, :, None] * q.weights[:, None] * np.exp(log_n), (1, 2))


def l2_squared(p: Mixtures, q: Mixtures):
  """Squared L2 distance between each seed's two mixture densities (gmm.l2_squared)."""
  return np.maximum(_overlap(p, p) - 2 * _overlap(p, q) + _overlap(q, q), 0.0)


def evaluate(mix: Mixtures, synth_SxNxD, mix0: Mixtures, true: Mixtures, heldout_SxHxD,
             t95: float, t99: float):
  """The metrics gmm.metric_fns' evaluate reports, per seed; `true` broadcast to S seeds."""
  lp_true_SxN = log_prob(true, synth_SxNxD)
  mean_SxD = np.einsum('sk,skd->sd', mix.weights, mix.means)
  total_var_S = (np.sum(mix.weights * (np.trace(mix.covs, axis1=-2, axis2=-1)
                                       + np.sum(mix.means**2, -1)), -1) - np.sum(mean_SxD**2, -1))
  order_SxK = np.argsort(mix.means[..., 0], -1)
  canon = Mixtures(*(np.take_along_axis(v, order_SxK.reshape(order_SxK.shape + (1,) * (v.ndim - 2)),
                                        1) for v in mix))
  return {'l2sq_gen0': l2_squared(mix, mix0), 'l2sq_true': l2_squared(mix, true),
          'heldout_ll': log_prob(mix, heldout_SxHxD).mean(-1),
          'tail_mass_95': np.mean(lp_true_SxN < t95, -1, dtype=lp_true_SxN.dtype),
          'tail_mass_99': np.mean(lp_true_SxN < t99, -1, dtype=lp_true_SxN.dtype),
          'total_var': total_var_S,
          'weights': canon.weights, 'means': canon.means, 'covs': canon.covs,
          'cov_det': np.linalg.det(canon.covs)}


# ---------------------------------------------------------------- the recursion

def broadcast(true: Mixtures, seeds: int, dtype) -> Mixtures:
  """One mixture as S identical ones."""
  return Mixtures(*(np.broadcast_to(np.asarray(v, dtype), (seeds,) + np.shape(v)).copy()
                    for v in true))


def replace_run(true: Mixtures, seeds: int, generations: int, samples: int, heldout: int,
                tol: float, max_iter: int, reg_covar: float, k: int, t95: float, t99: float,
                rng, dtype=np.float32):
  """The GMM protocol under replace for `seeds` seeds at once: generation 0 fits N real
  samples, generation g fits the N samples of fit g - 1. Returns a list of G + 1
  (fit info, metrics) dicts of per-seed arrays."""
  true_S = broadcast(true, seeds, dtype)
  x_SxNxD = sample(true_S, rng, samples)
  heldout_SxHxD = sample(true_S, rng, heldout)
  out, mix0 = [], None
  for _ in range(generations + 1):
    mix, info = fit(x_SxNxD, rng, k, tol, max_iter, reg_covar)
    x_SxNxD = sample(mix, rng, samples)
    mix0 = mix if mix0 is None else mix0
    out.append((info, evaluate(mix, x_SxNxD, mix0, true_S, heldout_SxHxD, t95, t99)))
  return out
