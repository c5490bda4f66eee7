"""The theory experiments' command lines: one-line errors before anything runs, and a full
small run, in this process; a configuration that once deadlocked, on two CPU devices."""

import pandas as pd
import pytest

from conftest import run_experiment, run_fresh


@pytest.mark.parametrize('module, flag, value', [
    ('gaussian', 'samples', '100,1'), ('gaussian', 'samples', '10,x'),
    ('gaussian', 'regime', 'grow'), ('discrete', 'probs', '0.5,-0.5'),
    ('discrete', 'tail', '0')])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, module, flag, value):
  workdir = tmp_path / 'run'
  proc = run_experiment(module, f'--{flag}={value}', f'--workdir={workdir}')
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: --{flag}:'), proc.stderr
  assert not workdir.exists()


@pytest.mark.e2e
def test_small_presets_run_end_to_end(tmp_path):
  for module, table in (('gaussian', 'curves.csv'), ('discrete', 'outcomes.csv')):
    proc = run_experiment(module, '--preset=small', '--seeds=20', f'--workdir={tmp_path / module}')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'median [5%, 95%] over seeds' in proc.stdout
    assert len(pd.read_csv(tmp_path / module / table)) > 0


@pytest.mark.integration
def test_the_configuration_that_deadlocked_ends(tmp_path):
  """10-D, 200 seeds, two CPU devices each in a batched LAPACK decomposition: jaxlib's
  kernels split such batches over a thread pool they then block, and this waited forever
  at zero CPU (collapse_jax.core.linalg)."""
  proc = run_fresh('experiments.gaussian', '--dims=10', '--seeds=200', '--generations=3',
                   '--samples=32', '--regime=replace', '--cpu_devices=2', f'--workdir={tmp_path}',
                   timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  curves = pd.read_csv(tmp_path / 'curves.csv')
  assert len(curves) == 4 and (curves.rank_q50 == 10).all()
