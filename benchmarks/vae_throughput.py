"""VAE training images per second: this project against PyTorch, same machine, same run.

  python -m benchmarks.vae_throughput                 # 2 steps; 1 and 2 seeds (~3 min on 2 cores)
  python -m benchmarks.vae_throughput --steps=20 --seeds_list=1,2,4,8   # on a GPU

One step is the paper's: Adam (lr 1e-3, weight decay 1e-5) on a batch of 256
MNIST-sized images, loss summed over the batch. This project runs `--steps`
steps of vae.train_step in one jitted fori_loop, as vae.fit does, then S seeds
together with jax.vmap; the reference runs the same network and optimiser in
PyTorch's eager loop on every core, after a warm-up. The two sides run
`--repeats` times, alternating, and their medians are compared: PyTorch's rate
on a shared 2-core machine varies by up to 2x between runs. Compile time is
measured apart and excluded from the rates. The host-loop line times the same jitted
step called from Python, to show what the compiled loop costs or saves.
"""

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from collapse_jax.core import cli, validation
from collapse_jax.families import vae
from collapse_jax.nets import conv_vae

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags: defined when it runs, not when benchmarks.accelerator imports it."""
  flags.DEFINE_integer('steps', 2, 'Train steps timed per run, for both sides.')
  flags.DEFINE_integer('batch', 256, 'Images per step.')
  flags.DEFINE_list('seeds_list', ['1', '2'], 'Seeds trained together with jax.vmap; '
                    'empty to skip.')
  flags.DEFINE_integer('warmup', 2, 'Untimed PyTorch steps before timing.')
  flags.DEFINE_integer('repeats', 3, 'Timed runs of each side, alternating; the medians are '
                       'compared.')


def train_steps(model, tx, steps: int, params, opt_state, x_KxBxD, key):
  """`steps` train steps on the batches of x, the k-th batch's noise from fold_in(key, k)."""
  def step(k, state):
    params, opt_state, _ = state
    return vae.train_step(model, tx, params, opt_state, x_KxBxD[k], jax.random.fold_in(key, k))
  return jax.lax.fori_loop(0, steps, step, (params, opt_state, jnp.float32(0.0)))


def ours(cfg: vae.TrainConfig, x_KxBxD, seeds: int | None, state=None):
  """(compile seconds, a function timing one run of the steps), for one seed or `seeds` vmapped;
  from `state`, (params, opt_state) stacked over the seeds, if given, else from vae.init's."""
  model, tx = conv_vae.VAE(cfg.latent), cfg.optimizer()
  run = functools.partial(train_steps, model, tx, x_KxBxD.shape[0])
  init = lambda key: (lambda p: (p, tx.init(p)))(vae.init(model, key))
  if seeds is None:
    run_fn, keys = run, jax.random.key(0)
  else:
    run_fn = jax.vmap(run, in_axes=(0, 0, None, 0))
    keys = jax.random.split(jax.random.key(0), seeds)
  params, opt_state = state or jax.jit(init if seeds is None else jax.vmap(init))(keys)
  t0 = time.perf_counter()
  compiled = jax.jit(run_fn).lower(params, opt_state, x_KxBxD, keys).compile()
  compile_s = time.perf_counter() - t0

  def seconds():
    t0 = time.perf_counter()
    _, _, loss = jax.block_until_ready(compiled(params, opt_state, x_KxBxD, keys))
    run_s = time.perf_counter() - t0
    if not np.all(np.isfinite(loss)):
      raise FloatingPointError(f'non-finite loss {loss} after {x_KxBxD.shape[0]} steps')
    return run_s
  return compile_s, seconds


def host_loop(cfg: vae.TrainConfig, x_KxBxD):
  """(compile seconds, run seconds) of the same steps, vae.train_step jitted and called per step."""
  model, tx = conv_vae.VAE(cfg.latent), cfg.optimizer()
  params = vae.init(model, jax.random.key(0))
  state = (params, tx.init(params))
  key = jax.random.key(0)
  t0 = time.perf_counter()
  step = jax.jit(functools.partial(vae.train_step, model, tx)).lower(
      *state, x_KxBxD[0], key).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for k in range(x_KxBxD.shape[0]):
    state = step(*state, x_KxBxD[k], jax.random.fold_in(key, k))[:2]
  jax.block_until_ready(state)
  return compile_s, time.perf_counter() - t0


def pytorch(cfg: vae.TrainConfig, x_KxBxD, warmup: int):
  """Run seconds of the same steps in PyTorch's eager loop, after `warmup` untimed steps."""
  import torch  # noqa: PLC0415 (a benchmark-only dependency)
  import torch.nn.functional as F  # noqa: N812, PLC0415
  from torch import nn  # noqa: PLC0415

  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  enc = nn.Sequential(nn.Conv2d(1, 64, 4, 2, 1), nn.ReLU(), nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(),
                      nn.Flatten())
  fc_mean, fc_logvar = nn.Linear(128 * 7 * 7, cfg.latent), nn.Linear(128 * 7 * 7, cfg.latent)
  fc_dec = nn.Linear(cfg.latent, 128 * 7 * 7)
  dec = nn.Sequential(nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),
                      nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Sigmoid())
  net = nn.ModuleList([enc, fc_mean, fc_logvar, fc_dec, dec])
  opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
  x_KxBxD = torch.from_numpy(np.array(x_KxBxD))

  def step(x_BxD):
    h_BxF = enc(x_BxD.view(-1, 1, conv_vae.SIDE, conv_vae.SIDE))
    mean_BxL, logvar_BxL = fc_mean(h_BxF), fc_logvar(h_BxF)
    z_BxL = mean_BxL + torch.exp(0.5 * logvar_BxL) * torch.randn_like(mean_BxL)
    recon_BxD = dec(fc_dec(z_BxL).view(-1, 128, 7, 7)).view(-1, conv_vae.PIXELS)
    kl = -0.5 * torch.sum(1 + logvar_BxL - mean_BxL.pow(2) - logvar_BxL.exp())
    loss = F.binary_cross_entropy(recon_BxD, x_BxD, reduction='sum') + kl
    opt.zero_grad()
    loss.backward()
    opt.step()

  for k in range(warmup):
    step(x_KxBxD[k % len(x_KxBxD)])
  t0 = time.perf_counter()
  for x_BxD in x_KxBxD:
    step(x_BxD)
  return time.perf_counter() - t0


def main(argv):
  del argv
  try:
    seeds_list = cli.parse_ints('seeds_list', FLAGS.seeds_list)
    for flag, ok in [('steps', FLAGS.steps >= 1), ('batch', FLAGS.batch >= 1),
                     ('repeats', FLAGS.repeats >= 1),
                     ('seeds_list', all(s >= 1 for s in seeds_list))]:
      if not ok:
        raise validation.ConfigError(flag, 'must be positive')
  except validation.ConfigError as e:
    cli.fail(e)
  cfg = vae.TrainConfig(batch=FLAGS.batch)
  x_KxBxD = jax.random.uniform(jax.random.key(1), (FLAGS.steps, cfg.batch, conv_vae.PIXELS))
  images = FLAGS.steps * cfg.batch

  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}; '
        f'{os.cpu_count()} CPU cores; batch {cfg.batch}, {FLAGS.steps} steps, '
        f'{FLAGS.repeats} runs each side')
  ours_s, ref_s = [], []
  compile_s, ours_seconds = ours(cfg, x_KxBxD, None)
  for _ in range(FLAGS.repeats):
    ours_s.append(ours_seconds())
    ref_s.append(pytorch(cfg, x_KxBxD, FLAGS.warmup))
  run_s, ref_run_s = float(np.median(ours_s)), float(np.median(ref_s))
  rate, ref, one_seed_step = images / run_s, images / ref_run_s, run_s / FLAGS.steps
  spread = lambda runs: ', '.join(f'{images / t:.0f}' for t in runs)
  print(f'collapse-jax : {rate:10.1f} images/s  ({one_seed_step * 1e3:.0f} ms/step, one seed, '
        f'fori_loop; runs {spread(ours_s)}; compile {compile_s:.1f} s, excluded)')
  compile_s, host_s = host_loop(cfg, x_KxBxD)
  print(f'  host loop  : {images / host_s:10.1f} images/s  ({host_s / FLAGS.steps * 1e3:.0f} '
        f'ms/step, the jitted step called per step; compile {compile_s:.1f} s, excluded)')
  print(f'PyTorch      : {ref:10.1f} images/s  ({ref_run_s / FLAGS.steps * 1e3:.0f} ms/step, '
        f'eager, {os.cpu_count()} threads, after {FLAGS.warmup} warm-up steps; runs '
        f'{spread(ref_s)})')
  print(f'ratio        : {rate / ref:10.2f}x  (medians)')

  for seeds in seeds_list:
    compile_s, seconds = ours(cfg, x_KxBxD, seeds)
    run_s = seconds()
    per_step = run_s / FLAGS.steps
    print(f'vmap {seeds:4d} seeds: {per_step * 1e3:8.0f} ms/step  '
          f'({per_step / one_seed_step:5.2f}x one seed; {seeds * images / run_s:8.1f} images/s; '
          f'compile {compile_s:.1f} s, excluded)')


if __name__ == '__main__':
  define_flags()
  app.run(main)
