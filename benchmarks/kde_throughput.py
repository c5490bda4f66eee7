"""KDE generation-fits per second: this project against NumPy, same machine, same run.

  python -m benchmarks.kde_throughput                      # 1,000 seeds x 100 generations, N = 250
  python -m benchmarks.kde_throughput --ref_dtype=float32  # the NumPy loop in float32
  python -m benchmarks.kde_throughput --seeds=200 --ref_seeds=2   # smaller, a minute or so

One generation-fit is one seed's step of the recursion under `replace` with a fixed
bandwidth: store the last N samples as the KDE, draw N samples from it (a stored point
picked uniformly plus N(0, h^2 I)), and measure it as the experiment does: the NLL of
the held-out real samples (H x N Gaussian kernels, a logsumexp each), the spread, and the
squared MMD between its samples and the held-out set (N x N + N x H kernels). Two
references do the same: NumPy vectorised over seeds in float32 (benchmarks/numpy_kde.py:
every seed advanced together, a Python loop over generations only; what a user would
write, and the stronger reference), and NumPy in a Python loop over seeds and generations,
each generation vectorised. Ratios are printed against both, in wall clock and per CPU
second. Compile time is measured apart and excluded.
"""

import os

import jax
import numpy as np
from absl import app, flags

from benchmarks import numpy_kde, timing
from collapse_jax.core import cli
from collapse_jax.families import kde

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags: defined when it runs, not when another script imports it."""
  flags.DEFINE_integer('seeds', 1000, 'Seeds run together by this project.')
  flags.DEFINE_integer('generations', 100, 'Generations timed for this project.')
  flags.DEFINE_integer('samples', 250, 'Samples N per generation.')
  flags.DEFINE_integer('heldout', 250, 'Held-out real samples H per seed.')
  flags.DEFINE_float('bandwidth', 0.1, 'The fixed bandwidth h.')
  flags.DEFINE_integer('chunk', 50, 'Generations per compiled chunk, as --checkpoint_every.')
  flags.DEFINE_integer('ref_seeds', 10, 'Seeds for the NumPy loop (0: skip it).')
  flags.DEFINE_integer('vec_seeds', 8, 'Seeds for NumPy vectorised over seeds, float32 (0: skip '
                       "it); its rate falls with more, as a generation's arrays leave the cache.")
  flags.DEFINE_enum('ref_dtype', 'float64', ['float64', 'float32'], "The NumPy loop's dtype "
                    "(float64: NumPy's default).")
  flags.DEFINE_integer('cpu_devices', 0, 'Split a CPU into this many devices (0: one per core).')


def ours(cfg: kde.KDEConfig, chunk: int):
  """(compile seconds, warm wall seconds, warm CPU seconds) of the whole recursive loop,
  metrics included, through the driver's compiled programs (timing.sweep_times)."""
  return timing.sweep_times(kde.family(cfg), cfg.sweep('replace'), chunk)


def _moons(rng, n, noise):
  t = np.pi * rng.random(n)
  upper = rng.random(n) < 0.5
  x = np.where(upper[:, None], np.stack([np.cos(t), np.sin(t)], 1),
               np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
  return x + noise * rng.standard_normal((n, 2))


def _sq_dist(a, b):
  return (a[:, None, 0] - b[None, :, 0]) ** 2 + (a[:, None, 1] - b[None, :, 1]) ** 2


def loop_seed(cfg: kde.KDEConfig, seed: int, dtype):
  """One seed's recursion in NumPy, each generation vectorised: its metrics per generation,
  a dict of G + 1 arrays."""
  n, h, scale = cfg.samples, cfg.bandwidth, cfg.mmd_scale
  kernel = lambda a, b: np.exp(-_sq_dist(a, b) / (2 * scale**2))  # noqa: E731
  rng = np.random.default_rng(seed)
  heldout = _moons(rng, cfg.heldout, cfg.target_noise).astype(dtype)
  t_self = (kernel(heldout, heldout).sum() - cfg.heldout) / (cfg.heldout * (cfg.heldout - 1))
  points = _moons(rng, n, cfg.target_noise).astype(dtype)
  out = {'heldout_nll': [], 'spread': [], 'mmd2': []}
  for _ in range(cfg.generations + 1):
    synth = points[rng.integers(n, size=n)] + h * rng.standard_normal((n, 2)).astype(dtype)
    a = -_sq_dist(heldout, points) / (2 * h**2) - np.log(n)
    top = a.max(1)
    nll = -np.mean(top + np.log(np.exp(a - top[:, None]).sum(1)) - np.log(2 * np.pi * h**2))
    spread = points.var(0).sum() + 2 * h**2
    mmd2 = ((kernel(synth, synth).sum() - n) / (n * (n - 1)) + t_self
            - 2 * kernel(synth, heldout).mean())
    assert np.isfinite(nll + spread + mmd2)
    for name, value in (('heldout_nll', nll), ('spread', spread), ('mmd2', mmd2)):
      out[name].append(value)
    points = synth
  return {k: np.asarray(v) for k, v in out.items()}


def numpy_loop(cfg: kde.KDEConfig, seeds: int, dtype):
  """(wall seconds, CPU seconds) of the same recursion in NumPy, one seed at a time."""
  return timing.clocked(lambda: [loop_seed(cfg, seed, dtype) for seed in range(seeds)])


def numpy_vectorised(cfg: kde.KDEConfig, seeds: int):
  """(wall seconds, CPU seconds) of the same recursion in NumPy vectorised over seeds, in
  float32 (benchmarks/numpy_kde.py)."""
  rng = np.random.default_rng(0)
  return timing.clocked(lambda: numpy_kde.replace_run(
      seeds, cfg.generations, cfg.samples, cfg.heldout, cfg.bandwidth, cfg.target_noise,
      cfg.mmd_scale, rng, np.float32))


def main(argv):
  del argv
  cli.split_cpu(FLAGS.cpu_devices or os.cpu_count() or 1)
  cfg = kde.KDEConfig(seeds=FLAGS.seeds, generations=FLAGS.generations, samples=FLAGS.samples,
                      heldout=FLAGS.heldout, bandwidth=FLAGS.bandwidth, target='moons',
                      bandwidth_rule='fixed').validate()
  compile_s, warm_s, warm_cpu_s = ours(cfg, min(FLAGS.chunk, cfg.generations))
  fits = cfg.seeds * (cfg.generations + 1)
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}')
  print(f'collapse-jax    : {fits / warm_s:7.0f} fits/s  ({cfg.seeds} seeds x {cfg.generations} '
        f'generations, N={cfg.samples}, H={cfg.heldout}: {warm_s:.2f} s, {warm_cpu_s:.2f} CPU s; '
        f'compile {compile_s:.1f} s, excluded)')
  rate, cpu_rate = fits / warm_s, fits / warm_cpu_s
  if FLAGS.vec_seeds:
    vec_s, vec_cpu_s = numpy_vectorised(cfg, FLAGS.vec_seeds)
    vec_fits = FLAGS.vec_seeds * (cfg.generations + 1)
    print(f'NumPy vectorised: {vec_fits / vec_s:7.1f} fits/s  ({FLAGS.vec_seeds} seeds x '
          f'{cfg.generations} generations, float32: {vec_s:.2f} s, {vec_cpu_s:.2f} CPU s)')
    print(f'ratio against it: {rate / (vec_fits / vec_s):7.1f}x  (wall clock; per CPU second: '
          f'{cpu_rate / (vec_fits / vec_cpu_s):.1f}x)')
  if FLAGS.ref_seeds:
    ref_s, ref_cpu_s = numpy_loop(cfg, FLAGS.ref_seeds, np.dtype(FLAGS.ref_dtype))
    ref_fits = FLAGS.ref_seeds * (cfg.generations + 1)
    print(f'NumPy loop      : {ref_fits / ref_s:7.1f} fits/s  ({FLAGS.ref_seeds} seeds x '
          f'{cfg.generations} generations, {FLAGS.ref_dtype}: {ref_s:.2f} s, '
          f'{ref_cpu_s:.2f} CPU s; {fits * ref_s / ref_fits:.0f} s for all seeds)')
    print(f'ratio against it: {rate / (ref_fits / ref_s):7.1f}x  (wall clock; per CPU second: '
          f'{cpu_rate / (ref_fits / ref_cpu_s):.1f}x)')


if __name__ == '__main__':
  define_flags()
  app.run(main)
