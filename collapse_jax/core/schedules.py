"""Learned schedules: a knob's value a generation (the real rows' share of the fit's weight, the
sampling temperature) optimised by gradient descent through the driver's own generations.

A schedule holds G + 1 values the driver reads at g (knobs.value): temperature[g] tempers the
law generation g samples g + 1's data from; real_weight[g] is the real rows' share in generation
g's fit (entry 0 unread). Its loss, an objective (a metric of the family's evaluate) averaged over
S seeds and generations 1..G, runs driver._first_generation and driver._generation (vmap over
seeds, scan over generations); the gradient flows through fits and reparameterised samples.
Each step runs fresh seeds, so its gradient is unbiased for the expected loss and the decaying
rate averages the noise away (fixed seeds would find the optimum of those seeds alone);
evaluations run every schedule on the same fresh seeds, so that differences are precise.

Shapes in names: S seeds, G generations (1..G), K steps.
"""

import dataclasses
import functools
import importlib
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from jax.sharding import NamedSharding, PartitionSpec
from scipy import optimize

from collapse_jax.core import driver, files, placement, protocol, regimes, results, validation
from collapse_jax.core.settings import setting

KNOBS = ('real_weight', 'temperature')
SHAPES = ('constant', 'per_generation')
# objective -> (the family's metric, the power averaged): errors squared, squares as they are
OBJECTIVES = {'mean_error': ('mean_error', 2), 'sigma_error': ('sigma_error', 2),
              'w2_sq': ('w2_sq', 1), 'test_error': ('test_error', 1),
              'param_error': ('param_error', 1)}
START = {'real_weight': 0.5, 'temperature': 1.0}  # where a descent starts
Z999 = 3.2905  # two-sided 99.9% normal quantile


# ---------------------------------------------------------------- schedules and their parameters
# knob -> (theta of a value, the value of theta): a weight in (0, 1), a positive temperature
TRANSFORMS = {'real_weight': (lambda v: jnp.log(v) - jnp.log1p(-v), jax.nn.sigmoid),
              'temperature': (jnp.log, jnp.exp)}


def initial(knobs, shape: str, generations: int, start: dict) -> dict:
  """theta of a schedule at the values `start` ({knob: value}): one a knob, or G + 1."""
  size = () if shape == 'constant' else (generations + 1,)
  return {k: jnp.full(size, TRANSFORMS[k][0](jnp.float32(start[k]))) for k in knobs}


def values(theta: dict, generations: int) -> dict:
  """{knob: G + 1 values} of theta: a constant schedule repeated."""
  return {k: jnp.broadcast_to(TRANSFORMS[k][1](v), (generations + 1,)) for k, v in theta.items()}


# ---------------------------------------------------------------- the loss

def errors(family: protocol.Family, sw: protocol.Sweep, objective: str, schedule: dict, seed_S):
  """S x G: the objective at generations 1..G of each seed's run under `schedule`
  ({knob: G + 1 values}), the runs made by the driver's own generations."""
  metric, power = OBJECTIVES[objective]
  value = (jnp.float32(sw.fractions[0]), schedule)

  def one_run(seed):
    const, carry, _ = driver._first_generation(family, sw, seed, value)

    def body(carry, g):
      carry, metrics = driver._generation(family, sw, const, carry, g)
      return carry, jnp.mean(metrics[metric] ** power)  # over a family's chains (ridges)
    return jax.lax.scan(body, carry, jnp.arange(1, sw.generations + 1))[1]
  return jax.vmap(one_run)(seed_S)


def loss(theta: dict, family: protocol.Family, sw: protocol.Sweep, objective: str, seed_S):
  """The objective averaged over the seeds and generations 1..G, as a function of theta."""
  return jnp.mean(errors(family, sw, objective, values(theta, sw.generations), seed_S))


def optimise(family, sw, objective: str, theta: dict, steps: int, seeds: int,
             learning_rate: float, first_seed: int = 0, progress: bool = True):
  """(theta, loss_K): `steps` Adam updates from theta, the rate decayed to 1% (cosine) so that
  late steps average the noise; step k on seeds first_seed + k S .. + S - 1."""
  opt = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.01))

  @functools.partial(jax.jit, donate_argnums=(0, 1))  # compiled once: the seeds are arguments
  def step(theta, opt_state, seed_S):
    value, grad = jax.value_and_grad(loss)(theta, family, sw, objective, seed_S)
    updates, opt_state = opt.update(grad, opt_state, theta)
    return optax.apply_updates(theta, updates), opt_state, value

  everywhere = NamedSharding(placement.mesh(), PartitionSpec())  # as the steps leave them
  theta = jax.device_put(theta, everywhere)
  opt_state = jax.device_put(opt.init(theta), everywhere)
  loss_K = np.zeros(steps)
  bar = tqdm.trange(steps, desc='schedule', unit='step', disable=not progress, dynamic_ncols=True)
  for k in bar:
    theta, opt_state, value = step(theta, opt_state, _placed(first_seed + k * seeds, seeds))
    loss_K[k] = float(value)
    bar.set_postfix(loss=f'{loss_K[k]:.4g}', refresh=False)
  return theta, loss_K


def _placed(first: int, count: int):
  """Seeds first .. first + count - 1, split over the devices where they divide evenly (the
  runs are independent: a device's share changes no run's numbers)."""
  seed_S = np.arange(first, first + count, dtype=np.int32)
  return placement.place(seed_S) if count % jax.device_count() == 0 else jnp.asarray(seed_S)


def per_seed(family, sw, objective: str, schedules, seeds: int, first_seed: int,
             chunk: int = 4096) -> np.ndarray:
  """len(schedules) x S: each seed's loss (its mean over generations) under each schedule
  ({knob: G + 1 values}), every schedule on the same seeds; `chunk` seeds a call."""
  run = jax.jit(lambda schedule, seed_S: jnp.mean(errors(family, sw, objective, schedule,
                                                         seed_S), axis=1))
  out = np.zeros((len(schedules), seeds))
  for lo in range(0, seeds, chunk):
    seed_S = _placed(first_seed + lo, min(chunk, seeds - lo))
    for i, schedule in enumerate(schedules):
      out[i, lo:lo + len(seed_S)] = np.asarray(run(schedule, seed_S))
  return out


def interval(v_S) -> tuple[float, float]:
  """(mean, half-width of its 99.9% normal interval) over seeds."""
  v_S = np.asarray(v_S, np.float64)
  return float(v_S.mean()), Z999 * float(v_S.std(ddof=1)) / math.sqrt(len(v_S))


# ---------------------------------------------------------------- the experiment

FAMILIES = {'gaussian': ('collapse_jax.families.gaussian', 'GaussianConfig'),
            'regression': ('collapse_jax.families.regression', 'RegressionConfig')}


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  """A schedule learned for one family, regime and objective; defaults: the golden preset
  (about a minute on a 2-core CPU, w within 0.002 of the golden ratio)."""
  family: str = setting('gaussian', 'The model family.', choices=tuple(FAMILIES))
  family_options: tuple[str, ...] = setting(
      ('known_std=true',), "Comma-separated field=value of the family's config (known_std=true,"
      'estimator=unbiased, dims=10, ridges=0:0.1, ...).')
  regime: str = setting('fresh', 'The regime of every generation.', choices=tuple(regimes.REGIMES))
  real_fraction: float = setting(0.5, "mix and fresh: the real rows' share of a generation.")
  samples: int = setting(100, 'Samples each generation is fitted on.')
  generations: int = setting(20, 'Generations after the first; the loss averages 1..G.')
  objective: str = setting('mean_error', 'What the schedule minimises, averaged over seeds and '
                           "generations: mean_error^2, sigma_error^2, w2_sq (the Gaussian's), "
                           "test_error, param_error (regression's).", choices=tuple(OBJECTIVES))
  schedule: str = setting('constant', 'constant: one value a knob; per_generation: one a '
                          'generation.', choices=SHAPES)
  knobs: tuple[str, ...] = setting(('real_weight',), 'Comma-separated knobs to learn: '
                                   + ', '.join(KNOBS) + '.')
  seeds: int = setting(256, 'Seeds a step, fresh each step.')
  steps: int = setting(300, 'Adam steps.')
  learning_rate: float = setting(0.05, "Adam's rate at the start (a cosine decay to 1%).")
  eval_seeds: int = setting(65536, 'Fresh seeds (after the steps\') the learned, the starting '
                            'and the --compare_with schedule are all evaluated on.')
  first_seed: int = setting(0, 'Step k runs seeds first_seed + k seeds ...')
  compare_with: str = setting('', 'A schedule.csv of another run of as many generations, '
                              'evaluated beside the learned schedule.')

  def fraction(self) -> float:
    """The regime's parameter: --real_fraction for mix and fresh, its default otherwise."""
    reg = regimes.get(self.regime)
    return self.real_fraction if reg.parameter == 'real_fraction' else reg.default

  def family_config(self):
    """The family's config: its defaults, --family_options (a tuple's numbers split at ':') and
    this run's sweep settings."""
    module, name = FAMILIES[self.family]
    cls = getattr(importlib.import_module(module), name)
    fields, defaults = {}, cls()
    for key, _, text in (item.partition('=') for item in self.family_options):
      kind = type(getattr(defaults, key, None))
      try:
        if key in ('samples', 'generations', 'seeds', 'regimes') or kind is type(None):
          raise KeyError(key)
        fields[key] = ({'true': True, 'false': False}[text.lower()] if kind is bool else
                       tuple(float(v) for v in text.split(':')) if kind is tuple else kind(text))
      except (KeyError, ValueError):
        raise validation.ConfigError('family_options', f'{key}={text}: not a field of {name} '
                                     'with a value it takes (sweep settings have their flags)'
                                     ) from None
    m = (self.samples,) if isinstance(defaults.samples, tuple) else self.samples
    return cls(**{**fields, 'samples': m, 'generations': self.generations, 'seeds': self.seeds,
                  'regimes': (self.regime,), 'real_fractions': (self.fraction(),)}).validate()

  def validate(self):
    """(family, sweep) once every flag is valid; ConfigError before anything compiles."""
    if not self.knobs or len(set(self.knobs)) != len(self.knobs):
      raise validation.ConfigError('knobs', f'needs distinct knobs among {", ".join(KNOBS)}')
    for flag, v, choices in (('family', self.family, FAMILIES), ('schedule', self.schedule, SHAPES),
                             ('objective', self.objective, OBJECTIVES),
                             *(('knobs', k, KNOBS) for k in self.knobs)):
      validation.check_choice(flag, v, choices)
    validation.check_fields(self, [
        *((f, getattr(self, f) >= low, f'must be at least {low}') for f, low in (
            ('seeds', 2), ('steps', 1), ('eval_seeds', 2), ('first_seed', 0))),
        ('learning_rate', self.learning_rate > 0, 'must be positive')])
    family = importlib.import_module(FAMILIES[self.family][0]).family(self.family_config())
    if 'temperature' in self.knobs and 'temperature' not in family.sampling_knobs:
      raise validation.ConfigError('knobs', f'{self.family} does not sample with a temperature')
    if 'real_weight' in self.knobs and regimes.get(self.regime).real_rows is None:
      raise validation.ConfigError('knobs', 'real_weight applies only to the regimes that mix '
                                   'real rows: mix, fresh, augment, accumulate')
    sw = protocol.Sweep(self.regime, 1, self.generations, self.samples, (self.fraction(),),
                        knobs=tuple((k, (START[k],)) for k in self.knobs))  # runs read schedules
    shapes = jax.eval_shape(lambda: driver._first_generation(family, sw, jnp.int32(0), (
        jnp.float32(self.fraction()), {k: jnp.ones(self.generations + 1) for k in self.knobs})))
    has = [o for o, (metric, _) in OBJECTIVES.items() if metric in shapes[2]]
    if self.objective not in has:
      raise validation.ConfigError('objective', f'{self.family} has no {self.objective}; it '
                                   f'has {", ".join(has)}')
    if self.compare_with:
      read_schedule(self.compare_with, self.generations, self.knobs)
    return family, sw


PRESETS = {
    'golden': {},  # the defaults
    'golden_schedule': dict(schedule='per_generation', steps=1000),
    'temperature': dict(family_options=(), regime='replace', samples=10, knobs=('temperature',),
                        objective='sigma_error'),
    'regression': dict(family='regression', family_options=('dims=5',), objective='test_error',
                       generations=10, seeds=128, steps=200),
}
PRESET_HELP = ('golden (the defaults): the real weight of a Gaussian mean refitted under fresh; '
               f'{"; ".join(f"{k}: {v}" for k, v in PRESETS.items() if v)}. Flags override it.')


def read_schedule(path: str, generations: int, knobs) -> dict:
  """{knob: G + 1 values} of a schedule.csv; ConfigError naming --compare_with if unfit."""
  try:
    table = np.genfromtxt(path, delimiter=',', names=True)
    schedule = {k: np.asarray(table[k], np.float32) for k in knobs}
  except (OSError, ValueError) as e:
    raise validation.ConfigError('compare_with', f'cannot read {path} ({e})') from None
  if table.shape != (generations + 1,) or not all(  # NaN fails too
      np.all(_read(k, v) > 0) for k, v in schedule.items()):
    raise validation.ConfigError('compare_with', f'{path} is not a schedule.csv of '
                                 f'{generations} generations with {", ".join(knobs)} set')
  return {k: np.where(np.isfinite(v), v, START[k]) for k, v in schedule.items()}


def closed_form(cfg: ScheduleConfig, schedule: dict):
  """E objective at g = 1..G under `schedule` where the Gaussian's closed forms hold
  (gaussian.weighted_mean_error, gaussian.tempered_errors), else None."""
  fam = cfg.family_config() if cfg.family == 'gaussian' else None
  if fam is None or fam.dims != 1:
    return None
  gaussian = importlib.import_module(FAMILIES['gaussian'][0])
  var = fam.true_std**2
  if (cfg.knobs == ('real_weight',) and fam.known_std and cfg.regime == 'fresh'
      and cfg.objective == 'mean_error'):
    return gaussian.weighted_mean_error(schedule['real_weight'][1:], cfg.real_fraction,
                                        cfg.samples, fam.true_std, cfg.generations)[1:]
  if cfg.knobs == ('temperature',) and not fam.known_std and cfg.regime == 'replace':
    return gaussian.tempered_errors(schedule['temperature'], cfg.samples, fam.estimator).get(
        cfg.objective, np.nan) * var
  return None


def run(cfg: ScheduleConfig, workdir: str, progress: bool = True, log=print) -> dict:
  """Learns the schedule, evaluates it on fresh seeds beside the starting one (and
  --compare_with), and leaves in `workdir` config.json, schedule.csv, losses.csv, schedule.png
  and summary.txt. Returns the learned {knob: G + 1 values}."""
  family, sw = cfg.validate()
  record = {f.name: list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v
            for f in dataclasses.fields(cfg)}
  validation.check_config(workdir, {**record, 'experiment': 'schedule'})
  g, path = cfg.generations, lambda name: os.path.join(workdir, name)  # noqa: E731
  begun = time.perf_counter()
  theta, loss_K = optimise(family, sw, cfg.objective, initial(cfg.knobs, cfg.schedule, g,
                           START), cfg.steps, cfg.seeds, cfg.learning_rate,
                           cfg.first_seed, progress)
  seconds = time.perf_counter() - begun
  named = {'learned': {k: np.asarray(v) for k, v in values(theta, g).items()},
           'start': {k: np.full(g + 1, START[k], np.float32) for k in cfg.knobs}}
  if cfg.compare_with:
    named['compared'] = read_schedule(cfg.compare_with, g, cfg.knobs)
  loss_xS = per_seed(family, sw, cfg.objective, list(named.values()), cfg.eval_seeds,
                     cfg.first_seed + cfg.steps * cfg.seeds)
  learned = named['learned']
  weight_G1 = np.where(np.arange(g + 1) > 0, learned.get('real_weight', np.nan), np.nan)
  results.write_csv({'generation': np.arange(g + 1), 'real_weight': weight_G1,  # 0: unread
                     'temperature': learned.get('temperature', np.ones(g + 1))},
                    path('schedule.csv'))
  results.write_csv({'step': np.arange(cfg.steps), 'loss': loss_K}, path('losses.csv'))
  figure(cfg, learned, loss_K, path('schedule.png'))
  text = summary(cfg, named, loss_K, loss_xS, seconds)
  files.write_text(path('summary.txt'), text + '\n')
  log(text)
  return learned


def _read(knob: str, v_G1):
  """The entries of a schedule the driver reads: real_weight 1..G, temperature 0..G-1."""
  return np.asarray(v_G1)[1:] if knob == 'real_weight' else np.asarray(v_G1)[:-1]


def summary(cfg: ScheduleConfig, named: dict, loss_K, loss_xS, seconds: float) -> str:
  """What was learned and how fast; each schedule's loss on the same fresh seeds (mean +- its
  99.9% interval) beside its closed form [in brackets] where one holds."""
  tail = loss_K[-max(cfg.steps // 10, 1):].mean()
  shown = {k: _read(k, v)[:1 if cfg.schedule == 'constant' else None]
           for k, v in named['learned'].items()}
  lines = [f'{" ".join((cfg.family, *cfg.family_options))}, {cfg.regime} {cfg.fraction():g}, '
           f'M={cfg.samples}, G={cfg.generations}, {cfg.schedule} schedule for {cfg.objective}',
           'learned ' + '; '.join(f'{k} ' + ' '.join(f'{x:.4f}' for x in v)
                                  for k, v in shown.items()),
           f'{cfg.steps} steps x {cfg.seeds} seeds in {seconds:.1f} s (compiling included); '
           f'loss over the last tenth of the steps {tail:.7g}',
           f'on {cfg.eval_seeds} fresh seeds, mean +- 99.9% interval [closed form]:']
  expected = {name: closed_form(cfg, v) for name, v in named.items()}
  for i, name in enumerate(named):
    rows = [(name, loss_xS[i], expected[name])] + (i > 0) * [(
        f'learned - {name}', loss_xS[0] - loss_xS[i],
        None if expected[name] is None else expected['learned'] - expected[name])]
    for label, v_S, e_G in rows:
      mean, half = interval(v_S)
      lines.append(f'  {label:18s} {mean:.7g} +- {half:.2g}'
                   + ('' if e_G is None else f' [{np.mean(e_G):.7g}]'))
  if expected['learned'] is not None and cfg.schedule == 'constant':
    (knob, v), = shown.items()
    best = optimize.minimize_scalar(
        lambda x: np.mean(closed_form(cfg, {knob: np.full(cfg.generations + 1, x)})),
        bounds=(0.01, 0.99) if knob == 'real_weight' else (0.5, 2.0), method='bounded')
    lines.append(f'closed form: the best constant {knob} is {best.x:.4f} ({best.fun:.7g})')
    if knob == 'real_weight':
      law = importlib.import_module(FAMILIES['gaussian'][0]).golden_long_run(v[0])
      lines.append(f'long-run n MSE / sigma^2 at w = {v[0]:.4f}: {law:.6f} (golden '
                   f'ratio 0.618034, pooled 0.666667); n = {cfg.samples // 2}')
  return '\n'.join(lines)


def figure(cfg: ScheduleConfig, schedule: dict, loss_K, path: str) -> None:
  """schedule.png: the learned schedule against generation, the loss against step."""
  from collapse_jax.core import plots  # noqa: PLC0415 (matplotlib, for this figure alone)
  fig, (left, right) = plots.plt.subplots(1, 2, figsize=(11, 4))
  for k, v in schedule.items():
    left.plot(np.arange(1, cfg.generations + 1) - (k == 'temperature'), _read(k, v), marker='.',
              label=k)
  window = max(len(loss_K) // 20, 1)  # steps averaged
  right.plot(np.arange(window, len(loss_K) + 1), np.convolve(loss_K, np.ones(window) / window,
                                                             'valid'), label=f'mean of {window}')
  left.set(xlabel='generation', ylabel='value', title='learned schedule')
  right.set(xlabel='step', ylabel=f'{cfg.objective} (loss)', title='loss over steps')
  for ax in (left, right):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  if placement.is_primary():
    fig.savefig(path, dpi=120)
  plots.plt.close(fig)
