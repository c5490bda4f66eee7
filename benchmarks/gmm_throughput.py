"""GMM generation-fits per second: this project against scikit-learn, same machine, same run.

  python -m benchmarks.gmm_throughput                 # 64 seeds x 200 generations vs sklearn
  python -m benchmarks.gmm_throughput --seeds=4096 --generations=2000   # on a GPU

One generation-fit is the paper's protocol for one seed: k-means-initialised EM
on 1,000 samples to tol 1e-5 (at most 2,000 iterations), then 1,000 samples of
the fit. The reference refits scikit-learn's GaussianMixture in a Python loop
the same way. Compile time is measured apart and excluded from the rate.
"""

import os
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import timing
from collapse_jax.core import cli
from collapse_jax.families import gmm

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags: defined when it runs, not when benchmarks.accelerator imports it."""
  flags.DEFINE_integer('seeds', 64, 'Seeds fitted together by this project.')
  flags.DEFINE_integer('generations', 200, 'Generations timed for this project.')
  flags.DEFINE_integer('chunk', 100, 'Generations per compiled chunk, as --checkpoint_every.')
  flags.DEFINE_integer('ref_seeds', 4, 'Seeds for the scikit-learn loop.')
  flags.DEFINE_integer('ref_generations', 50, 'Generations per seed for the scikit-learn loop.')
  flags.DEFINE_integer('cpu_devices', 0, 'Split a CPU into this many devices (0: one per core).')


def ours(cfg: gmm.GMMConfig, chunk: int):
  """(compile seconds, fits per second) of the whole recursive loop."""
  compile_s, warm_s = timing.sweep_seconds(gmm.family(cfg), cfg.sweep('replace'), chunk)
  return compile_s, cfg.seeds * cfg.generations / warm_s


def scikit_learn(cfg: gmm.GMMConfig, seeds: int, generations: int):
  """Fits per second of GaussianMixture refitted on its own samples."""
  from sklearn.mixture import GaussianMixture  # noqa: PLC0415 (a benchmark-only dependency)
  weights_K, means_KxD, covs_KxDxD = (np.asarray(v, np.float64) for v in cfg.true_mixture())
  t0 = time.perf_counter()
  for seed in range(seeds):
    rng = np.random.default_rng(seed)
    z_N = rng.choice(len(weights_K), size=cfg.samples, p=weights_K / weights_K.sum())
    eps_NxD = rng.normal(size=(cfg.samples, means_KxD.shape[1]))
    x = means_KxD[z_N] + np.einsum('nij,nj->ni', np.linalg.cholesky(covs_KxDxD)[z_N], eps_NxD)
    for g in range(generations):
      model = GaussianMixture(cfg.components, tol=cfg.tol, max_iter=cfg.max_iter,
                              reg_covar=cfg.reg_covar, random_state=seed * 100_003 + g)
      x, _ = model.fit(x).sample(cfg.samples)
  return seeds * generations / (time.perf_counter() - t0)


def main(argv):
  del argv
  cli.split_cpu(FLAGS.cpu_devices or os.cpu_count() or 1)
  cfg = gmm.GMMConfig(seeds=FLAGS.seeds, generations=FLAGS.generations).validate()
  compile_s, rate = ours(cfg, min(FLAGS.chunk, cfg.generations))
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}')
  print(f'collapse-jax : {rate:10.0f} fits/s  ({cfg.seeds} seeds x {cfg.generations} '
        f'generations; compile {compile_s:.1f} s, excluded)')
  if FLAGS.ref_seeds:
    ref = scikit_learn(cfg, FLAGS.ref_seeds, FLAGS.ref_generations)
    print(f'scikit-learn : {ref:10.1f} fits/s  ({FLAGS.ref_seeds} seeds x '
          f'{FLAGS.ref_generations} generations, Python loop)')
    print(f'ratio        : {rate / ref:10.1f}x')


if __name__ == '__main__':
  define_flags()
  app.run(main)
