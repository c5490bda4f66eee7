"""What the throughput benchmarks share: timing a whole recursive sweep."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.core import driver, placement, protocol


def clocked(fn):
  """(wall seconds, this process's CPU seconds) of fn()."""
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def sweep_times(family, sweep: protocol.Sweep, chunk: int):
  """(compile seconds, warm wall seconds, warm CPU seconds of this process) of generation 0
  and every chunk after it, run twice through the driver's compiled programs; compile is
  cold - warm. CPU seconds tell more than wall seconds on a shared machine."""
  (seed_B, fraction_B), per_device = placement.placed_runs(sweep)
  first, advance = driver.programs(family, sweep, chunk,
                                   placement.default_width(protocol.concrete(family), per_device))

  def loop():
    const_B, carry_B, _ = first(seed_B, fraction_B)
    for g0 in range(1, sweep.generations + 1, chunk):
      carry_B, metrics = advance(const_B, carry_B, np.int32(g0))
    return jax.block_until_ready(metrics)

  cold, _ = clocked(loop)
  warm, warm_cpu = clocked(loop)
  return cold - warm, warm, warm_cpu


def sweep_seconds(family, sweep: protocol.Sweep, chunk: int):
  """(compile seconds, warm seconds): sweep_times' wall clock."""
  return sweep_times(family, sweep, chunk)[:2]


def compile_seconds(family, sweep: protocol.Sweep, chunk: int, width: int | None = None):
  """(seconds, driver.compile_sweep's result): a sweep's two programs compiled ahead of time,
  with the bytes a device needs to run them (the result's last item)."""
  t0 = time.perf_counter()
  compiled = driver.compile_sweep(family, sweep, chunk, width)
  return time.perf_counter() - t0, compiled


def run_seconds(compiled, generations: int, chunk: int, budget_s: float = float('inf')):
  """(seconds of generation 0, seconds of the whole run, generations run after it) of a sweep
  compiled by compile_seconds, run once: generation 0, then chunks until all `generations` have
  run or the run has taken `budget_s` (one chunk at least), for the caller to extrapolate."""
  (seed_B, fraction_B), _, first, advance, _, _ = compiled
  t0 = time.perf_counter()
  const_B, carry_B, metrics = first(seed_B, fraction_B)
  jax.block_until_ready(metrics)
  first_s, done = time.perf_counter() - t0, 0
  while done < generations and (done == 0 or time.perf_counter() - t0 < budget_s):
    carry_B, metrics = advance(const_B, carry_B, jnp.int32(done + 1))
    jax.block_until_ready(metrics)
    done = min(done + chunk, generations)
  return first_s, time.perf_counter() - t0, done
