"""The KDE benchmark's protocol in NumPy, vectorised over seeds: what a user would write instead.

Every seed advances together each generation (a Python loop over generations only): store the
last N samples as the KDE, draw N samples from it, and measure the held-out NLL (H x N kernels,
a logsumexp each), the spread and the squared MMD to the held-out set (N x N + N x H kernels),
as kde.family's evaluate does, in the dtype given.

Shapes in names: S seeds, N samples, H held-out rows, D = 2 dimensions.
"""

import math

import numpy as np


def moons(rng, seeds: int, n: int, noise: float, dtype):
  """scikit-learn's make_moons per seed, SxNxD: t ~ U[0, pi], the upper arc or the lower one."""
  t_SxN = np.pi * rng.random((seeds, n))
  upper_SxN = rng.random((seeds, n)) < 0.5
  x_SxNxD = np.where(upper_SxN[..., None], np.stack([np.cos(t_SxN), np.sin(t_SxN)], -1),
                     np.stack([1 - np.cos(t_SxN), 0.5 - np.sin(t_SxN)], -1))
  return (x_SxNxD + noise * rng.standard_normal((seeds, n, 2))).astype(dtype)


class Workspace:
  """Two S x M x M float buffers reused by every kernel sum: a fresh array this large each
  time would cost NumPy more in page faults than the arithmetic."""

  def __init__(self, seeds: int, rows: int, dtype):
    self.d2 = np.empty((seeds, rows, rows), dtype)
    self.tmp = np.empty((seeds, rows, rows), dtype)

  def views(self, s: int, n: int, m: int):
    return self.d2[:s, :n, :m], self.tmp[:s, :n, :m]


def sq_dist(a_SxNxD, b_SxMxD, work: Workspace | None = None):
  """|a_n - b_m|^2 per seed, SxNxM, from differences (no cancellation), one dimension at a
  time, in the workspace's first buffer."""
  s, n, d = a_SxNxD.shape
  work = work or Workspace(s, max(n, b_SxMxD.shape[1]), a_SxNxD.dtype)
  d2_SxNxM, tmp_SxNxM = work.views(s, n, b_SxMxD.shape[1])
  a_SxDxN, b_SxDxM = np.swapaxes(a_SxNxD, 1, 2).copy(), np.swapaxes(b_SxMxD, 1, 2).copy()
  for i in range(d):
    out = d2_SxNxM if i == 0 else tmp_SxNxM
    np.subtract(a_SxDxN[:, i, :, None], b_SxDxM[:, i, None, :], out=out)
    np.square(out, out=out)
    if i:
      d2_SxNxM += tmp_SxNxM
  return d2_SxNxM


def kernel_sum(a_SxNxD, b_SxMxD, scale: float, work: Workspace | None = None):
  """sum_nm exp(-|a_n - b_m|^2 / (2 scale^2)) per seed, S."""
  k_SxNxM = sq_dist(a_SxNxD, b_SxMxD, work)
  k_SxNxM *= -1 / (2 * scale**2)
  return np.exp(k_SxNxM, out=k_SxNxM).sum((1, 2))


def heldout_self(heldout_SxHxD, scale: float):
  """The held-out set's own MMD term, the kernel's mean over distinct pairs, S."""
  h = heldout_SxHxD.shape[1]
  return (kernel_sum(heldout_SxHxD, heldout_SxHxD, scale) - h) / (h * (h - 1))


def evaluate(points_SxNxD, synth_SxNxD, heldout_SxHxD, t_self_S, h: float, scale: float,
             work: Workspace | None = None):
  """heldout_nll, spread and mmd2 of each seed's KDE (stored points, bandwidth h) and samples."""
  s, n, d = points_SxNxD.shape
  work = work or Workspace(s, max(n, heldout_SxHxD.shape[1]), points_SxNxD.dtype)
  a_SxHxN = sq_dist(heldout_SxHxD, points_SxNxD, work)
  a_SxHxN *= -1 / (2 * h**2)
  top_SxH = a_SxHxN.max(-1)
  a_SxHxN -= top_SxH[..., None]
  log_density_SxH = (top_SxH + np.log(np.exp(a_SxHxN, out=a_SxHxN).sum(-1)) - math.log(n)
                     - 0.5 * d * math.log(2 * math.pi * h**2))
  spread_S = points_SxNxD.var(1).sum(-1) + d * h**2
  mmd2_S = ((kernel_sum(synth_SxNxD, synth_SxNxD, scale, work) - n) / (n * (n - 1)) + t_self_S
            - 2 * kernel_sum(synth_SxNxD, heldout_SxHxD, scale, work)
            / (n * heldout_SxHxD.shape[1]))
  return {'heldout_nll': -log_density_SxH.mean(-1), 'spread': spread_S, 'mmd2': mmd2_S}


def draw(points_SxNxD, pick_SxN, eps_SxNxD, h: float):
  """N samples of each seed's KDE: the picked stored points plus h times the noise."""
  return np.take_along_axis(points_SxNxD, pick_SxN[..., None], 1) + h * eps_SxNxD


def replace_run(seeds: int, generations: int, samples: int, heldout: int, h: float,
                noise: float, scale: float, rng, dtype=np.float32):
  """The KDE protocol under replace with a fixed bandwidth for `seeds` seeds at once: the
  metrics of generations 0..G, a dict of (G + 1) x S arrays. The draws come in the NumPy
  loop's order (benchmarks.kde_throughput.numpy_loop), so one seed in float64 from its
  generator draws that seed's numbers."""
  heldout_SxHxD = moons(rng, seeds, heldout, noise, dtype)
  t_self_S = heldout_self(heldout_SxHxD, scale)
  points_SxNxD = moons(rng, seeds, samples, noise, dtype)
  work, out = Workspace(seeds, max(samples, heldout), dtype), []
  for _ in range(generations + 1):
    pick_SxN = rng.integers(samples, size=(seeds, samples))
    eps_SxNxD = rng.standard_normal((seeds, samples, 2), dtype=dtype)
    synth_SxNxD = draw(points_SxNxD, pick_SxN, eps_SxNxD, h)
    out.append(evaluate(points_SxNxD, synth_SxNxD, heldout_SxHxD, t_self_S, h, scale, work))
    points_SxNxD = synth_SxNxD
  return {k: np.stack([m[k] for m in out]) for k in out[0]}
