"""Runs read back as one table: results.load over tiny real runs of the GMM and theory
experiments (the VAE's and the language model's are read in their own tests' runs)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from collapse_jax.core import results
from collapse_jax.families import discrete, gaussian, gmm

QUIET = dict(progress=False, log=lambda _: None)


@pytest.fixture(scope='session')
def runs(tmp_path_factory):
  """Tiny real runs: a GMM, a Gaussian with per-seed rows, a categorical chain; and the
  Gaussian's run as it is without --per_seed_csv, which only leaves out metrics.csv."""
  root = tmp_path_factory.mktemp('runs')
  gmm.run(gmm.GMMConfig(seeds=2, generations=3, samples=50, heldout=50, checkpoint_every=3),
          str(root / 'gmm'), **QUIET)
  theory = dict(seeds=3, generations=4, samples=(10,), checkpoint_every=4, regimes=('replace',))
  gaussian.run(gaussian.GaussianConfig(**theory, per_seed_csv=True, estimator='unbiased'),
               str(root / 'gaussian_per_seed'), **QUIET)
  discrete.run(discrete.DiscreteConfig(**theory, outcomes=5), str(root / 'discrete'), **QUIET)
  (root / 'gaussian').mkdir()
  shutil.copy(root / 'gaussian_per_seed' / 'curves.csv', root / 'gaussian')
  config = json.loads((root / 'gaussian_per_seed' / 'config.json').read_text())
  (root / 'gaussian' / 'config.json').write_text(json.dumps({**config, 'per_seed_csv': False}))
  return root


@pytest.mark.e2e
def test_a_run_reads_as_its_per_seed_table_with_its_settings(runs):
  table = results.load(runs / 'gmm')
  assert len(table) == 2 * 4 and list(table.columns[:7]) == [
      'experiment', 'workdir', 'regime', 'samples', 'real_fraction', 'seed', 'generation']
  assert (table['experiment'] == 'gmm').all() and (table['workdir'] == str(runs / 'gmm')).all()
  assert sorted(table['seed'].unique()) == [0, 1] and table['generation'].max() == 3
  assert (table['components'] == 2).all() and (table['heldout'] == 50).all()  # settings
  written = pd.read_csv(runs / 'gmm' / 'metrics.csv')
  pd.testing.assert_frame_equal(table[written.columns].astype({'seed': int}), written)


@pytest.mark.e2e
def test_runs_of_every_experiment_and_setting_concatenate(runs):
  table = results.load([runs / 'gmm', runs / 'gaussian', runs / 'gaussian_per_seed',
                        runs / 'discrete'])
  assert table.groupby('workdir').size().to_dict() == {
      str(runs / 'gmm'): 2 * 4, str(runs / 'gaussian'): 5, str(runs / 'gaussian_per_seed'): 3 * 5,
      str(runs / 'discrete'): 5}
  assert set(table['experiment']) == {'gmm', 'gaussian', 'discrete'}
  per_seed = table[table['workdir'] == str(runs / 'gaussian_per_seed')]
  assert per_seed['seed'].notna().all() and (per_seed['estimator'] == 'unbiased').all()
  over_seeds = table[table['workdir'] == str(runs / 'gaussian')]
  assert over_seeds['seed'].isna().all() and not over_seeds['per_seed_csv'].any()
  # The per-seed rows' mean is the curves' mean over seeds (both written to 7 digits).
  mean = per_seed.groupby(['regime', 'generation'])['sigma'].mean()
  curves = over_seeds.set_index(['regime', 'generation'])['sigma_mean']
  np.testing.assert_allclose(mean.sort_index(), curves.sort_index(), rtol=1e-5)
  assert results.load(runs).shape == table.shape  # a directory of runs reads them all


def test_what_is_not_a_finished_run_is_one_line(tmp_path):
  with pytest.raises(ValueError, match='holds no run'):
    results.load(tmp_path)
  (tmp_path / 'config.json').write_text('{"components": 2}')
  with pytest.raises(ValueError, match='no metrics.csv or curves.csv'):
    results.load(tmp_path)


def test_percentiles_keep_infinities_where_numpy_gives_nan():
  """A metric that reaches -inf (a point mass's log-determinant, a held-out log-likelihood)
  keeps its quantiles: linear interpolation toward -inf is -inf, not NaN; rows without an
  infinity are np.percentile's to the bit."""
  inf = np.inf
  v_GxS = np.array([[1.0, 2.0, 3.0, 4.0, 5.0],
                    [-inf, -inf, -inf, 0.0, 1.0],
                    [-inf, -inf, -inf, -inf, -inf],
                    [0.0, 1.0, 2.0, inf, inf],
                    [-inf, 0.0, 0.0, 0.0, inf],
                    [-inf, -inf, -inf, inf, inf],
                    [np.nan, 0.0, 1.0, 2.0, 3.0]])
  with np.errstate(invalid='ignore'):
    lo, mid, hi = results.percentiles(v_GxS, (5, 50, 95))
  assert np.array_equal(lo[:1], np.percentile(v_GxS[:1], 5, axis=1))
  assert np.array_equal(mid[:1], [3.0])
  np.testing.assert_allclose(lo[1:6], [-inf, -inf, 0.2, -inf, -inf])
  np.testing.assert_array_equal(mid[1:6], [-inf, -inf, 2.0, 0.0, -inf])
  np.testing.assert_allclose(hi[1:6], [0.8, -inf, inf, inf, inf])
  assert np.isnan(lo[6]) and np.isnan(mid[6]) and np.isnan(hi[6])
