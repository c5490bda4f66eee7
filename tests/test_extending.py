"""docs/extending.md's family: a Poisson rate, under every regime, against its closed form."""

import pathlib

import numpy as np
import pytest

from collapse_jax.core import driver, regimes, results
from experiments import poisson

Z999 = 3.2905  # two-sided 99.9% normal quantile


@pytest.mark.heavy  # every regime at once
def test_the_guides_family_runs_under_every_regime(tmp_path):
  cfg = poisson.PoissonConfig(seeds=4, generations=3, samples=16, checkpoint_every=3,
                              regimes=tuple(regimes.REGIMES), real_fractions=(0.25,))
  poisson.run(cfg, str(tmp_path), progress=False, log=lambda *_: None)
  table = results.load(str(tmp_path))
  assert set(table.regime) == set(regimes.REGIMES) and set(table.experiment) == {'poisson'}
  assert len(table) == len(regimes.REGIMES) * 4 * 4
  assert table[['rate', 'train_score', 'sample_score']].notna().all().all()


@pytest.mark.heavy  # 4,000 seeds
def test_the_rate_is_a_martingale_whose_variance_grows_by_rate_over_m(tmp_path):
  """rate_n = mean of M Poisson(rate_{n-1}): E rate_n = rate, Var rate_n = n rate / M."""
  cfg = poisson.PoissonConfig(seeds=4000, generations=10, samples=20, checkpoint_every=10)
  m = driver.run(poisson.family(cfg), cfg.sweep('replace'), str(tmp_path), 10, progress=False)
  err_GxS = m['rate_error'].astype(np.float64) ** 2
  for g in (0, 4, 10):
    law = (g + 1) * cfg.rate / cfg.samples
    half = Z999 * err_GxS[g].std(ddof=1) / np.sqrt(cfg.seeds)
    assert abs(err_GxS[g].mean() - law) < half, g
  # a generation off by one is rejected
  assert abs(err_GxS[10].mean() - 10 * cfg.rate / cfg.samples) > Z999 * err_GxS[10].std(
      ddof=1) / np.sqrt(cfg.seeds)


def test_the_guide_shows_the_whole_family_file():
  """docs/extending.md's code block is experiments/poisson.py, every line of it."""
  root = pathlib.Path(__file__).parent.parent
  guide = (root / 'docs' / 'extending.md').read_text()
  assert (root / 'experiments' / 'poisson.py').read_text() in guide
