"""Flow-matching training steps per second: this project against PyTorch, same machine, same run.

  python -m benchmarks.flow_throughput          # the small preset's MLP (3 x 48), batch 256
  python -m benchmarks.flow_throughput --hidden=256 --layers=4 --batch=512 --steps=100  # default

One step is the flow's: a batch of rows drawn with probability proportional to their
weights (inverting the CDF), t ~ U(0, 1) and x0 ~ N(0, I) per row, the velocity MLP
(sinusoidal time features, SiLU layers) on x_t, the squared error to x1 - x0, and Adam
with its rate on a cosine. This project runs `--steps` steps of flow.fit in one jitted
fori_loop, then 8 seeds together with jax.vmap; the reference is the same network, loss
and optimiser in PyTorch's eager loop (one thread, its fastest here): one seed as torch.nn
layers, 8 seeds as one network whose weights are stacked over the seeds (batched matmuls),
so each side runs its best vectorised form. The two sides run `--repeats` times, alternating, and
their medians are compared. Compile time is measured apart and excluded.
"""

import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from collapse_jax.core import cli, validation
from collapse_jax.families import flow
from collapse_jax.nets import mlp

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_integer('steps', 500, 'Train steps timed per run, for both sides.')
  flags.DEFINE_integer('hidden', flow.SMALL['hidden'], 'Width of the MLP.')
  flags.DEFINE_integer('layers', flow.SMALL['layers'], 'Hidden layers of the MLP.')
  flags.DEFINE_integer('batch', flow.SMALL['batch'], 'Rows per step.')
  flags.DEFINE_integer('rows', 1000, 'Training rows the batches are drawn from.')
  flags.DEFINE_integer('seeds', 8, 'Seeds trained together (vmap; stacked weights in PyTorch); '
                       '0 to skip.')
  flags.DEFINE_integer('warmup', 20, 'Untimed PyTorch steps before timing.')
  flags.DEFINE_integer('torch_threads', 1, "PyTorch's threads (0: one per core). One is its "
                       'fastest for this small MLP: with 2 on a shared 2-core machine its eager '
                       'loop ran 28x slower (13 against 363 steps/s).')
  flags.DEFINE_integer('repeats', 3, 'Timed runs of each side, alternating; the medians are '
                       'compared.')


def ours(cfg: flow.TrainConfig, x_SxRxD, seeds: int | None):
  """(compile seconds, a function timing one run of cfg.steps steps), for one seed or
  `seeds` vmapped."""
  fit = functools.partial(flow.fit, cfg)
  w_SxR = jnp.ones(x_SxRxD.shape[:2])
  if seeds is None:
    fn, args = fit, (x_SxRxD[0], w_SxR[0], jax.random.key(0))
  else:
    keys = jax.random.split(jax.random.key(0), seeds)
    fn, args = jax.vmap(fit), (x_SxRxD[:seeds], w_SxR[:seeds], keys)
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0

  def seconds():
    t0 = time.perf_counter()
    _, metrics = jax.block_until_ready(compiled(*args))
    run_s = time.perf_counter() - t0
    if not np.all(np.isfinite(metrics['train_loss'])):
      raise FloatingPointError(f'non-finite loss {metrics["train_loss"]}')
    return run_s
  return compile_s, seconds


def pytorch(cfg: flow.TrainConfig, x_SxRxD, seeds: int | None, warmup: int, threads: int):
  """Run seconds of cfg.steps steps in PyTorch's eager loop, after `warmup` untimed steps:
  torch.nn layers for one seed (None), weights stacked over `seeds` otherwise."""
  import torch  # noqa: PLC0415 (a benchmark-only dependency)

  torch.set_num_threads(threads or os.cpu_count() or 1)
  torch.manual_seed(0)
  s = 1 if seeds is None else seeds
  x_SxRxD = torch.from_numpy(np.array(x_SxRxD[:s]))
  cdf_SxR = torch.cumsum(torch.ones(x_SxRxD.shape[:2]), 1)
  half = cfg.time_features // 2
  freq_H = torch.exp(torch.linspace(0.0, math.log(mlp.MAX_FREQUENCY), half))
  widths = [flow.DIMS + cfg.time_features] + [cfg.hidden] * cfg.layers + [flow.DIMS]
  if seeds is None:
    layers = [torch.nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])]
    params = [p for layer in layers for p in layer.parameters()]

    def net(h_SxBxF):
      h = h_SxBxF[0]
      for layer in layers[:-1]:
        h = torch.nn.functional.silu(layer(h))
      return layers[-1](h)[None]
  else:
    weights = [(torch.nn.Parameter(torch.randn(s, a, b) / math.sqrt(a)),
                torch.nn.Parameter(torch.zeros(s, 1, b))) for a, b in zip(widths[:-1], widths[1:])]
    params = [p for pair in weights for p in pair]

    def net(h_SxBxF):
      for i, (w, b) in enumerate(weights):
        h_SxBxF = torch.baddbmm(b, h_SxBxF, w)
        if i < len(weights) - 1:
          h_SxBxF = torch.nn.functional.silu(h_SxBxF)
      return h_SxBxF

  opt = torch.optim.Adam(params, lr=cfg.lr)
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps + warmup,
                                                     eta_min=cfg.lr * flow.LR_FLOOR)
  rows_S = torch.arange(s)[:, None]

  def step():
    u_SxB = torch.rand(s, cfg.batch)
    i_SxB = torch.searchsorted(cdf_SxR, u_SxB * cdf_SxR[:, -1:], right=True)
    i_SxB.clamp_(max=cdf_SxR.shape[1] - 1)
    x1 = x_SxRxD[rows_S, i_SxB]
    t = torch.rand(s, cfg.batch, 1)
    x0 = torch.randn_like(x1)
    angle = t * freq_H
    h = torch.cat([(1 - t) * x0 + t * x1, torch.sin(angle), torch.cos(angle)], -1)
    loss = ((net(h) - (x1 - x0)) ** 2).sum(-1).mean(-1).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()

  for _ in range(warmup):
    step()
  t0 = time.perf_counter()
  for _ in range(cfg.steps):
    step()
  return time.perf_counter() - t0


def main(argv):
  del argv
  try:
    for flag in ('steps', 'hidden', 'layers', 'batch', 'rows', 'repeats'):
      if FLAGS[flag].value < 1:
        raise validation.ConfigError(flag, f'must be at least 1, got {FLAGS[flag].value}')
    if FLAGS.seeds < 0:
      raise validation.ConfigError('seeds', f'must be non-negative, got {FLAGS.seeds}')
  except validation.ConfigError as e:
    cli.fail(e)
  cfg = flow.TrainConfig(hidden=FLAGS.hidden, layers=FLAGS.layers, steps=FLAGS.steps,
                         batch=FLAGS.batch, lr=flow.SMALL['lr'])
  x_SxRxD = jax.vmap(lambda k: flow.ring(0.1).draw(k, FLAGS.rows))(
      jax.random.split(jax.random.key(1), max(FLAGS.seeds, 1)))

  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}; {os.cpu_count()} CPU '
        f'cores; MLP {FLAGS.layers} x {FLAGS.hidden}, batch {FLAGS.batch}, {FLAGS.steps} steps, '
        f'{FLAGS.repeats} runs each side')
  results, threads = {}, FLAGS.torch_threads or os.cpu_count()
  for seeds in [None] + ([FLAGS.seeds] if FLAGS.seeds else []):
    compile_s, ours_seconds = ours(cfg, x_SxRxD, seeds)
    ours_s, ref_s = [], []
    for _ in range(FLAGS.repeats):
      ours_s.append(ours_seconds())
      ref_s.append(pytorch(cfg, x_SxRxD, seeds, FLAGS.warmup, FLAGS.torch_threads))
    s = seeds or 1
    rate, ref = s * FLAGS.steps / np.median(ours_s), s * FLAGS.steps / np.median(ref_s)
    spread = lambda runs: ', '.join(f'{s * FLAGS.steps / t:.0f}' for t in runs)  # noqa: E731
    label = 'one seed' if seeds is None else f'{seeds} seeds'
    print(f'{label:9s} collapse-jax : {rate:9.0f} seed-steps/s  (runs {spread(ours_s)}; '
          f'compile {compile_s:.1f} s, excluded)')
    print(f'{label:9s} PyTorch      : {ref:9.0f} seed-steps/s  (eager, {threads} thread(s), '
          f'{"nn.Linear" if seeds is None else "stacked weights, bmm"}; runs {spread(ref_s)})')
    print(f'{label:9s} ratio        : {rate / ref:9.2f}x  (medians)')
    results[s] = rate
  if FLAGS.seeds:
    print(f'vmap {FLAGS.seeds} seeds: {results[FLAGS.seeds] / results[1]:.2f}x the seed-steps/s of '
          'one seed')


if __name__ == '__main__':
  define_flags()
  app.run(main)
