"""The regression benchmark's protocol in NumPy, vectorised over seeds: what a user would write.

OLS under replace on fresh isotropic inputs, every seed advanced together each generation (a
Python loop over generations only), two ways as the NumPy loops do
(benchmarks.regression_throughput): drawing the T rows, and drawing their sufficient statistics
(X^T X by Bartlett's decomposition, as regression.refit does). Each generation measures the test
error, the parameter error and the training labels' variance, in the dtype given.

Shapes in names: S seeds, T samples, P input dimensions, K = P + 1 (an input and its noise).
"""

import math

import numpy as np


def errors(w_SxP, w_star_P):
  """Test error |w - w*|^2_Sigma and parameter error |w - w*|^2 per seed (Sigma = I)."""
  err_S = np.sum((w_SxP - w_star_P) ** 2, -1)
  return {'test_error': err_S, 'param_error': err_S}


def fit_rows(w_SxP, x_SxTxP, e_SxT):
  """The next OLS fits to labels x w + e, and the labels' variance."""
  y_SxT = np.squeeze(x_SxTxP @ w_SxP[..., None], -1) + e_SxT
  xt_SxPxT = np.swapaxes(x_SxTxP, 1, 2)
  w_SxP = np.linalg.solve(xt_SxPxT @ x_SxTxP, xt_SxPxT @ y_SxT[..., None])[..., 0]
  return w_SxP, y_SxT.var(-1)


def rows_run(seeds: int, generations: int, t: int, p: int, noise: float, rng, dtype=np.float32):
  """The recursion drawing the rows: metrics of generations 0..G, (G + 1) x S arrays. Draws
  come in the NumPy loop's order, so one seed in float64 from its generator draws its numbers."""
  w_star_P = np.full(p, 1 / np.sqrt(p), np.float32).astype(dtype)  # the family's w*
  w_SxP, out = np.broadcast_to(w_star_P, (seeds, p)), []
  for _ in range(generations + 1):
    x_SxTxP = rng.standard_normal((seeds, t, p), dtype=dtype)
    e_SxT = noise * rng.standard_normal((seeds, t), dtype=dtype)
    w_SxP, label_var_S = fit_rows(w_SxP, x_SxTxP, e_SxT)
    out.append({**errors(w_SxP, w_star_P), 'label_var': label_var_S})
  return {k: np.stack([m[k] for m in out]) for k in out[0]}


def bartlett(a_SxM, chi2_SxK, root_SxK, t: int, scale_K):
  """The moment matrix sum z z^T of T rows z ~ N(0, diag(scale^2)), SxKxK, from the draws
  of Bartlett's decomposition (below-diagonal normals, chi-squares of T - 1 - i degrees of
  freedom) and sqrt(T) x the rows' mean."""
  s, k = chi2_SxK.shape
  below = np.tril_indices(k, -1)
  a_SxKxK = np.zeros((s, k, k), a_SxM.dtype)
  a_SxKxK[:, below[0], below[1]] = a_SxM
  a_SxKxK[:, np.arange(k), np.arange(k)] = np.sqrt(chi2_SxK)
  a_SxKxK *= scale_K[:, None]
  return a_SxKxK @ np.swapaxes(a_SxKxK, 1, 2) + root_SxK[:, :, None] * root_SxK[:, None]


def fit_statistics(w_SxP, m_SxKxK, root_SxK, t: int):
  """The next OLS fits from the drawn moments, and the labels' variance (regression.refit)."""
  p = w_SxP.shape[1]
  xx_SxPxP, xe_SxP = m_SxKxK[:, :p, :p], m_SxKxK[:, :p, p]
  xxw_SxP = np.squeeze(xx_SxPxP @ w_SxP[..., None], -1)
  w_next_SxP = np.linalg.solve(xx_SxPxP, (xxw_SxP + xe_SxP)[..., None])[..., 0]
  y1_S = math.sqrt(t) * (np.sum(w_SxP * root_SxK[:, :p], -1) + root_SxK[:, p])
  y2_S = np.sum(w_SxP * xxw_SxP, -1) + 2 * np.sum(w_SxP * xe_SxP, -1) + m_SxKxK[:, p, p]
  return w_next_SxP, np.maximum(y2_S / t - (y1_S / t) ** 2, 0.0)


def statistics_run(seeds: int, generations: int, t: int, p: int, noise: float, rng,
                   dtype=np.float32):
  """The recursion drawing sufficient statistics: as rows_run, in the statistics loop's order."""
  w_star_P = np.full(p, 1 / np.sqrt(p), np.float32).astype(dtype)  # the family's w*
  k = p + 1
  scale_K = np.r_[np.ones(p), noise].astype(dtype)
  dof_K = t - 1.0 - np.arange(k)
  w_SxP, out = np.broadcast_to(w_star_P, (seeds, p)), []
  for _ in range(generations + 1):
    a_SxM = rng.standard_normal((seeds, k * (k - 1) // 2), dtype=dtype)
    chi2_SxK = rng.chisquare(dof_K, size=(seeds, k)).astype(dtype)
    root_SxK = scale_K * rng.standard_normal((seeds, k), dtype=dtype)
    m_SxKxK = bartlett(a_SxM, chi2_SxK, root_SxK, t, scale_K)
    w_SxP, label_var_S = fit_statistics(w_SxP, m_SxKxK, root_SxK, t)
    out.append({**errors(w_SxP, w_star_P), 'label_var': label_var_S})
  return {k: np.stack([m[k] for m in out]) for k in out[0]}
