"""Results as researchers read them: a long-form table, a CSV, a summary."""

import io

import numpy as np

ID_COLUMNS = ('regime', 'real_fraction', 'seed', 'generation')


def long_table(sweeps, first=()) -> dict[str, np.ndarray]:
  """One row per generation x seed x regime x real fraction, as named columns.

  `sweeps` pairs each driver.Sweep with its metrics, each (G+1) x B; the metric
  columns named in `first` lead, in that order, the rest follow sorted.
  """
  parts = []
  for sweep, metrics in sweeps:
    seed_B, fraction_B = sweep.runs()
    g1 = sweep.generations + 1
    cols = {'regime': np.full(g1 * len(seed_B), sweep.regime),
            'real_fraction': np.tile(fraction_B, g1),
            'seed': np.tile(seed_B, g1),
            'generation': np.repeat(np.arange(g1), len(seed_B))}
    names = [k for k in first if k in metrics] + sorted(set(metrics) - set(first))
    cols.update({k: metrics[k].reshape(-1) for k in names})
    parts.append(cols)
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def write_csv(table: dict[str, np.ndarray], path: str) -> None:
  """Writes the table as CSV (numbers to 7 significant digits)."""
  names = list(table)
  numeric = np.stack([table[k].astype(np.float64) for k in names[1:]], 1)
  buf = io.StringIO()
  np.savetxt(buf, numeric, fmt='%.7g', delimiter=',')
  with open(path, 'w') as f:
    f.write(','.join(names) + '\n')
    f.writelines(f'{r},{line}\n' for r, line in zip(table[names[0]], buf.getvalue().splitlines()))


def groups(table):
  """(regime, real fraction) pairs in the order they appear."""
  pairs = zip(table['regime'], table['real_fraction'])
  return list(dict.fromkeys((str(r), float(f)) for r, f in pairs))


def select(table, regime, fraction):
  """The (generation x seed) matrix of every column for one regime and fraction."""
  rows = (table['regime'] == regime) & (table['real_fraction'] == fraction)
  g1 = int(table['generation'][rows].max()) + 1
  return {k: v[rows].reshape(g1, -1) for k, v in table.items()}


def summary(table, columns, generations=None) -> str:
  """Median [5%, 95%] over seeds of `columns` at chosen generations, as text."""
  lines = []
  for regime, fraction in groups(table):
    sub = select(table, regime, fraction)
    last = sub['generation'].shape[0] - 1
    for g in sorted({g for g in (generations or ()) if g <= last} | {last}):
      cells = []
      for c in columns:
        lo, mid, hi = np.percentile(sub[c][g].astype(np.float64), [5, 50, 95])
        cells.append(f'{mid:10.4g} [{lo:.3g}, {hi:.3g}]')
      lines.append((f'{regime:20s} {fraction:4g} {g:6d} ', cells))
  header = f'{"regime":20s} {"frac":>4s} {"gen":>6s} '
  widths = [max(len(c), *(len(cells[i]) for _, cells in lines)) for i, c in enumerate(columns)]
  out = [header + '  '.join(c.rjust(w) for c, w in zip(columns, widths))]
  out += [head + '  '.join(x.rjust(w) for x, w in zip(cells, widths)) for head, cells in lines]
  return '\n'.join(out) + '\n(median [5%, 95%] over seeds)'
