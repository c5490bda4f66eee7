"""Process roles and placement: which process writes, the mesh every device is on, host arrays
placed on it and gathered back, and the memory a compiled sweep needs on each device."""

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from collapse_jax.core import protocol, validation


def mesh(axis: str = 'runs', devices=None) -> Mesh:
  """Every device of every process on one named axis: the batch of runs ('runs'), or the
  language model's data-parallel batch ('data'). The one sharding layer experiments use.
  `devices`: a compile-only target's devices (collapse_jax.core.targets) in place of these."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (axis,))


def place(x, axis: str = 'runs', dim: int = 0):
  """A host array (the same on every process) as a global array split over `axis` along
  its dimension `dim` (rows by default)."""
  sharding = NamedSharding(mesh(axis), PartitionSpec(*[None] * dim, axis))
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x) -> np.ndarray:
  """A global array's whole value on this process, gathered from the others where needed."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def barrier(name: str) -> None:
  """Waits until every process gets here (a no-op in a one-process run)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def is_primary() -> bool:
  """Whether this process writes tables, figures and summaries (process 0 of a multi-host run)."""
  return jax.process_index() == 0


def needed_bytes(exe) -> int:
  """Bytes a device needs to run a compiled program: arguments, outputs and temporaries,
  less the outputs that reuse a donated argument's buffer (0 where XLA does not say)."""
  stats = exe.memory_analysis()
  return 0 if stats is None else (stats.argument_size_in_bytes + stats.output_size_in_bytes
                                  + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def _bytes(n: float) -> str:
  for unit in ('B', 'KiB', 'MiB', 'GiB'):
    if n < 1024 or unit == 'GiB':
      return f'{n:,.1f} {unit}'
    n /= 1024


def device_memory() -> int:
  """Bytes one device may use: $COLLAPSE_JAX_DEVICE_MEMORY if set, else what the device
  reports, else (CPU devices share the host) the host's memory over its devices."""
  if os.environ.get('COLLAPSE_JAX_DEVICE_MEMORY'):
    return int(float(os.environ['COLLAPSE_JAX_DEVICE_MEMORY']))
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit'])
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // jax.local_device_count()


def check_memory(need: int, per_device: int, shared: int, runs: int) -> str:
  """A line saying what each device holds; ConfigError, naming the largest batch that
  fits, when a device cannot hold it. Memory grows about linearly with runs per device
  beyond the `shared` bytes (datasets) every device holds once."""
  have = device_memory()
  per_run = max(need - shared, 1) / per_device
  line = (f'{runs} runs on {jax.device_count()} device(s), {per_device} per device, '
          f'{_bytes(need)} of {_bytes(have)} per device')
  if need > have:
    fit = int((have - shared) // per_run) * jax.device_count()
    raise validation.ConfigError('seeds', f'{line}: does not fit; about {max(fit, 0)} runs (seeds '
                                 'x real fractions) would, or use more devices')
  return line


def placed_runs(sweep: protocol.Sweep, devices=None):
  """Seeds and fractions, padded to a multiple of the device count by repeating
  the last run, sharded over the devices; and the runs per device. Where the sweep
  sets knobs, the fractions come as (fraction_B, {knob: value_B}).

  Every device gets at least two runs: XLA compiles a loop over one run into
  straight-line code whose floating point rounds differently, and results must
  not depend on the device count. With compile-only `devices` (a target), the
  seeds and fractions are their shapes on those devices, for `programs(..., devices)`.
  """
  seed_B, fraction_B = sweep.runs()
  count = jax.device_count() if devices is None else len(devices)
  pad = max(-len(seed_B) % count, 2 * count - len(seed_B))
  padded = lambda x: np.pad(x, (0, pad), 'edge')  # noqa: E731
  values = (seed_B, fraction_B) if not sweep.knobs else (seed_B, (fraction_B, sweep.knob_runs()))
  values = jax.tree.map(padded, values)
  if devices is None:
    return jax.tree.map(place, values), (len(seed_B) + pad) // count
  sharding = NamedSharding(mesh(devices=devices), PartitionSpec('runs'))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      values), (len(seed_B) + pad) // count


def default_width(family: protocol.Family, runs_per_device: int,
                  platform: str | None = None) -> int:
  """Runs vectorised together: all of a device's, except one at a time on a CPU
  for families that ask for it (there one run already fills the vector units).
  `platform`: the devices' ('cpu', 'tpu', 'gpu'); default: this process's."""
  if family.one_at_a_time_on_cpu and (platform or jax.default_backend()) == 'cpu':
    return 1
  return runs_per_device
