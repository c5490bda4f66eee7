"""Where the language model's arrays live: seeds stacked on a leading axis, rows of blocks and
prompts split over every device (data parallel), models replicated on all of them."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from collapse_jax.core import placement


def stack(trees):
  """One tree of the trees stacked on a new leading axis (seeds)."""
  return jax.tree.map(lambda *x: jnp.stack(x), *trees)


def seed(tree_S, s: int):
  """Seed s's slice of a stacked tree."""
  return jax.tree.map(lambda x: x[s], tree_S)


def mesh():
  return placement.mesh('data')


def split(x):
  """Rows (the second-last axis: ..., rows, tokens) over the devices (data parallel)."""
  x = np.asarray(x)
  return placement.place(x, 'data', dim=x.ndim - 2)


def replicated(tree):
  """The same values on every device of every process."""
  sharding = NamedSharding(mesh(), PartitionSpec())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  host = lambda x: placement.to_host(x) if isinstance(x, jax.Array) else np.asarray(x)  # noqa: E731
  return jax.tree.map(lambda x: jax.make_array_from_callback(
      np.shape(x), sharding, lambda index, v=host(x): v[index]), tree)


def like(tree):
  """Abstract arrays with the shapes, types and shardings of `tree`: a target to restore onto."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def chunks(ids, size: int):
  """Fixed-size chunks of the rows of ids (..., rows, tokens), the last padded by repeating
  its final row, and each one's real rows."""
  for start in range(0, ids.shape[-2], size):
    part = ids[..., start:start + size, :]
    pad = [(0, 0)] * (ids.ndim - 2) + [(0, size - part.shape[-2]), (0, 0)]
    yield start, np.pad(part, pad, 'edge'), part.shape[-2]


fold_in = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))  # (key_S, data) -> key_S
