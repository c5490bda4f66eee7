"""Scores that keep the resolution of the model they rank, however far it has collapsed.

A verifier ranks a model's candidates by a score: a log density or a reward, often of a
reference (the truth, generation 0) far wider than the collapsed model. Computed the
usual way, such a score is a constant plus a term of the order of the model's spread, and
float32 rounds the term away once the spread is small against the reference's scale:
the candidates tie, and the ranking becomes top_k's order of ties. Here a score comes as
its value at a point c near the candidates plus each candidate's difference from it
(`Relative`), and the differences are computed from x - c, so they keep float32's
relative precision for as long as float32 can tell the candidates apart at all.

Every form below is the algebra of quadratics: q(x) - q(c) = A(x - c) . A((x - m) + (c - m))
for q(x) = |A(x - m)|^2, and mixtures of exp(-q / 2) on top of it.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Relative(NamedTuple):
  """Scores as at + gap_N: `at` the score of one point near the candidates, `gap_N` each
  candidate's exact difference from it. Ranking by gap_N is ranking by the score."""
  at: Any
  gap_N: Any

  @property
  def values_N(self):
    return self.at + self.gap_N


def relative(scores) -> Relative:
  """A score function's output as Relative: plain values are their own gaps from 0."""
  return scores if isinstance(scores, Relative) else Relative(jnp.zeros((), scores.dtype), scores)


def centre(x_NxD):
  """The point the gaps are measured from: the candidates' mean."""
  return jnp.mean(x_NxD, axis=0)


def quadratic_gap(whiten, x_NxD, c_D, m_D):
  """|A(x_n - m)|^2 - |A(c - m)|^2 of each row, as A(x - c) . A((x - m) + (c - m)), for the
  linear map whiten(v_NxD) = v A^T: exact when x is near c, however far m is."""
  near_NxE = whiten(x_NxD - c_D)
  far_NxE = whiten((x_NxD - m_D) + (c_D - m_D))
  return jnp.sum(near_NxE * far_NxE, axis=-1)


def mixture_gap(logc_K, dq_NxK):
  """log sum_k e^(b_k - q_k(x) / 2) - log sum_k e^(b_k - q_k(c) / 2) of each row as Relative,
  from the terms at c, logc_K = b_k - q_k(c) / 2, and the gaps dq_NxK = q_k(x) - q_k(c).

  With r_k the components' shares at c, the gap is log sum_k r_k e^(-dq_k / 2): a logsumexp,
  which is exact to float32's absolute precision, or, where the gap is small, log1p of
  sum_k r_k expm1(-dq_k / 2), which is exact to its relative precision."""
  at = jax.nn.logsumexp(logc_K)
  logr_K = logc_K - at
  r_K = jnp.exp(logr_K)
  t_N = jax.nn.logsumexp(logr_K - 0.5 * dq_NxK, axis=-1)
  small_NxK = jnp.where(r_K > 0, r_K * jnp.expm1(-0.5 * dq_NxK), 0.0)
  u_N = jnp.log1p(jnp.sum(small_NxK, axis=-1))
  # log1p's sum leaves out the components whose share at c underflows to 0: it holds only
  # where those add nothing at x either (below e^-30 of the whole)
  dropped_N = jnp.max(jnp.where(r_K > 0, -jnp.inf, logr_K - 0.5 * dq_NxK), axis=-1)
  return Relative(at, jnp.where((jnp.abs(t_N) < 0.5) & (dropped_N < -30.0), u_N, t_N))


def gaussian(x_NxD, m_D, whiten, log_norm, c_D=None) -> Relative:
  """log N(x; m, (A^T A)^-1) with whiten(v) = v A^T and log_norm = log det A - d/2 log 2 pi,
  relative to c (the candidates' mean unless given)."""
  c_D = centre(x_NxD) if c_D is None else c_D
  y_D = whiten((c_D - m_D)[None])[0]
  return Relative(log_norm - 0.5 * jnp.sum(y_D**2),
                  -0.5 * quadratic_gap(whiten, x_NxD, c_D, m_D))


def squared_distance(x_NxD, target_D) -> Relative:
  """-|x - target|^2 (a reward), relative to the candidates' mean."""
  return gaussian(x_NxD, target_D, lambda v: jnp.sqrt(2.0) * v, 0.0)


def isotropic_mixture(x_NxD, means_KxD, log_weights_K, scale) -> Relative:
  """log sum_k w_k N(x; mu_k, scale^2 I), relative to the candidates' mean (a KDE, or blobs)."""
  c_D = centre(x_NxD)
  d = x_NxD.shape[-1]
  near_NxD = (x_NxD - c_D) / scale
  far_KxD = (c_D - means_KxD) / scale
  # q_k(x) - q_k(c) = (x - c) . ((x - mu_k) + (c - mu_k)) / scale^2 = n . (n + 2 f_k), summed
  # one dimension at a time (elementwise: no matmul precision to depend on)
  dq_NxK = sum(near_NxD[:, i, None] * (near_NxD[:, i, None] + 2 * far_KxD[None, :, i])
               for i in range(d))
  logc_K = (log_weights_K - 0.5 * jnp.sum(far_KxD**2, -1)
            - d * jnp.log(scale) - 0.5 * d * jnp.log(2 * jnp.pi))
  return mixture_gap(logc_K, dq_NxK)
