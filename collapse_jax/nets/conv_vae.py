"""The paper's convolutional VAE for 28 x 28 images, and the small MLP that names a digit.

Images are rows of 784 pixels in [0, 1] (x_BxD, D = 784); the network sees them as
28 x 28 x 1 (NHWC). Each convolution is one matmul over 2 x 2 pixel blocks.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

SIDE, PIXELS = 28, 784


def space_to_depth(x_BxHxWxC):
  """2 x 2 pixel blocks as channels: (B, 2m, 2m, C) -> (B, m, m, 4C), channels (row, col, c)."""
  b, h, w, c = x_BxHxWxC.shape
  x = x_BxHxWxC.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // 2, w // 2, 4 * c)


def depth_to_space(x_BxMxMx4C):
  """The inverse of space_to_depth."""
  b, m, _, c4 = x_BxMxMx4C.shape
  x = x_BxMxMx4C.reshape(b, m, m, 2, 2, c4 // 4).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, 2 * m, 2 * m, c4 // 4)


def kernel_blocks(kernel_4x4xCxO):
  """A 4 x 4 kernel's taps as 2 x 2 blocks: [i, j, r, s] is tap (2i + r, 2j + s)."""
  return kernel_4x4xCxO.reshape(2, 2, 2, 2, *kernel_4x4xCxO.shape[2:]).transpose(0, 2, 1, 3, 4, 5)


_BLOCKS = ((0, 0), (0, 1), (1, 0), (1, 1))


def down_conv(x_BxNxNxC, kernel_4x4xCxO):
  """PyTorch's Conv2d(kernel 4, stride 2, padding 1), n x n -> n/2 x n/2, as one matmul.

  Padded and taken as 2 x 2 blocks (space_to_depth), the strided 4 x 4
  convolution is a 2 x 2 one of stride 1: each output reads blocks (a + i, b + j),
  i, j in {0, 1}, four contiguous windows, concatenated and multiplied at once.
  No convolution op: XLA's CPU backend runs convolution gradients inside a loop
  body (a training loop under fori_loop or scan) some 20-40x slower than
  outside one, and matmuls and slices have no such penalty.
  """
  b, n, _, c = x_BxNxNxC.shape
  s = space_to_depth(jnp.pad(x_BxNxNxC, ((0, 0), (1, 1), (1, 1), (0, 0))))
  h = n // 2
  cols = jnp.concatenate([s[:, i:i + h, j:j + h] for i, j in _BLOCKS], axis=-1)
  kernel = kernel_blocks(kernel_4x4xCxO).reshape(16 * c, -1)
  return (cols.reshape(b * h * h, 16 * c) @ kernel).reshape(b, h, h, -1)


def up_conv(x_BxNxNxC, kernel_4x4xCxO):
  """PyTorch's ConvTranspose2d(kernel 4, stride 2, padding 1), n x n -> 2n x 2n, as one matmul.

  The adjoint of down_conv: every input pixel's 16 tap contributions in one
  matmul, then added into place, input pixel a's block i landing on block
  a + i of the padded output, which depth_to_space unfolds and the padding is
  cropped. kernel[ky, kx, in, out] is PyTorch's weight[in, out, ky, kx].
  """
  b, n, _, c = x_BxNxNxC.shape
  kernel = kernel_blocks(kernel_4x4xCxO).transpose(4, 0, 1, 2, 3, 5).reshape(c, -1)
  taps = (x_BxNxNxC.reshape(b * n * n, c) @ kernel).reshape(b, n, n, 4, -1)
  blocks = sum(jnp.pad(taps[:, :, :, q], ((0, 0), (i, 1 - i), (j, 1 - j), (0, 0)))
               for q, (i, j) in enumerate(_BLOCKS))
  return depth_to_space(blocks)[:, 1:-1, 1:-1]


class DownConv(nn.Module):
  """Conv2d(kernel 4, stride 2, padding 1); the kernel is HWIO, as nn.Conv's."""
  features: int

  @nn.compact
  def __call__(self, x_BxNxNxC):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (4, 4, x_BxNxNxC.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    return down_conv(x_BxNxNxC, kernel) + bias


class Encoder(nn.Module):
  latent: int = 20

  @nn.compact
  def __call__(self, x_BxHxWx1):
    h = nn.relu(DownConv(64, name='conv1')(x_BxHxWx1))
    h = nn.relu(DownConv(128, name='conv2')(h))
    h_BxF = h.reshape(h.shape[0], -1)  # flattened (H, W, C)
    return nn.Dense(self.latent, name='mean')(h_BxF), nn.Dense(self.latent, name='logvar')(h_BxF)


class UpConv(nn.Module):
  """ConvTranspose2d(kernel 4, stride 2, padding 1); kernel[ky, kx, in, out]."""
  features: int

  @nn.compact
  def __call__(self, x_BxNxNxC):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (4, 4, x_BxNxNxC.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    return up_conv(x_BxNxNxC, kernel) + bias


class Decoder(nn.Module):
  """z -> pixel logits; the images are their sigmoid."""

  @nn.compact
  def __call__(self, z_BxL):
    h = nn.Dense(128 * 7 * 7, name='dense')(z_BxL).reshape(z_BxL.shape[0], 7, 7, 128)
    h = nn.relu(UpConv(64, name='deconv1')(h))  # 7 -> 14
    return UpConv(1, name='deconv2')(h)  # 14 -> 28


class VAE(nn.Module):
  latent: int = 20

  def setup(self):
    self.encoder = Encoder(self.latent)
    self.decoder = Decoder()

  def __call__(self, x_BxD, key):
    """(pixel logits, latent mean, latent log-variance) of a batch of images."""
    mean_BxL, logvar_BxL = self.encode(x_BxD)
    z_BxL = mean_BxL + jnp.exp(0.5 * logvar_BxL) * jax.random.normal(key, mean_BxL.shape)
    return self.decode(z_BxL), mean_BxL, logvar_BxL

  def encode(self, x_BxD):
    return self.encoder(x_BxD.reshape(-1, SIDE, SIDE, 1))

  def decode(self, z_BxL):
    return self.decoder(z_BxL).reshape(z_BxL.shape[0], PIXELS)


# ---------------------------------------------------------------- loss

def bce_sum(logits_BxD, x_BxD):
  """Binary cross-entropy of images x under Bernoulli(sigmoid(logits)), summed over pixels."""
  return jnp.sum(jnp.maximum(logits_BxD, 0) - logits_BxD * x_BxD
                 + jnp.log1p(jnp.exp(-jnp.abs(logits_BxD))), axis=-1)


def kl_to_prior(mean_BxL, logvar_BxL):
  """KL(N(mean, exp(logvar)) || N(0, I)), summed over latent dimensions."""
  return 0.5 * jnp.sum(mean_BxL**2 + jnp.exp(logvar_BxL) - 1.0 - logvar_BxL, axis=-1)


def neg_elbo_B(model: VAE, params, x_BxD, key):
  """The negative ELBO of each image, one sample of z."""
  logits_BxD, mean_BxL, logvar_BxL = model.apply({'params': params}, x_BxD, key)
  return bce_sum(logits_BxD, x_BxD) + kl_to_prior(mean_BxL, logvar_BxL)


# ---------------------------------------------------------------- the digit classifier

class Classifier(nn.Module):
  """A small MLP that names the digit in an image: generated classes as a number."""

  @nn.compact
  def __call__(self, x_BxD):
    return nn.Dense(10, name='out')(nn.relu(nn.Dense(256, name='hidden')(x_BxD)))
