"""The flow's velocity field v(x, t): an MLP on x and sinusoidal features of t.

Shapes in names: B rows, D dimensions of a sample, F time features.
"""

import math

import flax.linen as nn
import jax.numpy as jnp

MAX_FREQUENCY = 100.0  # radians per unit time of the fastest time feature


def time_features(t_B, features: int):
  """sin and cos of t at features / 2 frequencies spaced geometrically from 1 to
  MAX_FREQUENCY: a smooth code of t in [0, 1] that an MLP separates easily."""
  half = features // 2
  freq_H = jnp.exp(jnp.linspace(0.0, math.log(MAX_FREQUENCY), half))
  angle_BxH = t_B[:, None] * freq_H
  return jnp.concatenate([jnp.sin(angle_BxH), jnp.cos(angle_BxH)], axis=-1)


class VelocityMLP(nn.Module):
  """v(x, t) = W_out h_L, h_l = silu(W_l h_{l-1} + b_l), h_0 = [x, time_features(t)]."""
  dims: int = 2
  hidden: int = 128
  layers: int = 3
  time_features: int = 16

  @nn.compact
  def __call__(self, x_BxD, t_B):
    h = jnp.concatenate([x_BxD, time_features(t_B, self.time_features)], axis=-1)
    for i in range(self.layers):
      h = nn.silu(nn.Dense(self.hidden, name=f'hidden_{i}')(h))
    return nn.Dense(self.dims, name='out')(h)
