"""One experiment template for every family: a config's shared settings (SweepConfig) and
the run that sweeps them (run_experiment).

A family supplies its config (a SweepConfig with its own fields), its driver family, its
metrics, its figures and any extra columns (an Experiment); run_experiment validates the
config, records it in the workdir, runs every regime (and sample size) through the driver,
and writes the tables, the statistics over seeds, the figures and the summary.
"""

import dataclasses
import os
from typing import Any, Callable

from collapse_jax.core import driver, files, plots, protocol, regimes, results, validation
from collapse_jax.core.settings import recorded, setting


@dataclasses.dataclass(frozen=True)
class SweepConfig(regimes.Options):
  """The settings every experiment shares, with their flags' documentation; a family's
  config adds its own fields and re-declares only the defaults it changes."""
  seeds: int = setting(1000, 'Independent runs, all in one program.')
  generations: int = setting(100, 'Generations after the first.')
  samples: int = setting(1000, 'Samples each generation is fitted on.')
  regimes: tuple[str, ...] = setting(
      ('replace',), lambda cls: f'Comma-separated regimes: {", ".join(regimes.REGIMES)}. A '
      "preset's regimes come with their settings; --regime replaces both.", flag='regime')
  real_fractions: tuple[float, ...] = setting(
      (0.0,), 'Comma-separated fractions of real data, for the regimes mix and fresh.',
      flag='real_fraction')
  checkpoint_every: int = setting(100, 'Generations between checkpoints.')
  first_seed: int = setting(0, 'Seeds are first_seed, first_seed + 1, ...')

  def sample_sizes(self) -> tuple[int, ...]:
    """The sample sizes swept: `samples`, a number or a tuple of them."""
    return tuple(self.samples) if isinstance(self.samples, tuple) else (self.samples,)

  def sweep(self, regime: str, samples: int | None = None) -> protocol.Sweep:
    """The driver's sweep of one regime (and sample size, where several are swept)."""
    return protocol.Sweep(regime, self.seeds, self.generations,
                          self.samples if samples is None else samples, self.real_fractions,
                          self.first_seed, **self.sweep_fields(self.regimes),
                          knobs=self.knobs_for(regime, self.regimes))

  def sweeps(self):
    """(sweep, its checkpoints' directory under checkpoints/) of every regime and sample
    size: <regime>/, or <regime>/M<samples>/ where `samples` is a tuple."""
    for regime in self.regimes:
      for m in self.sample_sizes():
        if isinstance(self.samples, tuple):
          yield self.sweep(regime, m), os.path.join(regime, f'M{m}')
        else:
          yield self.sweep(regime), regime

  def validate_sweep(self, min_samples: int = 1) -> None:
    """Checks the shared settings; raises validation.ConfigError."""
    if not self.sample_sizes():
      raise validation.ConfigError('samples', 'needs at least one sample size')
    validation.validate_sweep(self.seeds, self.generations, min(self.sample_sizes()),
                              self.regimes, self.real_fractions, min_samples=min_samples)
    validation.check_fields(self, [
        ('checkpoint_every', self.checkpoint_every >= 1, 'must be at least 1'),
        ('first_seed', self.first_seed >= 0, 'must be non-negative')])

  def record(self, experiment: str) -> dict[str, Any]:
    """config.json's content: the experiment's name and every field that says what the run
    is (not where its files are), as JSON values."""
    fields = {f.name: _json(getattr(self, f.name)) for f in dataclasses.fields(self)
              if recorded(type(self), f.name, getattr(self, f.name))}
    return {**fields, 'experiment': experiment}


def per_seed_csv():
  """The field of a config whose per-seed table is optional (large for many seeds)."""
  return setting(False, 'Also write metrics.csv, one row per seed and generation (large: about '
                 '80 MB per million rows).')


def _json(value):
  return [_json(v) for v in value] if isinstance(value, (tuple, list)) else value


@dataclasses.dataclass
class Outcome:
  """What a run of an experiment made: its sweeps (each a protocol.Sweep and its metrics),
  what the family set aside from each, the per-seed table and the statistics over seeds."""
  workdir: str
  sweeps: list
  kept: list
  table: dict | None = None
  curves: dict | None = None

  def path(self, name: str) -> str:
    return os.path.join(self.workdir, name)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What a family supplies run_experiment besides its config.

  name: the experiment's name, recorded in config.json.
  family(): its driver family (protocol.Family or WithData), built once the config is
    valid; or a function of each sweep returning one, where the family depends on it.
  summary, generations: the columns summary.txt shows, at these generations.
  first: the leading columns of metrics.csv (one row per seed; written unless the config
    has a `per_seed_csv` field that is false).
  rms: metrics whose root mean square over seeds curves hold; closed_form(sweep, fraction)
    -> {column: G+1 values}: theory beside them.
  curves_csv: write the statistics over seeds as curves.csv.
  settled(sweep): the driver's `settled` for that sweep, or None.
  set_aside(sweep, metrics) -> (sweep, metrics, kept): takes what is not a table column
    out of a sweep's metrics (samples to draw, per-run outcomes), or cuts it short.
  table(sweeps), curves(sweeps): replace the per-seed table or the statistics over seeds.
  figures(outcome): draws the figures and writes any other file.
  knob_metric: the metric knobs.png shows along each swept knob (default: summary's first).
  text(outcome): replaces summary.txt's text.
  """
  name: str
  family: Callable[[], Any]
  summary: tuple[str, ...]
  generations: tuple[int, ...]
  first: tuple[str, ...] = ()
  rms: tuple[str, ...] = ()
  closed_form: Callable | None = None
  curves_csv: bool = False
  settled: Callable | None = None
  set_aside: Callable | None = None
  table: Callable | None = None
  curves: Callable | None = None
  figures: Callable[[Outcome], None] | None = None
  knob_metric: str | None = None
  text: Callable[[Outcome], str] | None = None


def run_experiment(exp: Experiment, cfg: SweepConfig, workdir: str, progress: bool = True,
                   log=print) -> Outcome:
  """Runs, resumes or reloads an experiment in `workdir`; returns what it made.

  Leaves there: config.json, checkpoints/<regime>/ (<regime>/M<samples>/ where several
  sample sizes are swept), metrics.csv, curves.csv where asked for, the family's figures,
  knobs.png where knobs are swept, and summary.txt.
  """
  cfg.validate()
  validation.check_config(workdir, cfg.record(exp.name))

  # -- every regime (x sample size) is one compiled program over seeds x its parameter's values
  family = exp.family()
  sweeps, kept = [], []
  for sweep, directory in cfg.sweeps():
    fam = family if isinstance(family, (protocol.Family, protocol.WithData)) else family(sweep)
    metrics = driver.run(fam, sweep, os.path.join(workdir, 'checkpoints', directory),
                         cfg.checkpoint_every, progress,
                         settled=exp.settled(sweep) if exp.settled else None)
    if exp.set_aside is not None:
      sweep, metrics, extra = exp.set_aside(sweep, metrics)
      kept.append(extra)
    sweeps.append((sweep, metrics))

  # -- tables: every seed, and statistics over seeds
  out = Outcome(workdir, sweeps, kept)
  if getattr(cfg, 'per_seed_csv', True):
    out.table = (exp.table(sweeps) if exp.table is not None
                 else results.long_table(sweeps, first=exp.first))
    results.write_csv(out.table, out.path('metrics.csv'))
  out.curves = (exp.curves(sweeps) if exp.curves is not None
                else results.over_seeds(sweeps, rms=exp.rms, extra=exp.closed_form))
  if exp.curves_csv:
    results.write_csv(out.curves, out.path('curves.csv'))

  # -- figures and summary
  if exp.figures is not None:
    exp.figures(out)
  if any(sweep.knobs for sweep, _ in sweeps):  # where along each knob collapse goes
    column = exp.knob_metric or exp.summary[0]
    plots.along_knobs(out.curves, (column, column.replace('_', ' ')), out.path('knobs.png'),
                      f'{exp.name}: {column} along the knobs (median, 90% band over seeds)')
  text = (exp.text(out) if exp.text is not None
          else results.summary(out.curves, exp.summary, generations=exp.generations))
  files.write_text(out.path('summary.txt'), text + '\n')
  log(text)
  return out
