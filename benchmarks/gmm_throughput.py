"""GMM generation-fits per second: this project against NumPy and scikit-learn, in the same run.

  python -m benchmarks.gmm_throughput                 # 64 seeds x 200 generations
  python -m benchmarks.gmm_throughput --seeds=4096 --generations=2000   # on a GPU

One generation-fit is the paper's protocol for one seed: k-means-initialised EM
on 1,000 samples to tol 1e-5 (at most 2,000 iterations), then 1,000 samples of
the fit, measured by the experiment's metrics. Two references:
- NumPy vectorised over seeds in float32 (benchmarks/numpy_gmm.py): the family's
  algorithm with every seed advanced together, a Python loop over generations and
  over k-means and EM iterations, converged seeds leaving the arrays; it computes
  the same metrics. What a user would write, and the stronger reference.
- scikit-learn's GaussianMixture refitted in a Python loop over seeds and
  generations, in float64, on one thread, without the metrics.
Ratios are printed against both. Compile time is measured apart and excluded.
"""

import os
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import numpy_gmm, timing
from collapse_jax.core import cli
from collapse_jax.families import gmm

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags: defined when it runs, not when benchmarks.accelerator imports it."""
  flags.DEFINE_integer('seeds', 64, 'Seeds fitted together by this project.')
  flags.DEFINE_integer('generations', 200, 'Generations timed for this project.')
  flags.DEFINE_integer('chunk', 100, 'Generations per compiled chunk, as --checkpoint_every.')
  flags.DEFINE_integer('vec_seeds', 256, 'Seeds for NumPy vectorised over seeds (0: skip it).')
  flags.DEFINE_integer('vec_generations', 10, 'Generations for NumPy vectorised over seeds.')
  flags.DEFINE_integer('ref_seeds', 4, 'Seeds for the scikit-learn loop (0: skip it).')
  flags.DEFINE_integer('ref_generations', 50, 'Generations per seed for the scikit-learn loop.')
  flags.DEFINE_integer('cpu_devices', 0, 'Split a CPU into this many devices (0: one per core).')


def ours(cfg: gmm.GMMConfig, chunk: int):
  """(compile seconds, fits per second, fits per CPU second) of the whole recursive loop."""
  compile_s, warm_s, cpu_s = timing.sweep_times(gmm.family(cfg), cfg.sweep('replace'), chunk)
  return compile_s, cfg.seeds * cfg.generations / warm_s, cfg.seeds * cfg.generations / cpu_s


def scikit_learn(cfg: gmm.GMMConfig, seeds: int, generations: int, cpu: bool = False):
  """Fits per second of GaussianMixture refitted on its own samples (cpu: and per CPU second),
  on one thread: its k-means' OpenMP threads only wait on each other at N = 1,000, and on a
  shared CPU they made it about 28x slower."""
  from sklearn.mixture import GaussianMixture  # noqa: PLC0415 (a benchmark-only dependency)
  from threadpoolctl import threadpool_limits  # noqa: PLC0415 (scikit-learn's own dependency)
  weights_K, means_KxD, covs_KxDxD = (np.asarray(v, np.float64) for v in cfg.true_mixture())
  with threadpool_limits(limits=1):
    t0, c0 = time.perf_counter(), time.process_time()
    for seed in range(seeds):
      rng = np.random.default_rng(seed)
      z_N = rng.choice(len(weights_K), size=cfg.samples, p=weights_K / weights_K.sum())
      eps_NxD = rng.normal(size=(cfg.samples, means_KxD.shape[1]))
      x = means_KxD[z_N] + np.einsum('nij,nj->ni', np.linalg.cholesky(covs_KxDxD)[z_N], eps_NxD)
      for g in range(generations):
        model = GaussianMixture(cfg.components, tol=cfg.tol, max_iter=cfg.max_iter,
                                reg_covar=cfg.reg_covar, random_state=seed * 100_003 + g)
        x, _ = model.fit(x).sample(cfg.samples)
    wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
  rate = seeds * generations / wall
  return (rate, seeds * generations / cpu_s) if cpu else rate


def numpy_vectorised(cfg: gmm.GMMConfig, seeds: int, generations: int):
  """(fits per second, fits per CPU second, wall seconds, mean EM iterations) of the protocol
  in NumPy vectorised over seeds, float32, metrics included; the tail thresholds are computed
  once, untimed."""
  true = numpy_gmm.Mixtures(*(np.asarray(v) for v in cfg.true_mixture()))
  t95, t99 = gmm.tail_thresholds(cfg.true_mixture())
  rng = np.random.default_rng(0)
  out = []
  wall, cpu = timing.clocked(lambda: out.extend(numpy_gmm.replace_run(
      true, seeds, generations, cfg.samples, cfg.heldout, cfg.tol, cfg.max_iter, cfg.reg_covar,
      cfg.components, t95, t99, rng)))
  fits = seeds * (generations + 1)
  return fits / wall, fits / cpu, wall, np.mean([info['em_iters'] for info, _ in out])


def main(argv):
  del argv
  cli.split_cpu(FLAGS.cpu_devices or os.cpu_count() or 1)
  cfg = gmm.GMMConfig(seeds=FLAGS.seeds, generations=FLAGS.generations).validate()
  compile_s, rate, cpu_rate = ours(cfg, min(FLAGS.chunk, cfg.generations))
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}')
  print(f'collapse-jax : {rate:10.0f} fits/s  ({cfg.seeds} seeds x {cfg.generations} '
        f'generations; {cpu_rate:.0f} per CPU second; compile {compile_s:.1f} s, excluded)')
  if FLAGS.vec_seeds:
    vec, vec_cpu, vec_s, vec_iters = numpy_vectorised(cfg, FLAGS.vec_seeds,
                                                      FLAGS.vec_generations)
    print(f'NumPy vectorised over seeds : {vec:10.1f} fits/s  ({FLAGS.vec_seeds} seeds x '
          f'{FLAGS.vec_generations} generations, float32, metrics included: {vec_s:.2f} s; '
          f'{vec_cpu:.1f} per CPU second; {vec_iters:.1f} EM iterations a fit)')
    print(f'ratio against it            : {rate / vec:10.1f}x  (per CPU second: '
          f'{cpu_rate / vec_cpu:.1f}x)')
  if FLAGS.ref_seeds:
    ref, ref_cpu = scikit_learn(cfg, FLAGS.ref_seeds, FLAGS.ref_generations, cpu=True)
    print(f'scikit-learn loop           : {ref:10.1f} fits/s  ({FLAGS.ref_seeds} seeds x '
          f'{FLAGS.ref_generations} generations, float64, Python loop, no metrics; '
          f'{ref_cpu:.1f} per CPU second)')
    print(f'ratio against it            : {rate / ref:10.1f}x  (per CPU second: '
          f'{cpu_rate / ref_cpu:.1f}x)')

if __name__ == '__main__':
  define_flags()
  app.run(main)
