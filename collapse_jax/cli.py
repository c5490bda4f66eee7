"""What every experiment's command line shares: presets, list flags, one-line errors."""

import os
import sys

import jax

from collapse_jax import driver


def preset_config(config_cls, presets: dict[str, dict], preset: str, flag_values, names):
  """The config from a named preset, overridden by the flags given on the command line."""
  if preset not in presets:
    raise driver.ConfigError('preset', f'unknown preset {preset!r}; choose from '
                             f'{", ".join(presets)}')
  fields = dict(presets[preset])
  for field, flag in names.items():
    if flag_values[flag].present or field not in fields:
      fields[field] = flag_values[flag].value
  return config_cls(**fields)


def fail(error: Exception) -> None:
  """Prints one line to stderr and exits non-zero; no traceback."""
  print(f'error: {error}', file=sys.stderr)
  sys.exit(2)


def parse_floats(flag: str, values) -> tuple[float, ...]:
  try:
    return tuple(float(v) for v in values)
  except ValueError as e:
    raise driver.ConfigError(flag, f'expects numbers separated by commas ({e})') from None


def parse_ints(flag: str, values) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in values)
  except ValueError as e:
    raise driver.ConfigError(flag, f'expects whole numbers separated by commas ({e})') from None


def parse_points(flag: str, text: str) -> tuple[tuple[float, ...], ...]:
  """Points written as 'x,y;x,y'."""
  try:
    return tuple(tuple(float(v) for v in p.split(',')) for p in text.split(';') if p.strip())
  except ValueError as e:
    raise driver.ConfigError(flag, f"expects points like '-2,0;2,0' ({e})") from None


def split_cpu(devices: int) -> None:
  """Makes the CPU backend `devices` devices, so sharded runs use every core.

  Must run before JAX first touches a device; XLA_FLAGS that set a host device
  count take precedence. Accelerators are unaffected.
  """
  if devices > 0 and 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
    jax.config.update('jax_num_cpu_devices', devices)
