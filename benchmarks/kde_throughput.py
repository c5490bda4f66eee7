"""KDE generation-fits per second: this project against a NumPy loop, same machine, same run.

  python -m benchmarks.kde_throughput                      # 1,000 seeds x 100 generations, N = 250
  python -m benchmarks.kde_throughput --ref_dtype=float32  # the NumPy loop in float32

One generation-fit is one seed's step of the recursion under `replace` with a fixed
bandwidth: store the last N samples as the KDE, draw N samples from it (a stored point
picked uniformly plus N(0, h^2 I)), and measure it as the experiment does: the NLL of
the held-out real samples (H x N Gaussian kernels, a logsumexp each), the spread, and the
squared MMD between its samples and the held-out set (N x N + N x H kernels). The
reference does the same in NumPy, a Python loop over seeds and generations, each
generation vectorised. Compile time is measured apart and excluded.
"""

import os

import jax
import numpy as np
from absl import app, flags

from benchmarks import timing
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
  flags.DEFINE_integer('ref_seeds', 10, 'Seeds for the NumPy loop.')
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


def numpy_loop(cfg: kde.KDEConfig, seeds: int, dtype):
  """(wall seconds, CPU seconds) of the same recursion in NumPy, one seed at a time."""
  n, h, scale = cfg.samples, cfg.bandwidth, cfg.mmd_scale
  kernel = lambda a, b: np.exp(-_sq_dist(a, b) / (2 * scale**2))  # noqa: E731

  def one_seed(seed):
    rng = np.random.default_rng(seed)
    heldout = _moons(rng, cfg.heldout, cfg.target_noise).astype(dtype)
    t_self = (kernel(heldout, heldout).sum() - cfg.heldout) / (cfg.heldout * (cfg.heldout - 1))
    points = _moons(rng, n, cfg.target_noise).astype(dtype)
    for _ in range(cfg.generations + 1):
      synth = points[rng.integers(n, size=n)] + h * rng.standard_normal((n, 2)).astype(dtype)
      a = -_sq_dist(heldout, points) / (2 * h**2) - np.log(n)
      top = a.max(1)
      nll = -np.mean(top + np.log(np.exp(a - top[:, None]).sum(1)) - np.log(2 * np.pi * h**2))
      spread = points.var(0).sum() + 2 * h**2
      mmd2 = ((kernel(synth, synth).sum() - n) / (n * (n - 1)) + t_self
              - 2 * kernel(synth, heldout).mean())
      assert np.isfinite(nll + spread + mmd2)
      points = synth

  return timing.clocked(lambda: [one_seed(seed) for seed in range(seeds)])


def main(argv):
  del argv
  cli.split_cpu(FLAGS.cpu_devices or os.cpu_count() or 1)
  cfg = kde.KDEConfig(seeds=FLAGS.seeds, generations=FLAGS.generations, samples=FLAGS.samples,
                      heldout=FLAGS.heldout, bandwidth=FLAGS.bandwidth, target='moons',
                      bandwidth_rule='fixed').validate()
  compile_s, warm_s, warm_cpu_s = ours(cfg, min(FLAGS.chunk, cfg.generations))
  fits = cfg.seeds * (cfg.generations + 1)
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}')
  print(f'collapse-jax : {fits / warm_s:10.0f} fits/s  ({cfg.seeds} seeds x {cfg.generations} '
        f'generations, N={cfg.samples}, H={cfg.heldout}: {warm_s:.2f} s, {warm_cpu_s:.2f} CPU s; '
        f'compile {compile_s:.1f} s, excluded)')
  if FLAGS.ref_seeds:
    ref_s, ref_cpu_s = numpy_loop(cfg, FLAGS.ref_seeds, np.dtype(FLAGS.ref_dtype))
    ref_fits = FLAGS.ref_seeds * (cfg.generations + 1)
    print(f'NumPy loop   : {ref_fits / ref_s:10.1f} fits/s  ({FLAGS.ref_seeds} seeds x '
          f'{cfg.generations} generations, {FLAGS.ref_dtype}: {ref_s:.2f} s, '
          f'{ref_cpu_s:.2f} CPU s; {fits * ref_s / ref_fits:.0f} s for all seeds)')
    print(f'ratio        : {(fits / warm_s) / (ref_fits / ref_s):10.1f}x  (wall clock; per CPU '
          f'second: {(fits / warm_cpu_s) / (ref_fits / ref_cpu_s):.1f}x)')


if __name__ == '__main__':
  define_flags()
  app.run(main)
