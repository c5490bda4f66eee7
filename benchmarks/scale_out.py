"""GMM seeds per second against the number of devices, and the largest sweep one device holds.

  python -m benchmarks.scale_out                       # 1 and 2 CPU devices (~2 min on 2 cores)
  python -m benchmarks.scale_out --devices_list= --largest --max_seeds=1048576   # on a GPU

Each device count runs `benchmarks.gmm_throughput` (the paper's GMM protocol,
compile excluded) in a fresh process with the CPU split into that many devices,
so the one-device line is the baseline measured in the same run. `--largest`
doubles the seed count, compiling the sweep's programs without running them,
until the driver's memory check says a device cannot hold it, then times the
largest that fits.
"""

import re
import subprocess
import sys

import jax
from absl import app, flags

from benchmarks import timing
from collapse_jax.core import driver, placement
from collapse_jax.families import gmm

flags.DEFINE_list('devices_list', ['1', '2'], 'CPU device counts to time; empty to skip.')
flags.DEFINE_integer('seeds', 64, 'Seeds per timed sweep.')
flags.DEFINE_integer('generations', 100, 'Generations per timed sweep.')
flags.DEFINE_bool('largest', False, 'Find and time the largest seed count one device holds.')
flags.DEFINE_integer('max_seeds', 1 << 20, 'Stop doubling here.')
FLAGS = flags.FLAGS


def rate_on(devices: int, seeds: int, generations: int) -> float:
  """Generation-fits per second of the GMM sweep on `devices` CPU devices (a fresh process)."""
  out = subprocess.run([sys.executable, '-m', 'benchmarks.gmm_throughput', f'--cpu_devices={devices}',
                        f'--seeds={seeds}', f'--generations={generations}', '--ref_seeds=0',
                        '--vec_seeds=0', f'--chunk={generations}'], capture_output=True, text=True, check=True).stdout
  return float(re.search(r'collapse-jax :\s+([\d.]+) fits/s', out).group(1))


def bytes_needed(seeds: int, chunk: int) -> tuple[int, int]:
  """(bytes a device needs, runs per device) for a GMM sweep of `seeds`, compiled, not run."""
  cfg = gmm.GMMConfig(seeds=seeds, generations=chunk)
  _, per_device, _, _, _, need = driver.compile_sweep(gmm.family(cfg), cfg.sweep('replace'), chunk)
  return need, per_device


def largest(chunk: int, max_seeds: int) -> int:
  seeds, fits = jax.device_count() * 2, 0
  while seeds <= max_seeds:
    need, per_device = bytes_needed(seeds, chunk)
    print(f'  {seeds:>9,} seeds: {need / 2**30:8.3f} GiB per device of '
          f'{placement.device_memory() / 2**30:.1f}', flush=True)
    if need > placement.device_memory():
      break
    fits, seeds = seeds, seeds * 2
  return fits


def main(argv):
  del argv
  if FLAGS.devices_list:
    base = None
    for d in (int(x) for x in FLAGS.devices_list):
      rate = rate_on(d, FLAGS.seeds, FLAGS.generations)
      base = base or rate
      print(f'{d} CPU device(s): {rate:9,.0f} generation-fits/s, {rate / FLAGS.generations:7.1f} '
            f'seeds/s (whole {FLAGS.generations}-generation runs of {FLAGS.seeds} seeds); '
            f'{rate / base:.2f}x one device')
  if FLAGS.largest:
    print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}')
    seeds = largest(FLAGS.generations, FLAGS.max_seeds)
    cfg = gmm.GMMConfig(seeds=seeds, generations=FLAGS.generations)
    compile_s, warm_s = timing.sweep_seconds(gmm.family(cfg), cfg.sweep('replace'), FLAGS.generations)
    print(f'largest that fits: {seeds:,} seeds; {seeds * FLAGS.generations / warm_s:,.0f} '
          f'generation-fits/s ({FLAGS.generations} generations in {warm_s:.1f} s, compile '
          f'{compile_s:.1f} s excluded)')


if __name__ == '__main__':
  app.run(main)
