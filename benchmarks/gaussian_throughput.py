"""Gaussian generation-fits per second: this project against NumPy, same machine, same run.

  python -m benchmarks.gaussian_throughput          # 10,000 seeds x 1,000 generations, M = 100

One generation-fit is one seed's step of the recursion: M samples of the last
fit, then mean and variance fitted to them. This project (replace, mle, its
metrics included) draws the statistics of the M samples from their exact law
(the mean and the Bartlett factor of the scatter: one normal and one chi2 in
1-D) instead of the samples, for the refit and for the metrics. The references:
  NumPy vectorised  all seeds at once, one generation after another, the M rows
                    drawn in float32 (a user's obvious fast version; one thread);
  NumPy statistics  the same, drawing the mean and the chi2 scatter instead of rows
                    (what a user who knows the law would write);
  NumPy loop        a Python loop over seeds and generations, rows drawn.
Compile time is measured apart and excluded.
"""

import os
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import timing
from collapse_jax.core import cli
from collapse_jax.families import gaussian

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags: defined when it runs, not when benchmarks.accelerator imports it."""
  flags.DEFINE_integer('seeds', 10_000, 'Seeds run together by this project.')
  flags.DEFINE_integer('generations', 1000, 'Generations timed for this project.')
  flags.DEFINE_integer('samples', 100, 'Samples M per generation.')
  flags.DEFINE_integer('chunk', 250, 'Generations per compiled chunk, as --checkpoint_every.')
  flags.DEFINE_integer('ref_seeds', 50, 'Seeds for the NumPy loop (0: skip it).')
  flags.DEFINE_integer('vec_seeds', 10_000, 'Seeds for the vectorised NumPy references (0: skip).')
  flags.DEFINE_integer('cpu_devices', 0, 'Split a CPU into this many devices (0: one per core).')


def ours(cfg: gaussian.GaussianConfig, chunk: int):
  """(compile seconds, warm seconds) of the whole recursive loop, metrics included."""
  return timing.sweep_seconds(gaussian.family(cfg), cfg.sweep('replace', cfg.samples[0]), chunk)


def numpy_loop(seeds: int, generations: int, m: int):
  """Fits per second of the same recursion in NumPy, one seed at a time."""
  t0 = time.perf_counter()
  for seed in range(seeds):
    rng = np.random.default_rng(seed)
    mean, std = 0.0, 1.0
    for _ in range(generations + 1):
      x = rng.normal(mean, std, m)
      mean, var = x.mean(), x.var(ddof=1)
      std = np.sqrt(var)
  return seeds * (generations + 1) / (time.perf_counter() - t0)


def numpy_vectorised(seeds: int, generations: int, m: int, statistics: bool = False):
  """Fits per second of the same recursion in NumPy, all seeds at once: M float32 rows a seed
  and generation, or (statistics) the mean N(0, 1/M) and the scatter chi2_{M-1} of them."""
  rng = np.random.default_rng(0)
  mean, std = np.zeros(seeds, np.float32), np.ones(seeds, np.float32)
  t0 = time.perf_counter()
  for _ in range(generations + 1):
    if statistics:
      mean = mean + std * rng.standard_normal(seeds, dtype=np.float32) / np.float32(np.sqrt(m))
      std = std * np.sqrt(rng.chisquare(m - 1, seeds).astype(np.float32) / np.float32(m))
    else:
      x = rng.standard_normal((seeds, m), dtype=np.float32) * std[:, None] + mean[:, None]
      mean, std = x.mean(1), np.sqrt(x.var(1))
  return seeds * (generations + 1) / (time.perf_counter() - t0)


def main(argv):
  del argv
  cli.split_cpu(FLAGS.cpu_devices or os.cpu_count() or 1)
  cfg = gaussian.GaussianConfig(seeds=FLAGS.seeds, generations=FLAGS.generations,
                                samples=(FLAGS.samples,), regimes=('replace',)).validate()
  compile_s, warm_s = ours(cfg, min(FLAGS.chunk, cfg.generations))
  rate = cfg.seeds * (cfg.generations + 1) / warm_s
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}')
  print(f'collapse-jax     : {rate:12.0f} fits/s  ({cfg.seeds} seeds x {cfg.generations} '
        f'generations, M={FLAGS.samples}: {warm_s:.2f} s; compile {compile_s:.1f} s, excluded)')
  refs = []
  if FLAGS.vec_seeds:
    for name, statistics in (('NumPy vectorised', False), ('NumPy statistics', True)):
      ref = numpy_vectorised(FLAGS.vec_seeds, cfg.generations, FLAGS.samples, statistics)
      refs.append((name, ref))
      print(f'{name:17s}: {ref:12.0f} fits/s  ({FLAGS.vec_seeds} seeds x {cfg.generations} '
            'generations, float32, all seeds at once)')
  if FLAGS.ref_seeds:
    ref = numpy_loop(FLAGS.ref_seeds, cfg.generations, FLAGS.samples)
    refs.append(('NumPy loop', ref))
    print(f'NumPy loop       : {ref:12.0f} fits/s  ({FLAGS.ref_seeds} seeds x {cfg.generations} '
          f'generations; {cfg.seeds * (cfg.generations + 1) / ref:.0f} s for all seeds)')
  for name, ref in refs:
    print(f'ratio to {name:17s}: {rate / ref:8.1f}x')


if __name__ == '__main__':
  define_flags()
  app.run(main)
