"""The generation driver: one mechanism for every recursive-training experiment.

A model family gives pure functions for one run (draw real data, fit, sample,
evaluate). The driver builds a generation from them and a regime, runs a batch
of seeds x real-data fractions with `vmap` in one compiled program sharded over
all devices, runs generations with `lax.scan` in chunks, and checkpoints with
Orbax between chunks. Keys come from `fold_in(run_key, generation)`, so a
resumed run draws exactly the numbers an uninterrupted one draws.

Shapes in names: B runs in the batch, N samples, P pool rows, D dimensions.
"""

import dataclasses
import json
import os
import sys
import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from collapse_jax.core import checkpoints, regimes
from collapse_jax.core import regimes as _regimes  # where arguments are named regimes

REGIMES = tuple(regimes.REGIMES)  # the built-in ones; regimes.REGIMES takes more
FRACTION_REGIMES = ('mix', 'fresh')  # the regimes that --real_fraction applies to


class ConfigError(ValueError):
  """Bad user input, reported as one line naming the flag."""

  def __init__(self, flag: str, message: str):
    super().__init__(f'--{flag}: {message}')
    self.flag = flag


@dataclasses.dataclass(frozen=True)
class Summary:
  """Sufficient statistics of a family whose fit depends on data only through them.

  of(x_NxD, w_N) -> stats           the statistics of weighted data
  combine(stats, stats) -> stats    those of the two data sets together
  fit(stats, key) -> (params, metrics)   the fit they determine

  With these, `accumulate` keeps a running summary instead of every sample:
  constant memory and work per generation instead of a pool that grows.
  """
  of: Callable[..., Any]
  combine: Callable[..., Any]
  fit: Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class Family:
  """What a model family gives the driver; each function is for one run.

  draw_real(key, n) -> x_NxD        samples of the true distribution
  fit(x_NxD, w_N, key) -> (params, metrics)   train on weighted data
  sample(params, key, n) -> x_NxD   the model's own samples
  reference(params0, key) -> ref    what later generations are measured against
  evaluate(params, x_NxD, ref) -> metrics     x_NxD: the model's samples
  summary: sufficient statistics, when the fit has them (see Summary)
  log_density(params, x_NxD) -> l_N   optional: the model's log density (the scores
    self and gen0 of verify and curate)
  true_log_density(x_NxD) -> l_N      optional: the truth's (the scores truth, noisy)
  reward(x_NxD) -> r_N                optional: the family's reward (the score reward)
    These three may return scores.Relative (the score of a point near the rows plus each
    row's difference from it), which keeps the candidates' ranking exact when the model
    is far narrower than the scorer; plain values rank at float32's resolution of the
    values themselves.
  refit(params, key, n) -> (params, metrics)  optional: under `replace`, the next
    generation fitted to n samples of the model `params` that it draws itself, in
    place of `fit` on stored samples: for fits better conditioned in the model's
    own coordinates (its samples are mu + L z: refit from z), or that draw fresh
    samples for every batch
  sample_summary(params, key, n) -> stats   optional: the statistics (as summary.of's) of
    n samples of the model, drawn exactly from their law without the samples. Where a
    generation needs no rows of the model's samples (no stored samples, no scores), the
    driver calls it in their place: `evaluate` then receives these statistics as its
    x_NxD, and a running summary (accumulate) adds them
  unbounded_below: metrics that may be -inf (logarithms of a spread that collapsed to 0
    in float32, as a fit to its own filtered samples can); any other non-finite metric
    stops the run as a bug
  one_at_a_time_on_cpu: on a CPU, run a device's runs one after another rather
    than vectorised (default_width): for fits that iterate to a per-run
    convergence test (EM), or whose vectorised form costs more than a loop
  """
  draw_real: Callable[..., Any]
  fit: Callable[..., Any]
  sample: Callable[..., Any]
  reference: Callable[..., Any]
  evaluate: Callable[..., Any]
  summary: Summary | None = None
  refit: Callable[..., Any] | None = None
  one_at_a_time_on_cpu: bool = False
  log_density: Callable[..., Any] | None = None
  true_log_density: Callable[..., Any] | None = None
  reward: Callable[..., Any] | None = None
  sample_summary: Callable[..., Any] | None = None
  unbounded_below: tuple[str, ...] = ()

  def running(self, regime: str, values=(1.0,)) -> bool:
    """Whether this regime keeps a running summary in place of a pool: all data, equal
    weights (`values`: the sweep's values of its parameter, age decays of 1)."""
    reg = regimes.get(regime)
    return (reg.shortcut == 'summary' and self.summary is not None
            and all(v == reg.default for v in values))

  def refitting(self, regime: str) -> bool:
    """Whether this regime refits on the previous model itself rather than its stored samples."""
    return regimes.get(regime).shortcut == 'refit' and self.refit is not None


@dataclasses.dataclass(frozen=True)
class WithData:
  """A family whose functions read large arrays that every run shares (a dataset).

  make(data) -> Family. The driver passes `data` to its compiled programs as an
  argument, replicated on every device: closed over, the arrays would be baked
  into each program as constants, slow to compile and held twice.
  """
  make: Callable[[Any], Family]
  data: Any


def _unbind(family):
  """(make, data) of a family with or without shared data."""
  if isinstance(family, WithData):
    return family.make, family.data
  return (lambda _: family), None


def concrete(family) -> Family:
  """The Family itself, its functions bound to the shared data outside any trace."""
  make, data = _unbind(family)
  return make(data)


@dataclasses.dataclass(frozen=True)
class Sweep:
  """One regime's batch of runs: seeds x values of the regime's parameter, G generations.

  real_fractions: the values of mix's and fresh's parameter; settings: (parameter,
  values) pairs of the other regimes' (keep_fraction, reward_scale, ...); score:
  what verify and curate rank by (regimes.SCORES), with `noise` for 'noisy';
  candidates: K of curate.
  """
  regime: str
  seeds: int
  generations: int
  samples: int
  real_fractions: tuple[float, ...] = (0.0,)
  first_seed: int = 0
  settings: tuple[tuple[str, tuple[float, ...]], ...] = ()
  score: str | None = None
  noise: float = 0.0
  candidates: int = regimes.CANDIDATES

  @property
  def fractions(self) -> tuple[float, ...]:
    """The values of the regime's parameter, one per group of runs (real fractions, ...)."""
    reg = regimes.get(self.regime)
    if reg.parameter is None:
      return (0.0,)
    if reg.parameter == 'real_fraction':
      return self.real_fractions
    return tuple(dict(self.settings).get(reg.parameter, (reg.default,)))

  def candidate_rows(self) -> int:
    """Rows of the previous model's samples a generation draws."""
    return regimes.get(self.regime).candidates(self.samples, self.fractions, self.candidates)

  def runs(self) -> tuple[np.ndarray, np.ndarray]:
    """Seed and parameter value (real fraction, ...) of every run, value-major, B each."""
    seed_B = np.tile(np.arange(self.seeds) + self.first_seed, len(self.fractions))
    fraction_B = np.repeat(np.asarray(self.fractions, np.float32), self.seeds)
    return seed_B.astype(np.int32), fraction_B


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


def check_choice(flag: str, value, choices, what: str | None = None) -> None:
  """Raises ConfigError naming `flag` when value is none of `choices`."""
  if value not in choices:
    raise ConfigError(flag, f'unknown {what or flag} {value!r}; choose from {", ".join(choices)}')


def check_fields(config, checks) -> None:
  """Raises ConfigError for the first (field, ok, message) whose ok is false."""
  for field, ok, message in checks:
    if not ok:
      raise ConfigError(field, f'{message}, got {getattr(config, field)}')


# ---------------------------------------------------------------- the pool
# The regimes' policies (regimes.py) draw on the previous generation's samples and,
# for the regimes that keep it, a pool holding in blocks of N rows the original data
# and every generation's samples.

def pool_rows(family: Family, sweep: 'Sweep', n: int) -> int:
  """Rows of the pool: the original data and every generation's samples."""
  if not regimes.get(sweep.regime).keeps_pool or _running(family, sweep):
    return 0
  return (sweep.generations + 2) * n


# ---------------------------------------------------------------- one run

def _keys(seed):
  data_key, ref_key, run_key = jax.random.split(jax.random.key(seed), 3)
  return data_key, ref_key, run_key


def _first_generation(family: Family, sweep: Sweep, seed, value):
  """Generation 0 of one run: fit the original data. Returns const, carry, metrics."""
  data_key, ref_key, run_key = _keys(seed)
  _, fit_key, sample_key = jax.random.split(jax.random.fold_in(run_key, 0), 3)
  n = sweep.samples
  x0_NxD = family.draw_real(data_key, n)
  params, fit_metrics = family.fit(x0_NxD, jnp.ones(n), fit_key)
  synth_NxD = family.sample(params, sample_key, n)
  ref = family.reference(params, ref_key)
  const = {'seed': seed, 'fraction': value, 'x0': x0_NxD, 'ref': ref}
  if sweep.score == 'gen0':
    const['model0'] = params
  if _draws_candidates(family, sweep) or family.refitting(sweep.regime):
    carry = {'model': params}
  elif _running(family, sweep):  # the summary is all a generation reads
    carry = {}
  else:
    carry = {'last': synth_NxD}
  rows = pool_rows(family, sweep, n)
  if _running(family, sweep):
    ones = jnp.ones(n)
    carry['summary'] = family.summary.combine(family.summary.of(x0_NxD, ones),
                                              family.summary.of(synth_NxD, ones))
  if rows:
    pool_PxD = jnp.zeros((rows, x0_NxD.shape[-1]), x0_NxD.dtype)
    carry['pool'] = pool_PxD.at[:n].set(x0_NxD).at[n:2 * n].set(synth_NxD)
  metrics = {**fit_metrics, **family.evaluate(params, synth_NxD, ref)}
  return const, carry, {**metrics, **_score_metrics(family, sweep, const, params, synth_NxD,
                                                    x0_NxD, jnp.ones(n), {}, fit_key)}


def _running(family: Family, sweep: Sweep) -> bool:
  """Whether the sweep keeps a running summary: a scored sweep keeps its data to score it."""
  return family.running(sweep.regime, sweep.fractions) and sweep.score is None


def _draws_candidates(family: Family, sweep: Sweep) -> bool:
  """Whether a generation draws its synthetic training data from the previous model itself
  (more or fewer rows than it evaluates, or to score them) rather than reusing those samples."""
  reg = regimes.get(sweep.regime)
  return not reg.keeps_pool and (reg.scored or sweep.candidate_rows() != sweep.samples)


def _score_metrics(family, sweep, const, params, synth_NxD, x_RxD, w_R, policy_metrics, key,
                   previous=None):
  """The mean score of the training data and of the model's samples, where the run has a
  score; pass_rate, the share of candidates kept (1 where nothing is filtered)."""
  if sweep.score is None:
    return {}
  score = regimes.scorer(family, sweep.score, sweep.noise)
  model0 = const.get('model0', params)
  k1, k2, k3 = jax.random.split(jax.random.fold_in(key, 1), 3)
  if x_RxD is None:  # refitted on draws of its own: as many fresh draws of the same model
    x_RxD, w_R = family.sample(previous, k3, sweep.samples), jnp.ones(sweep.samples)
  s_R = score(params, model0, x_RxD, k2)
  s_N = score(params, model0, synth_NxD, k1)
  return {'sample_score': s_N.at + jnp.mean(s_N.gap_N),
          'train_score': s_R.at + jnp.sum(jnp.where(w_R > 0, w_R * s_R.gap_N, 0.0)) / jnp.sum(w_R),
          'pass_rate': jnp.float32(policy_metrics.get('pass_rate', 1.0))}


def _generation(family: Family, sweep: Sweep, const, carry, g):
  """Generation g >= 1 of one run: build the training set, fit, sample, measure."""
  _, _, run_key = _keys(const['seed'])
  train_key, fit_key, sample_key = jax.random.split(jax.random.fold_in(run_key, g), 3)
  n = sweep.samples
  reg = regimes.get(sweep.regime)
  x_RxD, w_R, policy_metrics = None, None, {}
  previous = carry.get('model')
  if _draws_candidates(family, sweep):
    draw_key, score_key, train_key = jax.random.split(train_key, 3)
    last_CxD = family.sample(carry['model'], draw_key, sweep.candidate_rows())
    scores_C = None
    if reg.scored:
      scores_C = regimes.scorer(family, sweep.score, sweep.noise)(
          carry['model'], const.get('model0'), last_CxD, score_key).gap_N
    x_RxD, w_R, policy_metrics = regimes.apply(
        reg, regimes.Pools(const['x0'], last_CxD, carry.get('pool'), family.draw_real), g,
        train_key, const['fraction'], scores_C)
    params, fit_metrics = family.fit(x_RxD, w_R, fit_key)
  elif family.refitting(sweep.regime):
    params, fit_metrics = family.refit(carry['model'], fit_key, n)
  elif _running(family, sweep):
    params, fit_metrics = family.summary.fit(carry['summary'], fit_key)
  else:
    x_RxD, w_R, policy_metrics = regimes.apply(
        reg, regimes.Pools(const['x0'], carry['last'], carry.get('pool'), family.draw_real), g,
        train_key, const['fraction'], None)
    params, fit_metrics = family.fit(x_RxD, w_R, fit_key)
  carry = dict(carry)
  if 'model' in carry:
    carry['model'] = params
  needs_rows = sweep.score is not None or bool({'last', 'pool'} & set(carry))
  if family.sample_summary is not None and not needs_rows:
    stats = family.sample_summary(params, sample_key, n)  # no rows needed: their statistics
    if 'summary' in carry:
      carry['summary'] = family.summary.combine(carry['summary'], stats)
    return carry, {**fit_metrics, **family.evaluate(params, stats, const['ref'])}  # no score
  synth_NxD = family.sample(params, sample_key, n)
  if 'last' in carry:
    carry['last'] = synth_NxD
  if 'summary' in carry:
    carry['summary'] = family.summary.combine(carry['summary'],
                                              family.summary.of(synth_NxD, jnp.ones(n)))
  if 'pool' in carry:
    carry['pool'] = jax.lax.dynamic_update_slice_in_dim(carry['pool'], synth_NxD, (g + 1) * n, 0)
  metrics = {**fit_metrics, **family.evaluate(params, synth_NxD, const['ref'])}
  return carry, {**metrics, **_score_metrics(family, sweep, const, params, synth_NxD, x_RxD, w_R,
                                             policy_metrics, fit_key, previous)}


# ---------------------------------------------------------------- compiled programs

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
    from jax.experimental import multihost_utils  # noqa: PLC0415
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def barrier(name: str) -> None:
  """Waits until every process gets here (a no-op in a one-process run)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415
    multihost_utils.sync_global_devices(name)


def is_primary() -> bool:
  """Whether this process writes tables, figures and summaries (process 0 of a multi-host run)."""
  return jax.process_index() == 0


def programs(family: Family | WithData, sweep: Sweep, chunk: int, width: int, devices=None):
  """The two compiled programs of a sweep: generation 0, and `chunk` generations.

  Each device advances its own runs independently (shard_map), `width` runs
  vectorised together (lax.map over vmapped groups). A run's fit stops when that
  run converges: a wide group waits for its slowest member, which pays on an
  accelerator and not on a CPU, where one run already fills the vector units.
  The groups never depend on the device count, so neither do the results.
  `devices`: compile for these compile-only devices (collapse_jax.core.targets) instead of
  this process's; `.compiled` then gives the executable and its bytes, and nothing runs.
  """
  runs, replicated = PartitionSpec('runs'), PartitionSpec()
  runs_mesh = mesh(devices=devices)
  make, data = _unbind(family)

  def per_device(one_run, in_specs, donate=()):
    """one_run(*per_run_args, *shared_args) over this device's runs, in groups of width."""
    mapped = sum(spec == runs for spec in in_specs)

    def local(*args):
      shared = args[mapped:]
      return jax.lax.map(lambda a: one_run(*a, *shared), args[:mapped], batch_size=width)
    return jax.jit(jax.shard_map(local, mesh=runs_mesh, in_specs=in_specs, out_specs=runs,
                                 check_vma=False), donate_argnums=donate)

  def first_run(seed, fraction, data):
    return _first_generation(make(data), sweep, seed, fraction)

  def chunk_run(const, carry, g0, data):
    """Generations g0 .. g0 + chunk - 1 of one run; those past the last are skipped."""
    bound = make(data)

    def body(carry, g):
      step = lambda: _generation(bound, sweep, const, carry, g)
      shapes = jax.eval_shape(step)[1]
      skip = lambda: (carry, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
      return jax.lax.cond(g <= sweep.generations, step, skip)
    return jax.lax.scan(body, carry, g0 + jnp.arange(chunk))

  first = per_device(first_run, (runs, runs, replicated))
  # g0 is traced and shared by all runs, so one program serves every chunk.
  advance = per_device(chunk_run, (runs, runs, replicated, replicated), donate=1)
  run_first = lambda seed_B, fraction_B: first(seed_B, fraction_B, data)  # noqa: E731
  run_advance = lambda const_B, carry_B, g0: _swap(advance(const_B, carry_B, g0, data))  # noqa: E731
  # Ahead of time: the same programs compiled for given arguments, with their bytes per device.
  held = data if devices is None else jax.tree.map(  # a compile-only target holds shapes only
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                     sharding=NamedSharding(runs_mesh, replicated)), data)
  # A compile-only device is not this process's: kernels that ask which GPU they are lowered
  # for (Pallas) learn it from the mesh's abstract device.
  target = None if devices is None else runs_mesh.abstract_mesh
  run_first.compiled = lambda *args: _ahead(first, held, args, lambda out: out, target)
  run_advance.compiled = lambda *args: _ahead(advance, held, args, _swap, target)
  return run_first, run_advance


def _ahead(jitted, data, args, finish, target=None):
  """(the compiled program as a function of args, the bytes a device needs to run it); the
  function's `executable` is XLA's, for its memory and cost analyses and its HLO. target:
  the abstract mesh of compile-only devices, lowered under."""
  if target is None:
    exe = jitted.lower(*args, data).compile()
  else:
    with jax.sharding.use_abstract_mesh(target):
      lowered = jitted.lower(*args, data)
    exe = lowered.compile()
  call = lambda *a: finish(exe(*a, data))  # noqa: E731
  call.executable = exe
  return call, needed_bytes(exe)


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
    raise ConfigError('seeds', f'{line}: does not fit; about {max(fit, 0)} runs (seeds x real '
                      'fractions) would, or use more devices')
  return line


def _swap(out):
  """Per-run metrics B x chunk -> chunk x B, as the host loop stores them."""
  carry_B, metrics_BxC = out
  return carry_B, jax.tree.map(lambda v: jnp.swapaxes(v, 0, 1), metrics_BxC)


def placed_runs(sweep: Sweep, devices=None):
  """Seeds and fractions, padded to a multiple of the device count by repeating
  the last run, sharded over the devices; and the runs per device.

  Every device gets at least two runs: XLA compiles a loop over one run into
  straight-line code whose floating point rounds differently, and results must
  not depend on the device count. With compile-only `devices` (a target), the
  seeds and fractions are their shapes on those devices, for `programs(..., devices)`.
  """
  seed_B, fraction_B = sweep.runs()
  count = jax.device_count() if devices is None else len(devices)
  pad = max(-len(seed_B) % count, 2 * count - len(seed_B))
  seed_B, fraction_B = np.pad(seed_B, (0, pad), 'edge'), np.pad(fraction_B, (0, pad), 'edge')
  if devices is None:
    return (place(seed_B), place(fraction_B)), len(seed_B) // count
  sharding = NamedSharding(mesh(devices=devices), PartitionSpec('runs'))
  return tuple(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
               for x in (seed_B, fraction_B)), len(seed_B) // count


# ---------------------------------------------------------------- the host loop

def _check_finite(metrics, g0, sweep, seed_B, fraction_B, below=()):
  """Raises on the first non-finite metric, naming generation, seed and parameter value;
  the metrics named in `below` may be -inf (the logarithm of a spread that reached 0)."""
  for name, v_CxB in metrics.items():
    if not np.issubdtype(v_CxB.dtype, np.floating):
      continue
    bad_CxB = ~np.isfinite(v_CxB) & ((v_CxB != -np.inf) if name in below else True)
    if np.any(bad_CxB):
      c, b = np.argwhere(bad_CxB)[0][:2]
      column = regimes.get(sweep.regime).column
      raise FloatingPointError(
          f'{name} is {v_CxB[c, b]} at generation {g0 + c} of seed {seed_B[b]} '
          f'(regime {sweep.regime}, {column.replace("_", " ")} {fraction_B[b]:g})')


def default_width(family: Family, runs_per_device: int, platform: str | None = None) -> int:
  """Runs vectorised together: all of a device's, except one at a time on a CPU
  for families that ask for it (there one run already fills the vector units).
  `platform`: the devices' ('cpu', 'tpu', 'gpu'); default: this process's."""
  if family.one_at_a_time_on_cpu and (platform or jax.default_backend()) == 'cpu':
    return 1
  return runs_per_device


def compile_sweep(family: Family | WithData, sweep: Sweep, chunk: int, width: int | None = None,
                  with_first: bool = True, devices=None):
  """A sweep's runs placed on the devices and its two programs compiled ahead of time:
  ((seed_B, fraction_B), runs per device, first, advance, the abstract (const_B, carry_B,
  metrics0) of generation 0 with the runs' sharding, the bytes a device needs).
  with_first=False compiles the chunk's program alone (a resumed run never runs generation
  0's); first is None then, and the bytes are the chunk's. With compile-only `devices` (a
  target, collapse_jax.core.targets) the programs are compiled for them and never run:
  first.executable and advance.executable hold XLA's executables, seed_B and fraction_B are
  shapes, and the bytes are the target's."""
  (seed_B, fraction_B), per_device = placed_runs(sweep, devices)
  platform = None if devices is None else devices[0].platform
  first, advance = programs(
      family, sweep, chunk,
      min(width or default_width(concrete(family), per_device, platform), per_device), devices)
  shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=seed_B.sharding),
                        jax.eval_shape(first, seed_B, fraction_B))
  g0 = jnp.int32(1) if devices is None else jax.ShapeDtypeStruct(
      (), jnp.int32, sharding=NamedSharding(seed_B.sharding.mesh, PartitionSpec()))
  first, need_first = first.compiled(seed_B, fraction_B) if with_first else (None, 0)
  advance, need_advance = advance.compiled(shapes[0], shapes[1], g0)
  return (seed_B, fraction_B), per_device, first, advance, shapes, max(need_first, need_advance)


def run(family: Family | WithData, sweep: Sweep, directory: str, checkpoint_every: int,
        progress: bool = True, width: int | None = None,
        settled: Callable[[dict[str, np.ndarray]], bool] | None = None
        ) -> dict[str, np.ndarray]:
  """Runs (or resumes, or reloads) a sweep; returns metrics, each (G+1) x B x ...

  Checkpoints land in `directory` every `checkpoint_every` generations. A sweep
  whose last checkpoint is its final generation is reloaded, not recomputed.
  `width` runs are vectorised together on each device (default_width()).
  `settled(metrics_B)`, given the latest generation's metrics, says whether every
  run has reached a state that later generations repeat exactly (an absorbed
  chain); the sweep then stops at the end of that chunk and the remaining
  generations repeat its metrics.
  """
  b = len(sweep.runs()[0])
  manager = checkpoints.manager(directory)
  step = manager.latest_step()
  if step == sweep.generations:  # finished: read the metrics back, compile nothing
    saved = manager.restore(step, args=ocp.args.Composite(history=ocp.args.StandardRestore()))
    return {k: np.asarray(v)[:, :b] for k, v in saved.history.items()}

  chunk = min(checkpoint_every, sweep.generations)
  # Compiled before anything runs, so a batch too large for a device is refused up front;
  # a resumed run compiles only the chunk's program.
  (seed_B, fraction_B), per_device, first, advance, shapes, need = compile_sweep(
      family, sweep, chunk, width, step is None)
  const_B, carry_B, metrics0 = shapes
  shared = sum(x.nbytes for x in jax.tree.leaves(_unbind(family)[1]))
  line = check_memory(need, per_device, shared, b)
  if progress and is_primary():
    tqdm.tqdm.write(f'{sweep.regime} M={sweep.samples}: {line}', file=sys.stderr)
  metrics = {k: np.zeros((sweep.generations + 1,) + v.shape, v.dtype) for k, v in metrics0.items()}

  labels = (sweep, to_host(seed_B), to_host(fraction_B),  # for error messages
            concrete(family).unbounded_below)
  if step is None:
    const_B, carry_B, metrics0 = first(seed_B, fraction_B)
    metrics0 = {k: to_host(v)[None] for k, v in metrics0.items()}
    _check_finite(metrics0, 0, *labels)
    for k, v in metrics0.items():
      metrics[k][0] = v[0]
    step = 0
  else:  # resume: restore onto the same sharding
    saved = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore({'const': const_B, 'carry': carry_B}),
        history=ocp.args.StandardRestore(metrics)))
    const_B, carry_B = saved.state['const'], saved.state['carry']
    metrics = {k: np.asarray(v) for k, v in saved.history.items()}

  with tqdm.tqdm(total=sweep.generations, initial=step, desc=f'{sweep.regime} M={sweep.samples}',
                 unit='gen', disable=not progress or not is_primary(), dynamic_ncols=True) as bar:
    while step < sweep.generations:
      carry_B, chunk_metrics = advance(const_B, carry_B, jnp.int32(step + 1))
      done = min(chunk, sweep.generations - step)
      chunk_metrics = {k: to_host(v)[:done] for k, v in chunk_metrics.items()}
      _check_finite(chunk_metrics, step + 1, *labels)
      for k, v in chunk_metrics.items():
        metrics[k][step + 1:step + 1 + done] = v
      step += done
      if settled is not None and step < sweep.generations and settled(
          {k: v[step] for k, v in metrics.items()}):
        for v in metrics.values():
          v[step + 1:] = v[step]
        bar.update(sweep.generations - step)
        step = sweep.generations
      checkpoints.save(manager, step, ocp.args.Composite(
          state=ocp.args.StandardSave({'const': const_B, 'carry': carry_B}),
          history=ocp.args.StandardSave(metrics)))
      bar.update(done)
  manager.wait_until_finished()
  return {k: v[:, :b] for k, v in metrics.items()}


# ---------------------------------------------------------------- run configs

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
    for key in sorted(set(saved) | set(config)):
      if saved.get(key) != config.get(key):
        raise ConfigError(key, f'is {config.get(key)!r} but the run in {workdir} used '
                          f'{saved.get(key)!r}; pass the same flags to resume it, or '
                          'another --workdir')
    return
  if is_primary():
    with open(path, 'w') as f:
      json.dump(config, f, indent=2, sort_keys=True)
