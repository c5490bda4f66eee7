"""Regression generation-fits per second: this project against NumPy, same machine, same run.

  python -m benchmarks.regression_throughput    # 1,000 seeds x 1,000 generations, d = 10, T = 1,000
  python -m benchmarks.regression_throughput --generations=100 --row_generations=0 --ref_seeds=2

One generation-fit is one seed's step of the recursion under replace, OLS on fresh isotropic
inputs: draw T inputs and labels from the last fit plus noise, fit least squares, measure the
test error and the labels' variance. This project draws a replace generation as sufficient
statistics (regression.refit: X^T X by Bartlett's decomposition, so its cost does not grow
with T); it is also timed drawing the rows (--row_generations, the path every other regime
takes). Two kinds of reference, each drawing the rows (the protocol as written) and drawing
the same sufficient statistics: NumPy vectorised over seeds in float32, the dtype this project
runs in (benchmarks/numpy_regression.py: every seed advanced together, a Python loop over
generations only; what a user would write), and Python loops over seeds and generations in
float64. Ratios are printed against both; the vectorised one is the stronger reference.
Compile time is measured apart and excluded.
"""

import dataclasses
import os
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import numpy_regression, timing
from collapse_jax.core import cli
from collapse_jax.families import regression

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags: defined when it runs, not when another script imports it."""
  flags.DEFINE_integer('seeds', 1000, 'Seeds run together by this project.')
  flags.DEFINE_integer('generations', 1000, 'Generations timed for this project.')
  flags.DEFINE_integer('samples', 1000, 'Samples T per generation.')
  flags.DEFINE_integer('dims', 10, 'Input dimensions d.')
  flags.DEFINE_float('noise', 1.0, 'Label noise sigma.')
  flags.DEFINE_integer('chunk', 50, 'Generations per compiled chunk, as --checkpoint_every.')
  flags.DEFINE_integer('row_generations', 10, 'Generations timed for this project drawing the '
                       'rows (0: skip).')
  flags.DEFINE_integer('ref_seeds', 10, 'Seeds for each NumPy loop (0: skip them).')
  flags.DEFINE_integer('vec_seeds', 1000, 'Seeds for NumPy vectorised over seeds (0: skip it).')
  flags.DEFINE_integer('vec_row_generations', 20, 'Generations for vectorised NumPy drawing the '
                       'rows (the statistics run all --generations).')
  flags.DEFINE_integer('cpu_devices', 0, 'Split a CPU into this many devices (0: one per core).')


def ours(cfg: regression.RegressionConfig, chunk: int, rows: bool = False):
  """(compile seconds, warm seconds, warm CPU seconds) of the whole recursive loop, metrics
  included."""
  fam = regression.family(cfg)
  if rows:
    fam = dataclasses.replace(fam, refit=None)
  return timing.sweep_times(fam, cfg.sweep('replace'), min(chunk, cfg.generations))


def rows_seed(seed: int, generations: int, t: int, d: int, noise: float):
  """One seed's recursion in NumPy drawing the rows: test error and label variance a generation."""
  w_star = regression.true_weights(d).astype(np.float64)
  rng, w = np.random.default_rng(seed), w_star
  out = []
  for _ in range(generations + 1):
    x = rng.standard_normal((t, d))
    y = x @ w + noise * rng.standard_normal(t)
    w = np.linalg.solve(x.T @ x, x.T @ y)
    out.append((np.sum((w - w_star) ** 2), y.var()))
  return dict(zip(('test_error', 'label_var'), np.asarray(out).T))


def statistics_seed(seed: int, generations: int, t: int, d: int, noise: float):
  """The same drawing (X^T X, X^T e, e^T e, the sums) as regression.refit does."""
  w_star = regression.true_weights(d).astype(np.float64)
  k = d + 1
  scale = np.r_[np.ones(d), noise]
  lower = np.tril_indices(k, -1)
  rng, w = np.random.default_rng(seed), w_star
  out = []
  for _ in range(generations + 1):
    a = np.zeros((k, k))
    a[lower] = rng.standard_normal(len(lower[0]))
    a[np.diag_indices(k)] = np.sqrt(rng.chisquare(t - 1.0 - np.arange(k)))
    a *= scale[:, None]
    root = scale * rng.standard_normal(k)
    m = a @ a.T + np.outer(root, root)
    xx, xe = m[:d, :d], m[:d, d]
    w_next = np.linalg.solve(xx, xx @ w + xe)
    y1 = np.sqrt(t) * (w @ root[:d] + root[d])
    label_var = (w @ xx @ w + 2 * w @ xe + m[d, d]) / t - (y1 / t) ** 2
    w = w_next
    out.append((np.sum((w - w_star) ** 2), label_var))
  return dict(zip(('test_error', 'label_var'), np.asarray(out).T))


def numpy_rows(seeds: int, generations: int, t: int, d: int, noise: float) -> float:
  """Fits per second of the recursion in NumPy, one seed at a time, drawing the rows."""
  t0 = time.perf_counter()
  for seed in range(seeds):
    rows_seed(seed, generations, t, d, noise)
  return seeds * (generations + 1) / (time.perf_counter() - t0)


def numpy_statistics(seeds: int, generations: int, t: int, d: int, noise: float) -> float:
  """The same, one seed at a time, drawing sufficient statistics (statistics_seed)."""
  t0 = time.perf_counter()
  for seed in range(seeds):
    statistics_seed(seed, generations, t, d, noise)
  return seeds * (generations + 1) / (time.perf_counter() - t0)


def numpy_vectorised(seeds: int, generations: int, t: int, d: int, noise: float, rows: bool):
  """(fits per second, fits per CPU second, wall seconds) of the recursion in NumPy vectorised
  over seeds, float32."""
  run = numpy_regression.rows_run if rows else numpy_regression.statistics_run
  rng = np.random.default_rng(0)
  wall, cpu = timing.clocked(lambda: run(seeds, generations, t, d, noise, rng, np.float32))
  return seeds * (generations + 1) / wall, seeds * (generations + 1) / cpu, wall


def main(argv):
  del argv
  cli.split_cpu(FLAGS.cpu_devices or os.cpu_count() or 1)
  cfg = regression.RegressionConfig(seeds=FLAGS.seeds, generations=FLAGS.generations,
                                    samples=FLAGS.samples, dims=FLAGS.dims, noise=FLAGS.noise,
                                    regimes=('replace',)).validate()
  shape = f'd={cfg.dims}, T={cfg.samples}'
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}')
  compile_s, warm_s, cpu_s = ours(cfg, FLAGS.chunk)
  rate, cpu_rate = (cfg.seeds * (cfg.generations + 1) / s for s in (warm_s, cpu_s))
  print(f'collapse-jax, statistics : {rate:12.0f} fits/s  ({cfg.seeds} seeds x {cfg.generations} '
        f'generations, {shape}: {warm_s:.2f} s, {cpu_rate:.0f} per CPU second; compile '
        f'{compile_s:.1f} s, excluded)')
  if FLAGS.row_generations:
    rows_cfg = dataclasses.replace(cfg, generations=FLAGS.row_generations)
    compile_r, warm_r, _ = ours(rows_cfg, FLAGS.chunk, rows=True)
    rows_rate = rows_cfg.seeds * (rows_cfg.generations + 1) / warm_r
    print(f'collapse-jax, rows       : {rows_rate:12.0f} fits/s  ({rows_cfg.seeds} seeds x '
          f'{rows_cfg.generations} generations: {warm_r:.2f} s; compile {compile_r:.1f} s, '
          'excluded)')
  refs = {}
  if FLAGS.vec_seeds:
    for name, rows, generations in (('rows', True, FLAGS.vec_row_generations),
                                    ('statistics', False, cfg.generations)):
      refs['vectorised', name], vec_cpu, wall = numpy_vectorised(
          FLAGS.vec_seeds, generations, cfg.samples, cfg.dims, cfg.noise, rows)
      print(f'NumPy vectorised, {name:10s}: {refs["vectorised", name]:12.0f} fits/s  '
            f'({FLAGS.vec_seeds} seeds x {generations} generations, float32: {wall:.2f} s, '
            f'{vec_cpu:.0f} per CPU second)')
      if name == 'statistics':
        print(f'per CPU second, collapse-jax statistics against it: {cpu_rate / vec_cpu:.2f}x')
  if FLAGS.ref_seeds:
    for name, loop in (('rows', numpy_rows), ('statistics', numpy_statistics)):
      refs['loop', name] = loop(FLAGS.ref_seeds, cfg.generations, cfg.samples, cfg.dims,
                                cfg.noise)
      print(f'NumPy loop, {name:10s}      : {refs["loop", name]:12.0f} fits/s  ({FLAGS.ref_seeds} '
            f'seeds x {cfg.generations} generations, float64; '
            f'{cfg.seeds * (cfg.generations + 1) / refs["loop", name]:.0f} s for {cfg.seeds} '
            'seeds)')
  for (kind, name), ref in refs.items():
    both = FLAGS.row_generations and name == 'rows'
    print(f'ratio against {kind} {name:10s}: {rate / ref:8.2f}x  (collapse-jax drawing statistics'
          + (f'; drawing rows: {rows_rate / ref:.2f}x)' if both else ')'))


if __name__ == '__main__':
  define_flags()
  app.run(main)
