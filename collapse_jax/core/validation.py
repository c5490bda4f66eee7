"""Bad user input, caught before anything compiles: config errors in the user's words, the
checks every experiment shares, and the workdir's record of a run's flags (config.json)."""

import json
import os
import tempfile
from typing import Any

import jax

from collapse_jax.core import knobs as _knobs
from collapse_jax.core import regimes as _regimes  # where arguments are named regimes

REGIMES = tuple(_regimes.REGIMES)  # the built-in ones; regimes.REGIMES takes more
FRACTION_REGIMES = ('mix', 'fresh')  # the regimes that --real_fraction applies to


class ConfigError(ValueError):
  """Bad user input, reported as one line naming the flag."""

  def __init__(self, flag: str, message: str):
    super().__init__(f'--{flag}: {message}')
    self.flag = flag


def validate_sweep(seeds, generations, samples, regimes, real_fractions, min_samples=1):
  """Checks the flags every experiment shares; raises ConfigError."""
  if seeds < 1:
    raise ConfigError('seeds', f'must be at least 1, got {seeds}')
  if generations < 1:
    raise ConfigError('generations', f'must be at least 1, got {generations}')
  if samples < min_samples:
    raise ConfigError('samples', f'must be at least {min_samples}, got {samples}')
  if not regimes:
    raise ConfigError('regime', 'needs at least one regime')
  for r in regimes:
    check_choice('regime', r, _regimes.REGIMES)
  if not real_fractions:
    raise ConfigError('real_fraction', 'needs at least one fraction')
  for f in real_fractions:
    if not 0.0 <= f <= 1.0:
      raise ConfigError('real_fraction', f'{f} is outside [0, 1]')
  if not set(regimes) & set(FRACTION_REGIMES) and tuple(real_fractions) != (0.0,):
    raise ConfigError('real_fraction', 'applies only to the regimes mix and fresh')


def validate_options(config, family) -> None:
  """Checks a config's regimes.Options against its regimes and family; raises ConfigError."""
  validate_regime_settings(config.regimes, config.settings(), config.active_score(config.regimes),
                           family)
  if config.score is not None and config.score not in _regimes.SCORES:
    raise ConfigError('score', f'unknown score {config.score!r}; choose from '
                      f'{", ".join(_regimes.SCORES)}')
  if config.score is not None and config.score not in _regimes.available_scores(family):
    raise ConfigError('score', f'{config.score!r} is not a score this family has; choose from '
                      f'{", ".join(_regimes.available_scores(family))}')
  if config.candidates != _regimes.CANDIDATES and 'curate' not in config.regimes:
    raise ConfigError('candidates', 'applies only to the regime curate')
  if config.candidates < 1:
    raise ConfigError('candidates', f'must be at least 1, got {config.candidates}')
  if not config.verifier_noise >= 0:
    raise ConfigError('verifier_noise', f'must be non-negative, got {config.verifier_noise}')
  if config.verifier_noise != 1.0 and config.active_score(config.regimes) != 'noisy':
    raise ConfigError('verifier_noise', 'applies only to --score=noisy')
  validate_knobs(config, family)


def validate_knobs(config, family) -> None:
  """Each knob's values in range, and set only where it acts: sampling knobs on a family that
  samples so, real_weight with a regime that mixes real rows, a verifier's with its score."""
  mixing = [r for r, reg in _regimes.REGIMES.items() if reg.real_rows is not None]
  for name, knob in _knobs.KNOBS.items():
    values = getattr(config, _knobs.FIELDS[name])
    if not values and not _knobs.at_default(name, values):
      raise ConfigError(name, 'needs at least one value')
    for v in values:
      if not knob.valid(v):
        raise ConfigError(name, f'{v:g} is not {knob.allowed}')
    if _knobs.at_default(name, values):
      continue
    if len(set(values)) != len(values):
      raise ConfigError(name, f'repeats a value: {",".join(f"{v:g}" for v in values)}')
    if knob.acts_on == 'sampling' and name not in _sampling_knobs(family):
      raise ConfigError(name, 'this family does not sample with it; it takes '
                        f'{", ".join("--" + k for k in _sampling_knobs(family)) or "none"}')
    if knob.acts_on == 'weight' and not set(config.regimes) & set(mixing):
      raise ConfigError(name, f'applies only to the regimes that mix real rows: {", ".join(mixing)}')
    if knob.acts_on == 'verifier' and config.active_score(config.regimes) != 'verifier':
      raise ConfigError(name, 'applies only to --score=verifier')
    if knob.acts_on == 'verifier' and 'verifier' not in _regimes.available_scores(family):
      raise ConfigError(name, 'this family has no biased verifier (--score=verifier)')


def validate_regime_settings(names, settings, score, family):
  """Each parameter's values in range and given only with a regime that uses it; the score
  one the family has, where a regime ranks candidates."""
  used = {_regimes.get(r).parameter: r for r in names}
  for parameter, values in settings:
    reg = _regimes.get(used[parameter]) if parameter in used else None
    for name, r in _regimes.REGIMES.items():
      if reg is None and r.parameter == parameter and tuple(values) != (r.default,):
        raise ConfigError(parameter, f'applies only to the regime {name}')
    if not values:
      raise ConfigError(parameter, 'needs at least one value')
    for v in values:
      if reg is not None and not reg.valid(v):
        raise ConfigError(parameter, f'{v:g} is not {reg.allowed}')
  if family is not None and any(_regimes.get(r).scored for r in names):
    have = _regimes.available_scores(family)
    if score not in have:
      raise ConfigError('score', f'{score!r} is not a score this family has; choose from '
                        f'{", ".join(have)}')


def _sampling_knobs(family) -> tuple[str, ...]:
  """The sampling knobs a family takes; `family` may be a tuple naming them with its scores."""
  if isinstance(family, tuple):
    return tuple(k for k in _knobs.SAMPLING if k in family)
  return family.sampling_knobs


def check_choice(flag: str, value, choices, what: str | None = None) -> None:
  """Raises ConfigError naming `flag` when value is none of `choices`."""
  if value not in choices:
    raise ConfigError(flag, f'unknown {what or flag} {value!r}; choose from {", ".join(choices)}')


def check_fields(config, checks) -> None:
  """Raises ConfigError for the first (field, ok, message) whose ok is false."""
  for field, ok, message in checks:
    if not ok:
      raise ConfigError(field, f'{message}, got {getattr(config, field)}')


def writable_dir(flag: str, path: str) -> str:
  """Makes directory `path` if needed and writes and removes a file there; returns it, or
  raises ConfigError naming `flag` when it cannot be created or written."""
  if not path:
    raise ConfigError(flag, 'needs a directory')
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(flag, f'{path} exists and is not a directory; pass another --{flag}')
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ConfigError(flag, f'cannot create directory {path} ({e.strerror or e}); pass '
                      f'another --{flag}') from None
  try:
    with tempfile.NamedTemporaryFile(dir=path, prefix='.write-test-'):
      pass
  except OSError as e:
    raise ConfigError(flag, f'cannot write in {path} ({e.strerror or e}); pass another '
                      f'--{flag}') from None
  return path


def check_config(workdir: str, config: dict[str, Any]) -> None:
  """Records the run's flags in workdir, or refuses flags that differ from them, or a
  workdir that cannot be created, read or written."""
  path = os.path.join(writable_dir('workdir', workdir), 'config.json')
  if os.path.exists(path):
    try:
      with open(path) as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:  # unreadable, or not JSON
      raise ConfigError('workdir', f'cannot read {path} ({type(e).__name__}: {e}); pass '
                        'another --workdir') from None
    if 'experiment' not in saved:  # recorded by an older version: the run is the same
      config = {k: v for k, v in config.items() if k != 'experiment'}
    for key in sorted(set(saved) | set(config)):
      if saved.get(key) != config.get(key):
        raise ConfigError(key, f'is {config.get(key)!r} but the run in {workdir} used '
                          f'{saved.get(key)!r}; pass the same flags to resume it, or '
                          'another --workdir')
    return
  # The primary process writes it: placement.is_primary's test, made here because placement
  # raises this module's ConfigError and so imports it.
  if jax.process_index() == 0:
    with open(path, 'w') as f:
      json.dump(config, f, indent=2, sort_keys=True)
