"""The main job's command line: one-line errors, its outputs and a rerun that recomputes
nothing, in this process; a sharded run equal to one device, in fresh interpreters."""

import numpy as np
import pandas as pd
import pytest

from conftest import run_experiment, run_fresh


@pytest.mark.parametrize('flag, value', [
    ('seeds', '0'), ('generations', '0'), ('samples', '1'), ('real_fraction', '1.5'),
    ('regime', 'grow')])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, flag, value):
  workdir = tmp_path / 'run'
  proc = run_experiment('gmm', f'--{flag}={value}', f'--workdir={workdir}')
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: --{flag}:'), proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not workdir.exists()


def test_an_unknown_flag_is_one_line():
  proc = run_experiment('gmm', '--seed=3')
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: Unknown command line flag 'seed'. Did you mean: seeds ?"]


def test_help_lists_the_flags_and_runs_nothing(tmp_path):
  proc = run_experiment('gmm', '--help', f'--workdir={tmp_path / "run"}')
  assert proc.returncode == 0 and '--true_means' in proc.stdout and '--seeds' in proc.stdout
  assert not (tmp_path / 'run').exists()


COMMON = ['--preset=small', '--seeds=6', '--generations=12', '--checkpoint_every=5',
          '--regime=replace,mix', '--real_fraction=0.1,0.5']


@pytest.mark.e2e
def test_a_run_writes_its_outputs_and_a_rerun_recomputes_nothing(tmp_path):
  one = run_experiment('gmm', *COMMON, f'--workdir={tmp_path}')
  assert one.returncode == 0, one.stderr[-2000:]
  a = pd.read_csv(tmp_path / 'metrics.csv')
  # replace runs once, mix once per fraction: (1 + 2) x 6 seeds x 13 generations
  assert len(a) == 3 * 6 * 13
  assert set(a.groupby(['regime', 'real_fraction']).size()) == {6 * 13}
  assert np.all(a.loc[a.generation == 0, 'l2sq_gen0'] == 0)
  for name in ('collapse.png', 'scatter.png', 'summary.txt', 'config.json'):
    assert (tmp_path / name).stat().st_size > 0

  # A finished run rerun prints its summary again, without recomputing.
  again = run_experiment('gmm', *COMMON, f'--workdir={tmp_path}')
  assert again.returncode == 0
  assert again.stdout == one.stdout and 'l2sq_gen0' in again.stdout
  assert '%|' not in again.stderr  # no progress bar: nothing ran


@pytest.mark.integration
def test_sharded_run_equals_one_device(tmp_path):
  for devices in (1, 4):
    proc = run_fresh('experiments.gmm', *COMMON, f'--cpu_devices={devices}',
                     f'--workdir={tmp_path / str(devices)}')
    assert proc.returncode == 0, proc.stderr[-2000:]
  pd.testing.assert_frame_equal(pd.read_csv(tmp_path / '1' / 'metrics.csv'),
                                pd.read_csv(tmp_path / '4' / 'metrics.csv'), check_exact=True)
