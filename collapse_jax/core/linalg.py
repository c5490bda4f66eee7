"""LAPACK-backed decompositions that never deadlock a CPU split into devices.

jaxlib's CPU LAPACK kernels split a large enough batch of matrices over XLA's
intra-op thread pool and block until the pieces are done. When a CPU is split
into several devices (--cpu_devices) and each runs a batched decomposition at
once, every pool thread can be blocked so, with nothing left to run the pieces:
the program waits forever at zero CPU. A batch of one matrix never splits, so on
a CPU these functions, vmapped, run their decomposition one matrix at a time
(lax.map); on an accelerator they are the batched ones. jaxlib 0.10.0-0.10.2 have the
splitting kernels; later open-source builds do not split. Each wraps a lambda: a
keyword default (UPLO, upper) would break custom_vmap.
"""

import jax
import jax.numpy as jnp


def one_matrix_per_call(f):
  """f of single matrices, whose vmap on a CPU calls it on one matrix at a time."""
  g = jax.custom_batching.custom_vmap(f)

  @g.def_vmap
  def rule(axis_size, in_batched, *args):
    args = [a if b else jnp.broadcast_to(a, (axis_size, *jnp.shape(a)))
            for a, b in zip(args, in_batched)]
    if jax.default_backend() == 'cpu':
      out = jax.lax.map(lambda a: g(*a), tuple(args))
    else:
      out = jax.vmap(f)(*args)
    return out, jax.tree.map(lambda _: True, out)
  return g


qr_r = one_matrix_per_call(lambda a: jnp.linalg.qr(a, mode='r'))
svdvals = one_matrix_per_call(lambda a: jnp.linalg.svd(a, compute_uv=False))
eigh = one_matrix_per_call(lambda a: tuple(jnp.linalg.eigh(a)))
