"""What families share about drawing and comparing samples: rows picked by weight,
squared distances, and the Gaussian-kernel MMD."""

import jax.numpy as jnp


def invert_cdf(cdf_R, u_N, method: str = 'scan'):
  """Row indices drawn with probability proportional to the weights whose running sum is
  cdf_R, one per uniform u in [0, 1), by inverting the CDF: the first row whose running sum
  exceeds u x total. A row of weight 0 is never drawn; should u x total round up to the
  total, the last row of positive weight is. `method`: jnp.searchsorted's."""
  i_N = jnp.searchsorted(cdf_R, u_N * cdf_R[-1], side='right', method=method)
  return jnp.minimum(i_N, jnp.argmax(cdf_R >= cdf_R[-1]))


def squared_distances(a_NxD, b_MxD):
  """|a_n - b_m|^2, N x M, from differences (no cancellation), one dimension at a time
  (faster on a CPU than a N x M x D difference tensor)."""
  return sum((a_NxD[:, None, i] - b_MxD[None, :, i]) ** 2 for i in range(a_NxD.shape[1]))


def kernel_mean_off_diagonal(d2_MxM, bandwidth: float):
  """The mean of the Gaussian kernel exp(-d^2 / (2 bandwidth^2)) over pairs of distinct
  rows, from their squared distances (the diagonal's d^2 = 0)."""
  m = d2_MxM.shape[0]
  return (jnp.sum(jnp.exp(-d2_MxM / (2 * bandwidth**2))) - m) / (m * (m - 1))


def mmd2(y_NxD, t_MxD, bandwidth: float, t_self):
  """The unbiased squared MMD (MMD^2_u, Gretton et al. 2012, eq. 3) between samples y and t
  with the kernel exp(-|a - b|^2 / (2 bandwidth^2)); t_self: t's own term,
  kernel_mean_off_diagonal of t (drawn once, so computed once). 0 in expectation when the
  laws agree."""
  y_self = kernel_mean_off_diagonal(squared_distances(y_NxD, y_NxD), bandwidth)
  cross = jnp.mean(jnp.exp(-squared_distances(y_NxD, t_MxD) / (2 * bandwidth**2)))
  return y_self + t_self - 2 * cross
