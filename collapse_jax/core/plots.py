"""Figures: metric curves over generations, closed forms over them, the GMM's scatter panels."""

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from collapse_jax.core import placement, regimes, results  # noqa: E402


def run_label(regime, samples, fraction, with_regime=True, with_samples=False, knob_values=()):
  name = regime if with_regime else ''
  reg = regimes.REGIMES.get(regime)
  if reg is not None and reg.parameter and not (reg.quiet_default and fraction == reg.default):
    name += f' {fraction:g}'
  name += ''.join(f', {k} {v:g}' for k, v in knob_values)
  if with_samples:
    name += f', M={samples}'
  return name.strip(' ,')


def curves(table, panels, path, title=None):
  """Median and 90% band over seeds against generation, one line per sweep.

  `table` is an over_seeds table; `panels` a list of (metric, label, log_y).
  """
  keys = results.groups(table)
  several_m = len({k.samples for k in keys}) > 1
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
  for ax, (column, label, log_y) in zip(axes[0], panels):
    for regime, samples, fraction, knob_values in keys:
      sub = results.select(table, regime, fraction, samples, knob_values)
      g_G = sub['generation'][:, 0]
      line, = ax.plot(g_G, sub[f'{column}_q50'][:, 0],
                      label=run_label(regime, samples, fraction, with_samples=several_m,
                                      knob_values=knob_values))
      ax.fill_between(g_G, sub[f'{column}_q05'][:, 0], sub[f'{column}_q95'][:, 0],
                      color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel('generation')
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_ylabel(label)
    if log_y:
      ax.set_yscale('log')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  _finish(fig, path, title)


def scores_against(table, diversity, path, title=None):
  """trade_off() of the training data's mean score, where the run has scores."""
  if 'train_score_q50' in table:
    trade_off(table, ('train_score', 'mean score of the training data'), diversity, path, title)


def trade_off(table, score, diversity, path, title=None):
  """Score against diversity: each over generations (median and 90% band over seeds), and
  one against the other, a line per regime and parameter value from generation 0 (o) to
  the last (x). `score` and `diversity` are (metric, label) of an over_seeds table."""
  keys = results.groups(table)
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
  for i, (regime, samples, value, knob_values) in enumerate(keys):
    sub = results.select(table, regime, value, samples, knob_values)
    g_G, color = sub['generation'][:, 0], f'C{i % 10}'
    label = run_label(regime, samples, value, with_samples=len({k.samples for k in keys}) > 1,
                      knob_values=knob_values)
    for ax, (column, _) in zip(axes[:2], (score, diversity)):
      ax.plot(g_G, sub[f'{column}_q50'][:, 0], color=color, label=label)
      ax.fill_between(g_G, sub[f'{column}_q05'][:, 0], sub[f'{column}_q95'][:, 0], color=color,
                      alpha=0.15, linewidth=0)
    x, y = sub[f'{diversity[0]}_q50'][:, 0], sub[f'{score[0]}_q50'][:, 0]
    axes[2].plot(x, y, color=color, label=label)
    axes[2].plot(x[:1], y[:1], 'o', x[-1:], y[-1:], 'x', color=color)
  for ax, (_, label) in zip(axes[:2], (score, diversity)):
    ax.set_xlabel('generation')
    ax.set_ylabel(label)
  axes[2].set_xlabel(diversity[1])
  axes[2].set_ylabel(score[1])
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[2].legend(fontsize=7, title='o: generation 0, x: the last', title_fontsize=7)
  _finish(fig, path, title)


def theory_panels(table, panels, path, title=None):
  """Measured curves (solid) and their closed forms (dashed) against generation on
  a log axis: a row per panel, a column per regime, a line per sample size M.

  `panels` is a list of (column, label): `table[column]` is measured and
  `table[column + '_theory']` its closed form, NaN where there is none.
  """
  keys = results.groups(table)
  regimes = list(dict.fromkeys(k.regime for k in keys))
  fig, axes = plt.subplots(len(panels), len(regimes), figsize=(4.8 * len(regimes), 3.6 * len(panels)),
                           squeeze=False, sharex=True)
  for row, (column, label) in enumerate(panels):
    for ax, regime in zip(axes[row], regimes):
      for i, (r, samples, fraction, knob_values) in enumerate(k for k in keys if k[0] == regime):
        sub = results.select(table, r, fraction, samples, knob_values)
        g_G = sub['generation'][1:, 0]  # generation 0 has no place on a log axis
        color = f'C{i % 10}'
        ax.plot(g_G, sub[column][1:, 0], color=color,
                label=run_label(r, samples, fraction, with_regime=False, with_samples=True,
                                knob_values=knob_values))
        theory = sub.get(column + '_theory')
        if theory is not None and np.isfinite(theory[1:, 0]).any():
          ax.plot(g_G, theory[1:, 0], color=color, linestyle='--', linewidth=1)
      ax.set_xscale('log')
      if np.all(table[column][np.isfinite(table[column])] > 0):
        ax.set_yscale('log')
      ax.set_title(regime if row == 0 else '', fontsize=10)
      ax.set_xlabel('generation')
      ax.set_ylabel(label)
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7, title='dashed: closed form', title_fontsize=7)
  _finish(fig, path, title)


def absorption(outcomes, path, title=None):
  """Per outcome, for each absorbing sweep: how often the chain was absorbed there
  beside its original probability (theory: equal), and the mean generation of
  its loss against its expected count M p, with the Wright-Fisher expectation."""
  keys = [k for k in results.groups(outcomes)
          if np.nansum(results.select(outcomes, k.regime, k.value, k.samples,
                                      k.knobs)['absorbed_frequency']) > 0]
  keys = keys or results.groups(outcomes)[:1]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
  ax = axes[0, 0]
  width = 0.8 / (len(keys) + 1)
  first = results.select(outcomes, keys[0].regime, keys[0].value, keys[0].samples, keys[0].knobs)
  i_K = first['outcome'][:, 0]
  ax.bar(i_K, first['probability'][:, 0], width, color='0.6', label='original probability')
  for j, (regime, samples, fraction, knob_values) in enumerate(keys):
    sub = results.select(outcomes, regime, fraction, samples, knob_values)
    label = run_label(regime, samples, fraction, with_samples=True, knob_values=knob_values)
    ax.bar(i_K + (j + 1) * width, sub['absorbed_frequency'][:, 0], width,
           label=f'absorbed there, {label}')
  ax.set_xlabel('outcome')
  ax.set_ylabel('probability / frequency over seeds')
  ax.legend(fontsize=8)
  ax = axes[0, 1]
  for j, (regime, samples, fraction, knob_values) in enumerate(keys):
    sub = results.select(outcomes, regime, fraction, samples, knob_values)
    c_K = samples * sub['probability'][:, 0]
    order = np.argsort(c_K)
    ax.plot(c_K[order], sub['mean_loss_generation'][order, 0], 'o', color=f'C{j % 10}',
            label=run_label(regime, samples, fraction, with_samples=True, knob_values=knob_values))
    ax.plot(c_K[order], sub['mean_loss_generation_theory'][order, 0], '--', color=f'C{j % 10}',
            linewidth=1)
  c = np.geomspace(max(ax.get_xlim()[0], 0.1), ax.get_xlim()[1], 50)
  ax.plot(c, c, ':', color='k', linewidth=1, label='c generations')
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlabel('expected count c = M p of the outcome')
  ax.set_ylabel('mean generation of its loss, when lost')
  ax.legend(fontsize=8, title='dashed: Wright-Fisher diffusion', title_fontsize=8)
  ax.grid(alpha=0.3)
  _finish(fig, path, title)


def _finish(fig, path, title):
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  if placement.is_primary():  # one copy of each figure per multi-host run
    fig.savefig(path, dpi=120)
  plt.close(fig)


def _mixture_at(sub, g, seed_col, components, dims):
  w = np.array([sub[f'weight_{k}'][g, seed_col] for k in range(components)])
  mu = np.array([[sub[f'mean_{k}_{i}'][g, seed_col] for i in range(dims)]
                 for k in range(components)])
  cov = np.zeros((components, dims, dims))
  for k in range(components):
    for i, j in zip(*np.triu_indices(dims)):
      cov[k, i, j] = cov[k, j, i] = sub[f'cov_{k}_{i}{j}'][g, seed_col]
  return w, mu, cov


def gmm_scatter(table, path, generations=(0, 50, 100, 150, 200, 350, 2000), n=1000):
  """The paper's panels: n samples of the seed-0 fit at chosen generations, 2-D."""
  regime, samples, fraction, knob_values = results.groups(table)[0]
  sub = results.select(table, regime, fraction, samples, knob_values)
  last = sub['generation'].shape[0] - 1
  shown = [g for g in generations if g <= last] or [last]
  components = sum(k.startswith('weight_') for k in sub)
  dims = sum(k.startswith('mean_0_') for k in sub)
  rng = np.random.default_rng(0)
  fig, axes = plt.subplots(1, len(shown), figsize=(2.6 * len(shown), 2.8), squeeze=False,
                           sharex=True, sharey=True)
  for ax, g in zip(axes[0], shown):
    w, mu, cov = _mixture_at(sub, g, 0, components, dims)
    z = rng.choice(components, size=n, p=w / w.sum())
    x = np.stack([rng.multivariate_normal(mu[k], cov[k]) for k in z])
    ax.scatter(x[:, 0], x[:, 1], s=2, c=z, cmap='coolwarm', vmin=0, vmax=components - 1)
    ax.set_title(f'generation {g}', fontsize=9)
  fig.suptitle(f'{n} samples of the fit, seed {int(sub["seed"][0, 0])}, {regime}', fontsize=9)
  _finish(fig, path, None)


def image_grids(grid_GxNxD, path, title=None, generations=(0, 5, 10, 20), side=28):
  """A 10 x 10 grid of images per chosen generation, side by side."""
  last = grid_GxNxD.shape[0] - 1
  shown = [g for g in generations if g < last] + [last]
  fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.5), squeeze=False)
  for ax, g in zip(axes[0], shown):
    tiles = np.asarray(grid_GxNxD[g][:100], np.float32).reshape(10, 10, side, side)
    ax.imshow(tiles.transpose(0, 2, 1, 3).reshape(10 * side, 10 * side), cmap='gray',
              vmin=0, vmax=1)
    ax.set_title(f'generation {g}', fontsize=10)
    ax.axis('off')
  _finish(fig, path, title)


def latent_hists(table, bins, limit, path, title=None):
  """Histograms of the generation-0 encoder's latent means, one per generation,
  averaged over seeds, for each sweep."""
  keys = results.groups(table)
  fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
  centres = np.linspace(-limit, limit, bins + 1)
  centres = (centres[1:] + centres[:-1]) / 2
  for ax, (regime, samples, fraction, knob_values) in zip(axes[0], keys):
    sub = results.select(table, regime, fraction, samples, knob_values)
    g1 = sub['generation'].shape[0]
    colors = plt.cm.viridis(np.linspace(0, 1, g1))
    for g in range(g1):
      density = np.array([sub[f'hist_{i:02d}_mean'][g, 0] for i in range(bins)])
      ax.plot(centres, density, color=colors[g], label=f'generation {g}' if g in (0, g1 - 1) else None)
    ax.set_xlabel('latent mean under the generation-0 encoder')
    ax.set_ylabel('share of values')
    ax.set_title(run_label(regime, samples, fraction, knob_values=knob_values), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  _finish(fig, path, title)


def perplexity_histograms(entries, path, title=None):
  """The paper's histograms: perplexity of each generation's generated blocks under the
  generation-0 model, log x, one panel per setting, seeds pooled.

  `entries` is a list of (setting, seed, generation, ppl_N); setting names a panel.
  """
  keys = list(dict.fromkeys(k for k, *_ in entries))
  fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
  every = np.concatenate([p for *_, p in entries])
  bins = np.geomspace(max(every.min(), 1.0), every.max() * 1.01, 60)
  for ax, key in zip(axes[0], keys):
    gens = sorted({g for k, _, g, _ in entries if k == key})
    colors = plt.cm.viridis(np.linspace(0, 1, len(gens)))
    for color, g in zip(colors, gens):
      ppl = np.concatenate([p for k, _, gg, p in entries if (k, gg) == (key, g)])
      ax.hist(ppl, bins=bins, density=True, histtype='step', color=color, label=f'data of generation {g}')
    ax.set_xscale('log')
    ax.xaxis.set_major_formatter(ticker.LogFormatter())  # plain numbers: 4, 10, 30
    ax.xaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel('perplexity under the generation-0 model')
    ax.set_ylabel('density')
    ax.set_title(key, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  _finish(fig, path, title)


def along_knobs(table, metric, path, title=None, generations=None):
  """Where along each swept knob collapse speeds up or reverses: the metric's median and 90%
  band over seeds against the knob's value, at chosen generations (default: the middle and
  the last), a panel per knob, a line per group of the other settings. `metric` is
  (column, label) of an over_seeds table."""
  column, label = metric
  keys = results.groups(table)
  swept = [k for k in dict.fromkeys(n for key in keys for n, _ in key.knobs)
           if len({dict(key.knobs).get(k) for key in keys} - {None}) > 1]
  if not swept:
    return
  last = int(np.max(table['generation']))
  shown = sorted(set(generations or (last // 2, last)))
  several_m = len({key.samples for key in keys}) > 1
  fig, axes = plt.subplots(1, len(swept), figsize=(5.5 * len(swept), 4), squeeze=False)
  for ax, knob in zip(axes[0], swept):
    lines = {}  # the other settings -> [(knob value, group)]
    for key in keys:
      values = dict(key.knobs)
      if knob in values:
        rest = tuple((n, v) for n, v in key.knobs if n != knob)
        lines.setdefault((key.regime, key.samples, key.value, rest), []).append(
            (values[knob], key))
    for i, ((regime, samples, value, rest), points) in enumerate(lines.items()):
      points.sort()
      x = np.array([v for v, _ in points])
      subs = [results.select(table, k.regime, k.value, k.samples, k.knobs) for _, k in points]
      for j, g in enumerate(shown):
        stats = np.array([[sub[f'{column}_{q}'][min(g, len(sub[column + '_q50']) - 1), 0]
                           for q in ('q05', 'q50', 'q95')]
                          for sub in subs])  # a run cut short (absorbed): its last generation
        tag = run_label(regime, samples, value, knob_values=rest,
                        with_samples=several_m) + f', generation {g}'
        line, = ax.plot(x, stats[:, 1], 'o-' if j == len(shown) - 1 else 'o--',
                        color=f'C{i % 10}', label=tag, alpha=1.0 if j == len(shown) - 1 else 0.5)
        ax.fill_between(x, stats[:, 0], stats[:, 2], color=line.get_color(), alpha=0.1,
                        linewidth=0)
    ax.set_xlabel(knob.replace('_', ' '))
    ax.set_ylabel(label)
    if np.all(table[f'{column}_q05'][np.isfinite(table[f'{column}_q05'])] > 0):
      ax.set_yscale('log')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  _finish(fig, path, title)
