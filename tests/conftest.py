"""What every test shares: a persistent compilation cache, the tiers, and experiments run
in-process.

Tiers (markers; `python -m pytest -q` runs the default, untiered tests):
  e2e          whole runs end to end: a family's run or command writing its tables, resuming
  integration  several processes or device counts, command lines in a fresh interpreter
  heavy        laws over thousands of seeds, every regime of a family at once
  torch        compares with PyTorch (`transformers`, the reference VAE); needs torch
`-m ""` runs every test; `-m e2e`, `-m integration`, `-m heavy` one tier.
"""

import contextlib
import importlib
import io
import os
import subprocess
import sys

# Before JAX is imported: compiled programs are kept on disk and reused by later test runs
# and by the subprocesses tests start (they inherit the environment).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(ROOT, '.pytest_cache', 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def run_experiment(name: str, *args: str) -> subprocess.CompletedProcess:
  """`python -m experiments.NAME ARGS` in this process, on its devices as they are: its exit
  code, stdout and stderr, as subprocess.run would give them."""
  module = importlib.import_module(f'experiments.{name}')
  if not any(a.startswith('--cpu_devices') for a in args):
    args = (*args, '--cpu_devices=0')
  out, err, code = io.StringIO(), io.StringIO(), 0
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      module.main([name, *args])
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else 1
  return subprocess.CompletedProcess([name, *args], code, out.getvalue(), err.getvalue())


def run_fresh(module: str, *args: str, devices: int = 0, timeout: int = 600):
  """`python -m MODULE ARGS` in a new interpreter at the checkout's root, with `devices` forced
  CPU devices (XLA_FLAGS) or none forced; its exit code, stdout and stderr."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  if devices:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def assert_tempered_groups_share_generation_0(table, same: str, apart: str):
  """A table of runs at temperatures (0.8, 1, 1.25) under replace: three groups of runs in
  that order, column `same` equal in each at generation 0 (its fit precedes any sampling),
  `apart` different at generation 1 in every seed."""
  from collapse_jax.core import results  # noqa: PLC0415 (after the cache is set up)
  groups = results.groups(table)
  assert [dict(g.knobs)['temperature'] for g in groups] == pytest.approx([0.8, 1.0, 1.25])
  sub = [results.select(table, 'replace', 0.0, knob_values=g.knobs) for g in groups]
  for other in sub[1:]:
    np.testing.assert_array_equal(other[same][0], sub[0][same][0])
    assert np.all(other[apart][1] != sub[0][apart][1])


def assert_gmm_matches_scikit_learn(mix, x_NxD, seed: int):
  """A fitted 2-component mixture equals scikit-learn's GaussianMixture on the same data
  (the paper's protocol: tol 1e-5, max_iter 2000) to 1e-3; returns the reference, fitted."""
  from sklearn.mixture import GaussianMixture  # noqa: PLC0415 (read by the GMM tests alone)
  from collapse_jax.families import gmm  # noqa: PLC0415
  mix = gmm.canonical(mix)
  ref = GaussianMixture(2, tol=1e-5, max_iter=2000, random_state=seed).fit(
      np.asarray(x_NxD, np.float64))
  order = np.argsort(ref.means_[:, 0])
  np.testing.assert_allclose(mix.means, ref.means_[order], atol=1e-3)
  np.testing.assert_allclose(mix.covs, ref.covariances_[order], atol=1e-3)
  np.testing.assert_allclose(mix.weights, ref.weights_[order], atol=1e-3)
  return ref


def _shares_a_fixture(item) -> bool:
  """Whether a test uses a fixture that a test module builds once for several tests."""
  defs = getattr(item, '_fixtureinfo', None)
  defs = defs.name2fixturedefs.values() if defs else ()
  return any(d and d[-1].scope != 'function' and d[-1].func.__module__.startswith('test_')
             for d in defs)


def pytest_itemcollected(item):
  """Tests of a module that share its fixtures run on one pytest-xdist worker (each fixture
  is built once: they are session-scoped, so that other modules' tests in between do not tear
  them down); the rest are spread over the workers one by one."""
  if _shares_a_fixture(item):
    item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def pytest_collection_modifyitems(config, items):
  """Tests marked torch are skipped, saying so, where PyTorch is not installed. The integration
  tier's tests, minutes each, are handed out first: the workers then finish together, not one
  of them alone on a fresh interpreter's run at the end."""
  items.sort(key=lambda item: 'integration' not in item.keywords)  # stable: the rest in order
  try:
    import torch  # noqa: F401, PLC0415
  except ImportError:
    skip = pytest.mark.skip(reason='needs PyTorch (the [test] extra on Python 3.11)')
    for item in items:
      if 'torch' in item.keywords:
        item.add_marker(skip)

