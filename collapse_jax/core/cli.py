"""What every experiment's command line shares: a flag per config field, presets, one-line
errors, the CPU split into devices and the processes of a multi-process run."""

import dataclasses
import os
import sys
import typing
from typing import Any

import jax
from absl import flags, logging

from collapse_jax.core import checkpoints, regimes, settings, validation
from collapse_jax.core.experiment import SweepConfig as SHARED  # the shared fields' documentation


def define_flags(fv: flags.FlagValues, config_cls, workdir: str, presets: dict[str, dict],
                 preset_help: str | None = None) -> None:
  """An experiment's flags on its own FlagValues `fv`: --workdir, --preset (`presets`: name ->
  config fields, 'paper' first: the defaults), a flag for every documented field of
  `config_cls` (settings.setting; help, name and choices from there), --cpu_devices and the
  flags of a multi-process run."""
  flags.DEFINE_string('workdir', workdir, 'Where checkpoints, tables and figures go; '
                      'rerunning with the same flags resumes there.', flag_values=fv)
  if preset_help is None:
    others = ''.join(f'; {name}: {fields}' for name, fields in presets.items() if name != 'paper')
    preset_help = ("paper: the authors' released code's protocol, in every experiment (for one "
                   f'the paper does not have, its defaults), as below{others}. Flags given '
                   'explicitly override the preset.')
  flags.DEFINE_enum('preset', next(iter(presets)), list(presets), preset_help, flag_values=fv)
  defaults = config_cls()
  for name, kind in config_fields(config_cls).items():
    _define(fv, config_cls, name, kind, getattr(defaults, name))
  flags.DEFINE_integer('cpu_devices', os.cpu_count() or 1, 'On a CPU, split it into this many '
                       'devices so the batch of runs uses every core (0: leave it as it is).',
                       flag_values=fv)
  define_process_flags(fv)


def config_fields(config_cls) -> dict[str, Any]:
  """{field: its type} of the fields of `config_cls` that have a flag: those documented by a
  settings.setting (in the class or a base, or the shared ones of experiment.SweepConfig)."""
  hints = typing.get_type_hints(config_cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(config_cls) if _doc(config_cls, f.name)}


def _doc(config_cls, name: str) -> dict:
  return settings.documented(config_cls, name) or settings.documented(SHARED, name)


def _define(fv, config_cls, name: str, kind, default) -> None:
  doc = _doc(config_cls, name)
  flag, choices = doc.get('flag') or name, doc.get('choices')
  help_ = doc['help'](config_cls) if callable(doc['help']) else doc['help']
  base = {t for t in typing.get_args(kind) if t is not type(None)} or {kind}
  if kind is bool:
    flags.DEFINE_bool(flag, default, help_, flag_values=fv)
  elif choices is not None:
    flags.DEFINE_enum(flag, default, list(choices), help_, flag_values=fv)
  elif base == {int}:
    flags.DEFINE_integer(flag, default, help_, flag_values=fv)
  elif base == {float}:
    flags.DEFINE_float(flag, default, help_, flag_values=fv)
  elif base == {str}:
    flags.DEFINE_string(flag, default, help_, flag_values=fv)
  elif _is_points(kind):
    flags.DEFINE_string(flag, ';'.join(','.join(f'{v:g}' for v in p) for p in default), help_,
                        flag_values=fv)
  else:  # a tuple of numbers or names
    flags.DEFINE_list(flag, [f'{v:g}' if isinstance(v, float) else str(v) for v in default],
                      help_, flag_values=fv)


def _is_points(kind) -> bool:
  """tuple[tuple[float, ...], ...]: points written 'x,y;x,y'."""
  args = typing.get_args(kind)
  return typing.get_origin(kind) is tuple and bool(args) and typing.get_origin(args[0]) is tuple


def _parse(flag: str, kind, value):
  """A flag's value as its config field's type."""
  if typing.get_origin(kind) is not tuple:
    return value
  if _is_points(kind):
    return parse_points(flag, value)
  item = typing.get_args(kind)[0]
  if item is float:
    return parse_floats(flag, value)
  if item is int:
    return parse_ints(flag, value)
  return tuple(value)


REGIME_FIELDS = {'regimes', 'real_fractions'} | {f.name for f in dataclasses.fields(regimes.Options)}


def config_from_flags(fv: flags.FlagValues, config_cls, presets: dict[str, dict], by_hand=()):
  """The config of --preset, overridden by the flags given on the command line (those of its
  documented fields, and `by_hand`: fields whose flags of the same name the experiment
  defined itself). A preset's regimes come with their settings: --regime given, the
  regimes' settings are the flags'."""
  validation.check_choice('preset', fv.preset, presets)
  fields = dict(presets[fv.preset])
  if fv['regime'].present:
    fields = {k: v for k, v in fields.items() if k not in REGIME_FIELDS}
  kinds = {**config_fields(config_cls), **{name: None for name in by_hand}}
  for name, kind in kinds.items():
    flag = _doc(config_cls, name).get('flag') or name
    if fv[flag].present:
      fields[name] = _parse(flag, kind, fv[flag].value)
  return config_cls(**fields)


def experiment_main(fv: flags.FlagValues, config_cls, presets: dict[str, dict], run,
                    argv: list[str] | None = None) -> None:
  """main() of an experiment whose flags define_flags made: `run(config, workdir)`."""
  main(fv, lambda: run(config_from_flags(fv, config_cls, presets), fv.workdir), argv)


def define_process_flags(fv: flags.FlagValues) -> None:
  """The flags of a multi-process run (several hosts, or several processes on one)."""
  flags.DEFINE_string('coordinator_address', '', 'host:port of process 0, for a multi-process run '
                      'started by hand; under SLURM, Open MPI or on a TPU pod slice the processes '
                      'find each other without it.', flag_values=fv)
  flags.DEFINE_integer('num_processes', 1, 'Processes in the run (with --coordinator_address).',
                       flag_values=fv)
  flags.DEFINE_integer('process_id', 0, 'This process, 0 .. num_processes - 1 (with '
                       '--coordinator_address).', flag_values=fv)


CLUSTER_SIZE = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE')  # set by SLURM and Open MPI launchers


def start_processes(flag_values) -> None:
  """Joins the other processes of a multi-process run, when there are any."""
  if flag_values.coordinator_address:
    if not 0 <= flag_values.process_id < flag_values.num_processes:
      raise validation.ConfigError('process_id', f'must be in [0, {flag_values.num_processes})')
    args = (flag_values.coordinator_address, flag_values.num_processes, flag_values.process_id)
  elif (any(int(os.environ.get(v, '1')) > 1 for v in CLUSTER_SIZE)
        or ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')):
    args = ()  # JAX reads the cluster's environment
  else:
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU processes talk over TCP
  jax.distributed.initialize(*args)


def main(fv: flags.FlagValues, run, argv: list[str] | None = None) -> None:
  """An experiment's main: its flags `fv` parsed from `argv` (default sys.argv; a test
  passes its own), quiet logs, the CPU split into devices, then `run()`. --help prints the
  flags; a bad flag, or a ConfigError or checkpoints.Damaged that run raises, is printed as
  one line and exits 2.

  Each experiment keeps its flags on its own FlagValues rather than absl's global one, so
  experiments import together and a test runs one in-process, several times over.
  """
  argv = list(sys.argv if argv is None else argv)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # absl's own flags keep their defaults; logs go to stderr
  if 'verbosity' not in fv:
    fv['verbosity'] = flags.FLAGS['verbosity']  # absl's logging flag, shared
  fv.unparse_flags()  # every flag back to its default: nothing carries over from a last call
  if any(a in ('-h', '--help', '-help', '--helpfull') for a in argv[1:]):
    print(fv.get_help())
    sys.exit(0)
  try:
    fv(argv)
  except flags.Error as e:
    fail(e)
  logging.set_verbosity(fv.verbosity if fv['verbosity'].present else logging.WARNING)
  split_cpu(fv.cpu_devices)
  try:
    start_processes(fv)
    run()
  except (validation.ConfigError, checkpoints.Damaged) as e:
    fail(e)


def fail(error: Exception) -> None:
  """Prints one line to stderr and exits non-zero; no traceback."""
  print(f'error: {error}', file=sys.stderr)
  sys.exit(2)


def parse_floats(flag: str, values) -> tuple[float, ...]:
  try:
    return tuple(float(v) for v in values)
  except ValueError as e:
    raise validation.ConfigError(flag, f'expects numbers separated by commas ({e})') from None


def parse_ints(flag: str, values) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in values)
  except ValueError as e:
    raise validation.ConfigError(flag, f'expects whole numbers separated by commas ({e})') from None


def parse_points(flag: str, text: str) -> tuple[tuple[float, ...], ...]:
  """Points written as 'x,y;x,y'."""
  try:
    return tuple(tuple(float(v) for v in p.split(',')) for p in text.split(';') if p.strip())
  except ValueError as e:
    raise validation.ConfigError(flag, f"expects points like '-2,0;2,0' ({e})") from None


def split_cpu(devices: int) -> None:
  """Makes the CPU backend `devices` devices, so sharded runs use every core.

  Must run before JAX first touches a device; XLA_FLAGS that set a host device
  count take precedence. Accelerators are unaffected.
  """
  if devices > 0 and 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
    try:
      jax.config.update('jax_num_cpu_devices', devices)
    except RuntimeError:  # in a process where JAX has started (a test, a notebook): as it is
      if jax.default_backend() == 'cpu' and jax.device_count() != devices:
        logging.warning('--cpu_devices=%d ignored: JAX runs on %d device(s) already',
                        devices, jax.device_count())
