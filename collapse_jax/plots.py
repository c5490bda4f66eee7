"""Figures: metric curves over generations, and the GMM's scatter panels."""

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from collapse_jax import results  # noqa: E402


def curves(table, panels, path, title=None):
  """Median and 90% band over seeds against generation, one line per regime and fraction.

  `panels` is a list of (column, label, log_y).
  """
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
  for ax, (column, label, log_y) in zip(axes[0], panels):
    for regime, fraction in results.groups(table):
      sub = results.select(table, regime, fraction)
      g_G = sub['generation'][:, 0]
      v_GxS = sub[column].astype(np.float64)
      lo, mid, hi = np.percentile(v_GxS, [5, 50, 95], axis=1)
      name = regime if regime not in ('mix', 'fresh') else f'{regime} {fraction:g}'
      line, = ax.plot(g_G, mid, label=name)
      ax.fill_between(g_G, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel('generation')
    ax.set_ylabel(label)
    if log_y:
      ax.set_yscale('log')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
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
  regime, fraction = results.groups(table)[0]
  sub = results.select(table, regime, fraction)
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
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
