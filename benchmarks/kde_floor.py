"""The KDE generation's CPU time per fit against its floor: kernel pairs x one fused pair's cost.

  python -m benchmarks.kde_floor                 # 200 seeds x 50 generations, N = H = 250
  python -m benchmarks.kde_floor --seeds=50 --generations=20   # a quick look

A generation-fit of benchmarks/kde_throughput.py evaluates H N + N N + N H Gaussian
kernels (187,500 at N = H = 250). The floor is that count times the CPU cost of one pair
in the cheapest fused pass XLA compiles on this machine: a seed's N x N kernel sum
exp(-|a - b|^2 / 2s^2) from differences, timed alone, one seed at a time under lax.map as
the driver runs the KDE on a CPU. The compiled generation (driver programs, metrics
included) is timed through benchmarks.timing as the throughput benchmark times it.
"""

import os

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks import timing
from collapse_jax.core import cli, sampling
from collapse_jax.families import kde

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags: defined when it runs, not when another script imports it."""
  flags.DEFINE_integer('seeds', 200, 'Seeds of the compiled generation timed.')
  flags.DEFINE_integer('generations', 50, 'Generations timed.')
  flags.DEFINE_integer('samples', 250, 'Samples N per generation.')
  flags.DEFINE_integer('heldout', 250, 'Held-out real samples H per seed.')
  flags.DEFINE_integer('pair_seeds', 400, 'Seeds of the fused kernel sum timed alone.')
  flags.DEFINE_integer('repeats', 5, 'Timings of the fused kernel sum; the fastest is kept.')
  flags.DEFINE_integer('cpu_devices', 0, 'Split a CPU into this many devices (0: one per core).')


def pairs_per_fit(n: int, h: int) -> int:
  """Kernels one generation-fit evaluates: the NLL's H x N, the MMD's N x N and N x H."""
  return h * n + n * n + n * h


def pair_cpu_ns(seeds: int, n: int, repeats: int) -> float:
  """CPU nanoseconds a pair of the fused kernel sum costs, the fastest of `repeats` timings."""
  x_SxNxD = jax.random.normal(jax.random.key(0), (seeds, n, kde.DIMS))
  kernel_sum = jax.jit(lambda x: jax.lax.map(
      lambda a_NxD: jnp.sum(jnp.exp(-sampling.squared_distances(a_NxD, a_NxD) / 0.5)), x))
  jax.block_until_ready(kernel_sum(x_SxNxD))
  best = min(timing.clocked(lambda: jax.block_until_ready(kernel_sum(x_SxNxD)))[1]
             for _ in range(repeats))
  return best / (seeds * n * n) * 1e9


def main(argv):
  del argv
  cli.split_cpu(FLAGS.cpu_devices or os.cpu_count() or 1)
  cfg = kde.KDEConfig(seeds=FLAGS.seeds, generations=FLAGS.generations, samples=FLAGS.samples,
                      heldout=FLAGS.heldout, bandwidth=0.1, target='moons',
                      bandwidth_rule='fixed').validate()
  ns = pair_cpu_ns(FLAGS.pair_seeds, cfg.samples, FLAGS.repeats)
  pairs = pairs_per_fit(cfg.samples, cfg.heldout)
  floor_us = pairs * ns / 1e3
  _, warm_s, cpu_s = timing.sweep_times(kde.family(cfg), cfg.sweep('replace'),
                                        min(50, cfg.generations))
  per_fit_us = cpu_s / (cfg.seeds * (cfg.generations + 1)) * 1e6
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}')
  print(f'fused pair     : {ns:.2f} CPU ns ({FLAGS.pair_seeds} seeds x {cfg.samples}^2 pairs, '
        f'fastest of {FLAGS.repeats})')
  print(f'floor          : {floor_us:.0f} CPU us a fit ({pairs:,} pairs)')
  print(f'compiled KDE   : {per_fit_us:.0f} CPU us a fit ({cfg.seeds} seeds x {cfg.generations} '
        f'generations: {warm_s:.2f} s wall, {cpu_s:.2f} CPU s)')
  print(f'against floor  : {per_fit_us / floor_us:.2f}x  (within 1.5x: '
        f'{"yes" if per_fit_us <= 1.5 * floor_us else "no"})')


if __name__ == '__main__':
  define_flags()
  app.run(main)
