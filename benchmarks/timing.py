"""What the throughput benchmarks share: timing a whole recursive sweep."""

import time

import jax
import numpy as np

from collapse_jax import driver


def sweep_seconds(family, sweep: driver.Sweep, chunk: int):
  """(compile seconds, warm seconds) of generation 0 and every chunk after it,
  run twice through the driver's compiled programs; compile is cold - warm."""
  (seed_B, fraction_B), per_device = driver.placed_runs(sweep)
  first, advance = driver.programs(family, sweep, chunk,
                                   driver.default_width(driver.concrete(family), per_device))

  def loop():
    const_B, carry_B, _ = first(seed_B, fraction_B)
    for g0 in range(1, sweep.generations + 1, chunk):
      carry_B, metrics = advance(const_B, carry_B, np.int32(g0))
    return jax.block_until_ready(metrics)

  t0 = time.perf_counter()
  loop()
  cold = time.perf_counter() - t0
  t0 = time.perf_counter()
  loop()
  warm = time.perf_counter() - t0
  return cold - warm, warm
