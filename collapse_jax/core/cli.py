"""What every experiment's command line shares: presets, list flags, one-line errors."""

import os
import sys

import jax
from absl import flags, logging

from collapse_jax.core import checkpoints, regimes, validation


COMMON = ('seeds', 'generations', 'checkpoint_every', 'first_seed')  # config fields of the flags below


def define_common_flags(fv: flags.FlagValues, defaults, workdir: str,
                        presets: dict[str, dict]) -> None:
  """The flags every experiment has, on its own FlagValues `fv`, with `defaults` (a config)
  as their defaults and `presets` (name -> config fields; 'paper' first, the defaults) as
  --preset's choices."""
  flags.DEFINE_string('workdir', workdir, 'Where checkpoints, tables and figures go; '
                      'rerunning with the same flags resumes there.', flag_values=fv)
  others = '; '.join(f'{name}: {fields}' for name, fields in presets.items() if name != 'paper')
  flags.DEFINE_enum('preset', 'paper', list(presets), "paper: the paper's protocol as its "
                    f'released code runs it, as below; {others}. Flags given explicitly '
                    'override the preset.', flag_values=fv)
  flags.DEFINE_integer('seeds', defaults.seeds, 'Independent runs, all in one program.',
                       flag_values=fv)
  flags.DEFINE_integer('generations', defaults.generations, 'Generations after the first.',
                       flag_values=fv)
  flags.DEFINE_list('regime', list(defaults.regimes),
                    f'Comma-separated regimes: {", ".join(regimes.REGIMES)}.', flag_values=fv)
  flags.DEFINE_list('real_fraction', [str(f) for f in defaults.real_fractions],
                    'Comma-separated fractions of real data, for the regimes mix and fresh.',
                    flag_values=fv)
  if isinstance(defaults, regimes.Options):
    define_regime_flags(fv, defaults)
  flags.DEFINE_integer('checkpoint_every', defaults.checkpoint_every,
                       'Generations between checkpoints.', flag_values=fv)
  flags.DEFINE_integer('cpu_devices', os.cpu_count() or 1, 'On a CPU, split it into this many '
                       'devices so the batch of runs uses every core (0: leave it as it is).',
                       flag_values=fv)
  flags.DEFINE_integer('first_seed', defaults.first_seed,
                       'Seeds are first_seed, first_seed + 1, ...', flag_values=fv)
  define_process_flags(fv)


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


def define_regime_flags(fv: flags.FlagValues, defaults: regimes.Options) -> None:
  """The flags of the regimes that select, weight or augment synthetic data."""
  lists = {'keep_fraction': ('keep_fractions', 'verify: the share of candidates kept (draws '
                             'samples / keep_fraction, keeps the best-scored).'),
           'reward_scale': ('reward_scales', 'curate: each row chosen among --candidates with '
                            'probability proportional to exp(reward_scale * score).'),
           'synthetic_ratio': ('synthetic_ratios', 'augment: all original data plus this many '
                               'times as many samples of the latest model.'),
           'age_decay': ('age_decays', "accumulate: each generation's data weighted by "
                         'age_decay^age.')}
  for flag, (field, help_) in lists.items():
    flags.DEFINE_list(flag, [f'{v:g}' for v in getattr(defaults, field)],
                      f'Comma-separated values, each a group of runs; {help_}', flag_values=fv)
  flags.DEFINE_enum('score', defaults.score, list(regimes.SCORES),
                    'What verify and curate rank candidates by: the true density, the '
                    "model's own, generation 0's, the truth plus N(0, verifier_noise^2), or "
                    f"the family's reward (default: {defaults.DEFAULT_SCORE}). Given with any "
                    'regime, every run reports the mean score of its training data and samples.',
                    flag_values=fv)
  flags.DEFINE_integer('candidates', defaults.candidates, 'curate: candidates K per kept row.',
                       flag_values=fv)
  flags.DEFINE_float('verifier_noise', defaults.verifier_noise, '--score=noisy: the standard '
                     "deviation of the noise added to the true log density.", flag_values=fv)


def regime_fields(flag_values, config_cls=None) -> dict:
  """The config's regimes and their settings from the flags (those `config_cls` has)."""
  fields = {'regimes': tuple(flag_values.regime),
            'real_fractions': parse_floats('real_fraction', flag_values.real_fraction)}
  if config_cls is not None and issubclass(config_cls, regimes.Options):
    for field, flag in regimes.OPTION_FLAGS.items():
      value = flag_values[flag].value
      fields[field] = parse_floats(flag, value) if isinstance(value, list) else value
  return fields


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


def preset_config(config_cls, presets: dict[str, dict], preset: str, flag_values, names):
  """The config from a named preset, overridden by the flags given on the command line."""
  validation.check_choice('preset', preset, presets)
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
