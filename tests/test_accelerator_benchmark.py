"""The prepared accelerator command runs end to end at smoke sizes and reports every part; its
search for the largest GMM batch finds it from made-up byte counts; a failed part is reported."""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import accelerator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.integration
@pytest.mark.torch  # the language model part compares with transformers
def test_smoke_run_reports_every_part(tmp_path):
  env = {**os.environ, 'PYTHONPATH': ROOT}
  env.pop('XLA_FLAGS', None)  # one CPU device, as the GPU machine has one device
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.accelerator', '--smoke',
                         f'--out={tmp_path}'], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(tmp_path / 'accelerator.json') as f:
    report = json.load(f)
  assert report['smoke'] and report['finished'] and report['versions']['jax']
  assert report['device']['kind'] and report['flags']['smoke']
  parts = {p['part']: p for p in report['parts']}
  assert list(parts) == list(accelerator.PARTS)
  for name, part in parts.items():
    assert part['status'] == 'ok', (name, part['error'])
    assert part['rows'], name
    for row in part['rows']:
      assert isinstance(row['value'], float) and math.isfinite(row['value']), (name, row)
      assert row['met'] is None, (name, row)  # targets are judged at full sizes only
  table = (tmp_path / 'accelerator.md').read_text()
  for name in accelerator.PARTS:
    assert f'\n| {name} | ' in table, name
  assert '[gmm] start' in proc.stdout and '[lm] done in' in proc.stdout


def _fake_sizes(monkeypatch, need):
  """Compiling a GMM sweep of `seeds` reports need(seeds) bytes, and compiles nothing."""
  monkeypatch.setattr(accelerator, '_gmm_programs',
                      lambda seeds, generations, chunk: (0.0, (None,) * 5 + (need(seeds),)))


def test_largest_seeds_doubles_then_bisects(monkeypatch):
  have = 1000 + 100 * 1000  # exactly 1,000 seeds fit
  _fake_sizes(monkeypatch, lambda seeds: 1000 + 100 * seeds)
  monkeypatch.setattr(accelerator.placement, 'device_memory', lambda: have)
  sizes = accelerator.Sizes(max_first_seeds=4, max_search_s=1e9)
  seeds, _, need, _, hi, stopped = accelerator._largest_seeds(sizes, lambda line: None)
  assert 1000 * 15 / 16 <= seeds <= 1000 and seeds % 2 == 0
  assert need[seeds] <= have < need[hi] and not stopped
  assert len(need) <= 8  # doublings skipped where the bytes per seed said they fit


def test_largest_seeds_halves_when_the_first_does_not_fit(monkeypatch):
  _fake_sizes(monkeypatch, lambda seeds: 100 * seeds)
  monkeypatch.setattr(accelerator.placement, 'device_memory', lambda: 100 * 700)
  sizes = accelerator.Sizes(max_first_seeds=4096, max_search_s=1e9)
  seeds, *_ = accelerator._largest_seeds(sizes, lambda line: None)
  assert 700 * 15 / 16 <= seeds <= 700


def test_a_failed_part_is_reported_and_the_rest_kept(tmp_path):
  info = {'command': 'c', 'started': 's', 'versions': {k: 'v' for k in (
              'python', 'jax', 'jaxlib', 'torch', 'transformers')},
          'device': {'kind': 'k', 'count': 1, 'platform': 'cpu', 'memory_gib': 1.0}}
  report = accelerator.Report(str(tmp_path), ['gmm', 'vae'], False, info)
  report.add('gmm', '4 seeds', 'warm seconds', 70.0, 's', '', '< 60 s', False)
  report.status('gmm', 'ok', 1.0)
  report.status('vae', 'failed', 2.0, accelerator._one_line(MemoryError('out of memory\nmore')))
  table = (tmp_path / 'accelerator.md').read_text()
  assert '| gmm | 4 seeds | warm seconds: 70.0 s | < 60 s | **no** |' in table
  assert '| vae | | **failed** after 2.0 s: MemoryError: out of memory | | |' in table
  parts = json.loads((tmp_path / 'accelerator.json').read_text())['parts']
  assert [p['status'] for p in parts] == ['ok', 'failed']
