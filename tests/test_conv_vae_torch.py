"""The Flax VAE against the paper's PyTorch VAE: same weights, same outputs, same Adam step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='needs PyTorch (the [test] extra on Python 3.11)')
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from collapse_jax.families import vae
from collapse_jax.nets import conv_vae

pytestmark = pytest.mark.torch
B, L = 8, 20


class TorchVAE(nn.Module):
  """The network as the paper's PyTorch code writes it (NCHW)."""

  def __init__(self, latent=L):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 64, 4, 2, 1)
    self.conv2 = nn.Conv2d(64, 128, 4, 2, 1)
    self.fc_mean = nn.Linear(128 * 7 * 7, latent)
    self.fc_logvar = nn.Linear(128 * 7 * 7, latent)
    self.fc_dec = nn.Linear(latent, 128 * 7 * 7)
    self.deconv1 = nn.ConvTranspose2d(128, 64, 4, 2, 1)
    self.deconv2 = nn.ConvTranspose2d(64, 1, 4, 2, 1)

  def encode(self, x_BxD):
    h = F.relu(self.conv2(F.relu(self.conv1(x_BxD.view(-1, 1, 28, 28)))))
    h_BxF = h.flatten(1)  # flattened (C, H, W)
    return self.fc_mean(h_BxF), self.fc_logvar(h_BxF)

  def decode(self, z_BxL):
    h = self.fc_dec(z_BxL).view(-1, 128, 7, 7)
    return torch.sigmoid(self.deconv2(F.relu(self.deconv1(h)))).view(-1, 784)

  def forward(self, x_BxD, eps_BxL):
    mean_BxL, logvar_BxL = self.encode(x_BxD)
    recon_BxD = self.decode(mean_BxL + torch.exp(0.5 * logvar_BxL) * eps_BxL)
    return recon_BxD, mean_BxL, logvar_BxL


def _np(t):
  """A copy: jnp.asarray may share a NumPy array's memory, and opt.step() writes in place."""
  return t.detach().cpu().numpy().copy()


def flax_params(net: TorchVAE, dtype=jnp.float32):
  """The Flax params pytree holding the PyTorch module's weights.

  Conv: OIHW -> HWIO. Transposed conv (conv_vae.UpConv): PyTorch's (in, out, kh, kw) ->
  (kh, kw, in, out), no spatial flip. Dense: (out, in) -> (in, out), and the 128*7*7
  side permuted from PyTorch's (C, H, W) flatten order to Flax's (H, W, C).
  """
  leaf = lambda kernel, bias: {'kernel': jnp.asarray(kernel, dtype),
                               'bias': jnp.asarray(bias, dtype)}
  conv = lambda m: leaf(_np(m.weight).transpose(2, 3, 1, 0), _np(m.bias))
  deconv = lambda m: leaf(_np(m.weight).transpose(2, 3, 0, 1), _np(m.bias))

  def dense_in(m):  # rows of the kernel: (C, H, W) -> (H, W, C)
    w_FxL = _np(m.weight).T.reshape(128, 7, 7, -1).transpose(1, 2, 0, 3).reshape(128 * 49, -1)
    return leaf(w_FxL, _np(m.bias))

  def dense_out(m):  # columns and bias: (C, H, W) -> (H, W, C)
    w_LxF = _np(m.weight).T.reshape(-1, 128, 7, 7).transpose(0, 2, 3, 1).reshape(-1, 128 * 49)
    return leaf(w_LxF, _np(m.bias).reshape(128, 7, 7).transpose(1, 2, 0).reshape(-1))

  return {
      'encoder': {'conv1': conv(net.conv1), 'conv2': conv(net.conv2),
                  'mean': dense_in(net.fc_mean), 'logvar': dense_in(net.fc_logvar)},
      'decoder': {'dense': dense_out(net.fc_dec),
                  'deconv1': deconv(net.deconv1), 'deconv2': deconv(net.deconv2)},
  }


def _torch_net(seed, dtype):
  torch.manual_seed(seed)
  return TorchVAE().to(dtype)


def _images(seed, n=B):
  """Images with every pixel in [0, 1], as the VAE trains on."""
  return np.random.default_rng(seed).uniform(size=(n, conv_vae.PIXELS)).astype(np.float32)


MODEL = conv_vae.VAE(L)
CFG = vae.TrainConfig()
encode_jit = jax.jit(lambda p, x: MODEL.apply({'params': p}, x, method=vae.VAE.encode))
decode_jit = jax.jit(
    lambda p, z: jax.nn.sigmoid(MODEL.apply({'params': p}, z, method=vae.VAE.decode)))
step_jit = jax.jit(lambda p, o, x, key: vae.train_step(MODEL, CFG.optimizer(), p, o, x, key))


def test_params_pytree_matches_flax_init():
  ours = flax_params(_torch_net(0, torch.float32))
  ref = jax.eval_shape(lambda key: vae.init(MODEL, key), jax.random.key(0))
  assert jax.tree.structure(ours) == jax.tree.structure(ref)
  assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, ref)


def test_forward_matches_pytorch():
  """Encoder mean/logvar and decoder pixels, float32 Flax against a float64 PyTorch reference."""
  net = _torch_net(1, torch.float64)
  params = flax_params(net)
  x_BxD = _images(1)
  z_BxL = np.random.default_rng(2).normal(size=(B, L)).astype(np.float32)
  with torch.no_grad():
    mean_ref, logvar_ref = net.encode(torch.from_numpy(x_BxD).double())
    pixels_ref = net.decode(torch.from_numpy(z_BxL).double())
  mean_BxL, logvar_BxL = encode_jit(params, x_BxD)
  np.testing.assert_allclose(mean_BxL, _np(mean_ref), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logvar_BxL, _np(logvar_ref), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(decode_jit(params, z_BxL), _np(pixels_ref), rtol=1e-5, atol=1e-5)
  # The outputs vary across the batch and the pixels, so a layout error could not hide.
  assert np.std(_np(pixels_ref)) > 1e-3 and np.std(_np(mean_ref), axis=0).min() > 1e-3


def test_flipped_deconv_kernel_does_not_match():
  """The test above can tell a spatially flipped transposed-conv kernel from the right one."""
  net = _torch_net(1, torch.float64)
  params = flax_params(net)
  k = params['decoder']['deconv1']['kernel']
  params['decoder']['deconv1']['kernel'] = k[::-1, ::-1]
  z_BxL = np.random.default_rng(2).normal(size=(B, L)).astype(np.float32)
  with torch.no_grad():
    pixels_ref = _np(net.decode(torch.from_numpy(z_BxL).double()))
  assert np.abs(np.asarray(decode_jit(params, z_BxL)) - pixels_ref).max() > 1e-3


def test_one_adam_step_matches_pytorch():
  """vae.train_step against torch.optim.Adam(lr=1e-3, weight_decay=1e-5), same weights and noise.

  The noise is the one train_step draws, jax.random.normal(key, (B, L)), fed to PyTorch.
  Both sides run float64: a first Adam step moves a weight by lr * g / (|g| + 1e-8), so
  in float32 a gradient near its rounding error (sums of 200k terms) moves it by up to
  about 1e-5 differently; in float64 the two steps agree to about 1e-13.
  """
  with jax.enable_x64(True):
    net = _torch_net(3, torch.float64)
    params = flax_params(net, jnp.float64)
    x_BxD = _images(3, n=CFG.batch).astype(np.float64)
    key = jax.random.key(4)
    eps_BxL = np.array(jax.random.normal(key, (CFG.batch, L)))

    opt = torch.optim.Adam(net.parameters(), lr=CFG.lr, weight_decay=CFG.weight_decay)
    x_t = torch.from_numpy(x_BxD)
    recon_BxD, mean_BxL, logvar_BxL = net(x_t, torch.from_numpy(eps_BxL))
    kl = -0.5 * torch.sum(1 + logvar_BxL - mean_BxL.pow(2) - logvar_BxL.exp())
    loss = F.binary_cross_entropy(recon_BxD, x_t, reduction='sum') + kl
    opt.zero_grad()
    loss.backward()
    opt.step()

    new_params, _, loss_per_image = step_jit(params, CFG.optimizer().init(params), x_BxD, key)
    assert eps_BxL.dtype == np.float64 and jax.tree.leaves(new_params)[0].dtype == jnp.float64
    np.testing.assert_allclose(float(loss_per_image), loss.item() / CFG.batch, rtol=1e-12)
    moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), new_params,
                         params)
    assert min(jax.tree.leaves(moved)) > 0.5 * CFG.lr  # every tensor took a step
    jax.tree.map(lambda ours, ref: np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-11),
                 new_params, flax_params(net, jnp.float64))
