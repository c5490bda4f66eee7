"""Results as researchers read them: a long-form table, a CSV, a summary."""

import json
import os

import numpy as np

import dataclasses
from typing import NamedTuple

from collapse_jax.core import files, knobs, regimes

GROUP_COLUMNS = ('regime', 'samples', 'real_fraction')  # what tells sweeps apart
ID_COLUMNS = GROUP_COLUMNS + ('seed', 'generation')


def parameter_columns(sweeps) -> list[str]:
  """The regimes' parameters other than real_fraction that the sweeps set, as table columns:
  a parameter given to a paper regime after the fact (accumulate's age_decay) only when it
  is swept away from its default, so the paper's tables keep their columns; then the knobs
  any sweep sets (knobs.KNOBS)."""
  out = []
  for sweep in sweeps:
    reg = regimes.get(sweep.regime)
    if reg.parameter not in (None, 'real_fraction', *out) and not all(
        reg.quiet(v) for v in sweep.fractions):
      out.append(reg.parameter)
  set_knobs = {k for sweep in sweeps for k, _ in sweep.knobs}
  return [p for p in regimes.PARAMETERS if p in out] + [k for k in knobs.KNOBS if k in set_knobs]


def setting_columns(sweep, value_R, shown, knob_R=None) -> dict[str, np.ndarray]:
  """real_fraction and the shown parameter and knob columns of one sweep's rows: its own
  parameter's values where shown, 0 as real fraction otherwise, the knobs' values it sets
  (`knob_R`: knob -> R values), NaN in the others (for real_weight: pooled)."""
  reg = regimes.get(sweep.regime)
  cols = {'real_fraction': value_R if reg.parameter == 'real_fraction'
          else np.zeros_like(value_R)}
  for p in shown:
    cols[p] = (value_R if p == reg.parameter else (knob_R or {}).get(p, np.full(
        value_R.shape, np.nan, np.float32)))
  return cols


def group_rows(sweep, fraction, knob_values) -> np.ndarray:
  """Which of a sweep's runs (B, in the order of Sweep.runs) form the group of runs at
  parameter value `fraction` and knobs `knob_values` (one entry of Sweep.grid)."""
  fraction_B = sweep.runs()[1]
  knob_B = sweep.knob_runs()
  rows_B = fraction_B == np.float32(fraction)
  for k, v in knob_values.items():
    rows_B &= knob_B[k] == np.float32(v)
  return rows_B


def one_group(sweep, knob_values):
  """The sweep restricted to one group's knob values (for closed forms that read them)."""
  return dataclasses.replace(sweep, knobs=tuple((k, (v,)) for k, v in knob_values.items()))


def stacked(parts) -> dict[str, np.ndarray]:
  """The parts' rows together; a column some parts lack is NaN there."""
  names = list(dict.fromkeys(k for p in parts for k in p))
  fill = lambda p, k: p[k] if k in p else np.full(len(p['regime']), np.nan)  # noqa: E731
  return {k: np.concatenate([fill(p, k) for p in parts]) for k in names}


def long_table(sweeps, first=()) -> dict[str, np.ndarray]:
  """One row per generation x seed x regime x samples x parameter value, as named columns.

  `sweeps` pairs each protocol.Sweep with its metrics, each (G+1) x B; the metric
  columns named in `first` lead, in that order, the rest follow sorted.
  """
  parts = []
  shown = parameter_columns([sweep for sweep, _ in sweeps])
  for sweep, metrics in sweeps:
    seed_B, fraction_B = sweep.runs()
    g1 = sweep.generations + 1
    knob_R = {k: np.tile(v, g1) for k, v in sweep.knob_runs().items()}
    cols = {'regime': np.full(g1 * len(seed_B), sweep.regime),
            'samples': np.full(g1 * len(seed_B), sweep.samples),
            **setting_columns(sweep, np.tile(fraction_B, g1), shown, knob_R),
            'seed': np.tile(seed_B, g1),
            'generation': np.repeat(np.arange(g1), len(seed_B))}
    if sweep.score is not None:  # what ranked the candidates and what the scores are
      cols['score'] = np.full(g1 * len(seed_B), sweep.score)
    names = [k for k in first if k in metrics] + sorted(set(metrics) - set(first))
    cols.update({k: metrics[k].reshape(-1) for k in names})
    parts.append(cols)
  return stacked(parts)


def percentiles(v_GxS, qs):
  """np.percentile over axis 1 (linear interpolation), with infinities kept where
  np.percentile gives NaN (inf - inf, or inf x 0): a data point next to an infinity is
  itself, between -inf and anything below +inf the interpolation is -inf, and +inf between
  +inf and anything above -inf; NaN between -inf and +inf, or with a NaN in the row."""
  q_QxG = np.percentile(v_GxS, qs, axis=1)
  if np.isfinite(v_GxS).all():
    return q_QxG
  lo_QxG = np.percentile(v_GxS, qs, axis=1, method='lower')
  hi_QxG = np.percentile(v_GxS, qs, axis=1, method='higher')
  fixed = np.where(lo_QxG == hi_QxG, lo_QxG,
                   np.where((lo_QxG == -np.inf) & (hi_QxG != np.inf), -np.inf,
                            np.where((hi_QxG == np.inf) & (lo_QxG != -np.inf), np.inf, np.nan)))
  clean_G = ~np.isnan(v_GxS).any(axis=1)
  return np.where(np.isnan(q_QxG) & clean_G, fixed, q_QxG)


def over_seeds(sweeps, rms=(), extra=None) -> dict[str, np.ndarray]:
  """Statistics over seeds: one row per generation x regime x samples x real fraction.

  Each metric m gets m_mean, m_sd, m_q05, m_q50, m_q95, and m_rms (the root mean
  square) when named in `rms`; `extra(sweep, fraction)` returns further columns,
  each of G+1 values (closed forms to read beside the measurements); where the sweep sets
  knobs, its `sweep` holds the group's values alone (one_group).
  """
  parts = []
  shown = parameter_columns([sweep for sweep, _ in sweeps])
  for sweep, metrics in sweeps:
    g1 = sweep.generations + 1
    for fraction, knob_values in sweep.grid():
      cols_B = group_rows(sweep, fraction, knob_values)
      knob_R = {k: np.full(g1, v, np.float32) for k, v in knob_values.items()}
      part = {'regime': np.full(g1, sweep.regime), 'samples': np.full(g1, sweep.samples),
              **setting_columns(sweep, np.full(g1, fraction, np.float32), shown, knob_R),
              'generation': np.arange(g1), 'seeds': np.full(g1, cols_B.sum())}
      for name in sorted(metrics):
        v_GxS = metrics[name][:, cols_B].astype(np.float64)
        lo, mid, hi = percentiles(v_GxS, (5, 50, 95))
        part.update({f'{name}_mean': v_GxS.mean(1), f'{name}_sd': v_GxS.std(1, ddof=1)
                     if v_GxS.shape[1] > 1 else np.zeros(g1),
                     f'{name}_q05': lo, f'{name}_q50': mid, f'{name}_q95': hi})
        if name in rms:
          part[f'{name}_rms'] = np.sqrt(np.mean(v_GxS**2, axis=1))
      part.update(extra(one_group(sweep, knob_values) if knob_values else sweep, fraction)
                  if extra else {})
      parts.append(part)
  return stacked(parts)


def write_csv(table: dict[str, np.ndarray], path: str) -> None:
  """Writes the table as CSV, numbers to 7 significant digits and text columns (regime,
  score) as they are, from the primary process only."""
  def text(column):
    column = np.asarray(column)
    return column.astype(str) if column.dtype.kind in 'USO' else np.char.mod(
        '%.7g', column.astype(np.float64))
  columns = [text(table[k]) for k in table]

  def write(f):
    f.write(','.join(table) + '\n')
    f.writelines(','.join(row) + '\n' for row in zip(*columns))
  files.write_file(path, write)


def value_column(table, regime: str) -> str:
  """The column holding a regime's parameter values in `table`."""
  reg = regimes.REGIMES.get(str(regime))
  return reg.parameter if reg is not None and reg.parameter in table else 'real_fraction'


class Group(NamedTuple):
  """A group of runs in a table: regime, samples, the regime's parameter value and the
  knobs' values ((knob, value) pairs, those the group sets)."""
  regime: str
  samples: int
  value: float
  knobs: tuple = ()


def groups(table) -> list[Group]:
  """Each group of runs (Group), in the order they appear."""
  value_R = np.asarray(table['real_fraction'], np.float64).copy()
  for regime in dict.fromkeys(table['regime']):
    rows = table['regime'] == regime
    value_R[rows] = table[value_column(table, regime)][rows]
  names = [k for k in knobs.KNOBS if k in table]
  knob_R = zip(*(np.asarray(table[k], np.float64) for k in names)) if names else (
      () for _ in value_R)
  keys = zip(table['regime'], table['samples'], value_R, knob_R)
  return list(dict.fromkeys(
      Group(str(r), int(m), float(f), tuple((n, float(v)) for n, v in zip(names, ks)
                                            if np.isfinite(v)))
      for r, m, f, ks in keys))


def select(table, regime, fraction, samples=None, knob_values=()):
  """The (generation x seed) matrix of every column for one sweep (its parameter's value
  `fraction`, its knobs' `knob_values`: (knob, value) pairs); from an over_seeds table,
  generation x 1; from a table without generations, row x 1."""
  as32 = lambda column: np.asarray(table[column], np.float32)  # noqa: E731 (float64 when read back)
  rows = (table['regime'] == regime) & (as32(value_column(table, regime)) == np.float32(fraction))
  if samples is not None:
    rows &= table['samples'] == samples
  for k, v in knob_values:
    rows &= as32(k) == np.float32(v)
  g1 = int(table['generation'][rows].max()) + 1 if 'generation' in table else int(rows.sum())
  return {k: v[rows].reshape(g1, -1) for k, v in table.items()}


def summary(curves, columns, generations=None) -> str:
  """Median [5%, 95%] over seeds of `columns` at chosen generations, as text,
  from an over_seeds table."""
  lines = []
  names = [k for k in knobs.KNOBS if k in curves]
  for regime, samples, fraction, knob_values in groups(curves):
    sub = select(curves, regime, fraction, samples, knob_values)
    last = sub['generation'].shape[0] - 1
    set_ = dict(knob_values)
    knob_cells = ''.join(f'{set_[k]:>{len(k)}g} ' if k in set_ else ' ' * len(k) + ' '
                         for k in names)
    for g in sorted({g for g in (generations or ()) if g <= last} | {last}):
      cells = [f'{sub[c + "_q50"][g, 0]:10.4g} [{sub[c + "_q05"][g, 0]:.3g}, '
               f'{sub[c + "_q95"][g, 0]:.3g}]' for c in columns]
      lines.append((f'{regime:20s} {samples:6d} {fraction:5g} {knob_cells}{g:6d} ', cells))
  header = (f'{"regime":20s} {"M":>6s} {"value":>5s} ' + ''.join(f'{k} ' for k in names)
            + f'{"gen":>6s} ')
  widths = [max(len(c), *(len(cells[i]) for _, cells in lines)) for i, c in enumerate(columns)]
  out = [header + '  '.join(c.rjust(w) for c, w in zip(columns, widths))]
  out += [head + '  '.join(x.rjust(w) for x, w in zip(cells, widths)) for head, cells in lines]
  values = ', '.join(f'{r}: {value_column(curves, r)}' for r in dict.fromkeys(curves['regime']))
  return '\n'.join(out) + (f'\n(median [5%, 95%] over seeds; M: samples per generation; value: '
                           f'the regime\'s parameter, {values})')


# ----------------------------------------------------------------------------- runs read back

# config.json names its experiment; one written without the name is known by a setting
# that only its experiment has.
EXPERIMENT_KEYS = (('opt', 'beams'), ('vae', 'latent'), ('discrete', 'outcomes'),
                   ('gaussian', 'estimator'), ('gmm', 'components'))


def load(workdirs):
  """One pandas DataFrame of the per-generation metrics of runs: a workdir, a list of them, or
  a directory of workdirs. Beside each row's regime, samples, real fraction, seed and
  generation stand the experiment, the workdir and the run's scalar settings (config.json),
  so runs of different experiments and settings concatenate.

  Rows come from a run's per-seed metrics.csv, or, where there is none (the theory
  experiments without --per_seed_csv), from curves.csv: one row per generation with each
  metric's mean, sd and quantiles over seeds, and no seed.
  """
  try:
    import pandas as pd  # noqa: PLC0415 (a test extra; experiments never need it)
  except ImportError:
    raise ImportError('results.load needs pandas: pip install pandas') from None
  paths = [workdirs] if isinstance(workdirs, (str, os.PathLike)) else list(workdirs)
  runs = [run for path in paths for run in _runs(os.path.normpath(os.fspath(path)))]
  return pd.concat([_load_run(pd, run) for run in runs], ignore_index=True, sort=False)


def _runs(path: str) -> list[str]:
  """The workdirs at path: itself, or the directories in it that hold a run."""
  if os.path.isfile(os.path.join(path, 'config.json')):
    return [path]
  inside = sorted(os.path.join(path, d) for d in (os.listdir(path) if os.path.isdir(path) else ())
                  if os.path.isfile(os.path.join(path, d, 'config.json')))
  if not inside:
    raise ValueError(f'{path} holds no run: no config.json in it or in its directories')
  return inside


def _load_run(pd, workdir: str):
  """One run's rows, with its experiment, workdir and scalar settings as columns."""
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  experiment = config.get('experiment') or next(
      (name for name, key in EXPERIMENT_KEYS if key in config), 'unknown')
  path = next((p for p in (os.path.join(workdir, n) for n in ('metrics.csv', 'curves.csv'))
               if os.path.isfile(p)), None)
  if path is None:
    raise ValueError(f'{workdir} has no metrics.csv or curves.csv yet: run it to the end '
                     'first (the same command resumes it)')
  table = pd.read_csv(path)
  if 'seed' in table:
    table['seed'] = table['seed'].astype('Int64')
  else:  # statistics over seeds
    table.insert(int(table.columns.get_loc('generation')), 'seed',
                 pd.Series(pd.NA, index=table.index, dtype='Int64'))
  settings = {k: v for k, v in sorted(config.items())
              if isinstance(v, (str, int, float, bool)) and k not in table and k != 'experiment'}
  return pd.concat([pd.DataFrame({'experiment': experiment, 'workdir': workdir}, index=table.index),
                    table, pd.DataFrame(settings, index=table.index)], axis=1)
