"""The main job's command line: one-line errors, and a sharded run equal to one device."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gmm(*args):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  return subprocess.run([sys.executable, '-m', 'experiments.gmm', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize('flag, value', [
    ('seeds', '0'), ('generations', '0'), ('samples', '1'), ('real_fraction', '1.5'),
    ('regime', 'grow')])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, flag, value):
  workdir = tmp_path / 'run'
  proc = _gmm(f'--{flag}={value}', f'--workdir={workdir}')
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: --{flag}:'), proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not workdir.exists()


def test_sharded_run_equals_one_device_and_writes_its_outputs(tmp_path):
  common = ['--preset=small', '--seeds=6', '--generations=12', '--checkpoint_every=5',
            '--regime=replace,mix', '--real_fraction=0.1,0.5']
  one = _gmm(*common, '--cpu_devices=1', f'--workdir={tmp_path / "one"}')
  four = _gmm(*common, '--cpu_devices=4', f'--workdir={tmp_path / "four"}')
  assert one.returncode == 0 and four.returncode == 0, one.stderr[-2000:] + four.stderr[-2000:]
  a = pd.read_csv(tmp_path / 'one' / 'metrics.csv')
  b = pd.read_csv(tmp_path / 'four' / 'metrics.csv')
  # replace runs once, mix once per fraction: (1 + 2) x 6 seeds x 13 generations
  assert len(a) == 3 * 6 * 13
  assert set(a.groupby(['regime', 'real_fraction']).size()) == {6 * 13}
  pd.testing.assert_frame_equal(a, b, check_exact=True)
  assert np.all(a.loc[a.generation == 0, 'l2sq_gen0'] == 0)
  for name in ('collapse.png', 'scatter.png', 'summary.txt', 'config.json'):
    assert (tmp_path / 'four' / name).stat().st_size > 0

  # A finished run rerun prints its summary again, without recomputing.
  again = _gmm(*common, '--cpu_devices=1', f'--workdir={tmp_path / "one"}')
  assert again.returncode == 0
  assert again.stdout == one.stdout and 'l2sq_gen0' in again.stdout
  assert '%|' not in again.stderr  # no progress bar: nothing ran
