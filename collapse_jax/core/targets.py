"""Compile-only accelerator targets: the driver's programs compiled for a TPU or an NVIDIA GPU
on a machine that has neither.

XLA compiles for a device it cannot reach: libtpu describes TPU topologies, and the CUDA
plugin compiles for a GPU from XLA's description of it (a GpuTargetConfigProto), which the
plugin's shared library carries for the GPUs XLA knows. Both come with the optional extra
`pip install -e '.[compile]'` (Python 3.12+); no experiment needs them. A process that uses
them should set JAX_PLATFORMS=cpu before importing jax, so that jax neither looks for the
GPU nor initialises the TPU runtime. Then:

  devices = targets.devices('h100')
  compiled = driver.compile_sweep(family, sweep, chunk, devices=devices)

The figures below are the vendors' published ones (peaks are dense, without sparsity):
  TPU v5e, v6e (Trillium), v5p: Google Cloud TPU documentation, "TPU v5e", "TPU v6e",
    "TPU v5p" system architecture pages (bf16 peak, HBM capacity and bandwidth per chip).
  H100 SXM5 80 GB, H200 SXM 141 GB: NVIDIA H100 and H200 Tensor Core GPU datasheets (FP32
    non-tensor peak, BF16 tensor peak, HBM bandwidth).
  A100 SXM4 80 GB: NVIDIA A100 Tensor Core GPU datasheet.
"""

import dataclasses
import functools
import os

GB, GiB, TERA = 10**9, 2**30, 10**12


@dataclasses.dataclass(frozen=True)
class Target:
  """One accelerator: how XLA names it, what it holds and its published peaks.

  memory: bytes one chip has (HBM); usable: the share a jax process gets by default (on a
  GPU, jax preallocates 75% of it: XLA_PYTHON_CLIENT_MEM_FRACTION); f32_flops: peak float32
  arithmetic outside matrix units (TPU: the bf16 matrix peak / 6, as a HIGHEST-precision
  float32 matmul takes six bf16 passes); bf16_flops: matrix-unit peak; bandwidth: HBM bytes/s.
  """
  name: str
  platform: str  # 'tpu' or 'cuda'
  xla_name: str  # TPU: the topology name; CUDA: the GPU's device_description_str in XLA
  memory: int
  usable: float
  f32_flops: float
  bf16_flops: float
  bandwidth: float
  topology: str = '1x1x1'


TARGETS = {t.name: t for t in (
    Target('v5e', 'tpu', 'v5e:1x1', 16 * GiB, 1.0, 197 * TERA / 6, 197 * TERA, 819 * GB),
    Target('v6e', 'tpu', 'v6e:1x1', 32 * GiB, 1.0, 918 * TERA / 6, 918 * TERA, 1640 * GB),
    Target('v5p', 'tpu', 'v5p:1x1x1', 95 * GiB, 1.0, 459 * TERA / 6, 459 * TERA, 2765 * GB),
    Target('h100', 'cuda', 'NVIDIA H100 80GB HBM3', 80 * GB, 0.75, 67 * TERA, 989 * TERA,
           3350 * GB),
    Target('h200', 'cuda', 'NVIDIA H200 141GB HBM3e', 141 * GB, 0.75, 67 * TERA, 989 * TERA,
           4800 * GB),
    Target('a100', 'cuda', 'NVIDIA A100-SXM4-80GB', 80 * GB, 0.75, 19.5 * TERA, 312 * TERA,
           2039 * GB),
)}


class Unavailable(RuntimeError):
  """A target that this installation cannot compile for (its package is missing)."""


def get(name: str) -> Target:
  if name not in TARGETS:
    raise ValueError(f'unknown target {name!r}; choose from {", ".join(TARGETS)}')
  return TARGETS[name]


def _plugin_library() -> str:
  """Path of the CUDA plugin's shared library."""
  try:
    import jax_plugins.xla_cuda12 as plugin  # noqa: PLC0415
  except ImportError as e:
    raise Unavailable('the CUDA plugin is not installed: pip install -e ".[compile]"') from e
  return os.path.join(os.path.dirname(plugin.__file__), 'xla_cuda_plugin.so')


@functools.cache
def gpu_target_config(xla_name: str) -> str:
  """XLA's GpuTargetConfigProto text for a GPU, read from the installed CUDA plugin (XLA keeps
  each one there as a NUL-terminated text proto naming the GPU in device_description_str)."""
  with open(_plugin_library(), 'rb') as f:
    blob = f.read()
  at = blob.find(f'device_description_str: "{xla_name}"'.encode())
  if at < 0:
    raise Unavailable(f'the installed CUDA plugin has no target description for {xla_name!r}')
  start, end = blob.rfind(b'\0', 0, at) + 1, blob.find(b'\0', at)
  text = blob[start:end].decode()
  if 'gpu_device_info' not in text:
    raise Unavailable(f'{xla_name!r}: what the plugin holds there is not a GPU target config')
  return text


@functools.cache
def devices(name: str) -> tuple:
  """The compile-only devices of one chip of the target, for driver.compile_sweep(devices=)."""
  from jax.experimental import topologies  # noqa: PLC0415
  t = get(name)
  try:
    if t.platform == 'tpu':
      import libtpu  # noqa: F401, PLC0415
      topo = topologies.get_topology_desc(t.xla_name, platform='tpu')
    else:
      topo = topologies.get_topology_desc(platform='cuda', topology=t.topology,
                                          target_config=gpu_target_config(t.xla_name))
  except ImportError as e:
    raise Unavailable(f'{name}: libtpu is not installed: pip install -e ".[compile]"') from e
  return tuple(topo.devices)


def available(name: str) -> str | None:
  """None where this installation compiles for the target, else why not (one line)."""
  try:
    devices(name)
  except Exception as e:  # noqa: BLE001  a missing package, or a jax that cannot do it
    return f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
  return None
