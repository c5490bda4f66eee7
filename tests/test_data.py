"""The data directory: where it is, what the experiments say when data is missing, and
downloads checked against their checksums (fetched here from the test data itself, offline)."""

import gzip
import os
import shutil
import subprocess
import sys
import types
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import pytest

from collapse_jax import data
from collapse_jax.core import validation
from collapse_jax.data import mnist
from conftest import ROOT, run_experiment


def test_the_directory_is_the_flag_else_the_variable_else_the_user_cache(tmp_path, monkeypatch):
  monkeypatch.setenv('COLLAPSE_JAX_DATA', str(tmp_path / 'env'))
  assert data.resolve(str(tmp_path / 'flag')) == (str(tmp_path / 'flag'), '--data_dir')
  assert data.resolve() == (str(tmp_path / 'env'), '$COLLAPSE_JAX_DATA')
  monkeypatch.delenv('COLLAPSE_JAX_DATA')
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert data.directory() == str(tmp_path / 'xdg' / 'collapse_jax')
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert data.directory() == str(tmp_path / 'home' / '.cache' / 'collapse_jax')


def test_the_test_data_is_complete_where_the_tests_look():
  """$COLLAPSE_JAX_DATA (.ci/run sets it): every dataset the tests read, checksums matching."""
  for name in ('mnist', 'opt-tokenizer'):
    folder = data.require(name)
    assert data.check(data.DATASETS[name], folder) == ('complete', 'checksums match')
  folder = data.require('wikitext', parts=('validation', 'test'))
  state, detail = data.check(data.DATASETS['wikitext'], folder)  # train: on the hub only
  assert state in ('complete', 'incomplete') and detail.endswith('checksums match')
  assert f'wikitext       {state:10s} {folder}' in data.status()


def test_a_data_dir_holding_a_datasets_files_is_its_folder():
  mnist = data.require('mnist')
  assert data.require('mnist', mnist) == mnist  # --data_dir=.../mnist, as --mnist_dir was


@pytest.mark.parametrize('experiment, args, missing', [
    ('vae', [], 'MNIST'),
    ('opt', ['--preset=tiny'], 'WikiText-2 (validation, test)')])
def test_missing_data_stops_an_experiment_in_one_line(tmp_path, monkeypatch, experiment, args,
                                                      missing):
  for name, value in (('COLLAPSE_JAX_DATA', 'empty'), ('HOME', 'home'), ('XDG_CACHE_HOME', 'cache')):
    monkeypatch.setenv(name, str(tmp_path / value))
  (tmp_path / 'empty').mkdir()
  proc = run_experiment(experiment, *args, f'--workdir={tmp_path / "run"}')
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: --data_dir: '), proc.stderr
  folder = data.DATASETS['mnist' if experiment == 'vae' else 'wikitext'].folder
  name = 'mnist' if experiment == 'vae' else 'wikitext'
  for words in (missing, str(tmp_path / 'empty' / folder), '$COLLAPSE_JAX_DATA',
                f'python -m collapse_jax.data download {name}', '--data_dir=DIR'):
    assert words in lines[0], lines[0]
  assert not (tmp_path / 'run').exists()


# ---------------------------------------------------------------- downloads, from local copies


def _serve_from(folder):
  """A fetch that copies the file a URL (or hub file) names from `folder`."""
  return lambda source, path: shutil.copyfile(os.path.join(folder, os.path.basename(source)), path)


def test_mnist_downloads_and_verifies(tmp_path, monkeypatch):
  monkeypatch.setattr(data, '_fetch', _serve_from(data.require('mnist')))
  data.download('mnist', str(tmp_path), log=lambda _: None)
  assert data.check(data.DATASETS['mnist'], str(tmp_path / 'mnist')) == ('complete',
                                                                          'checksums match')
  # A file damaged on disk is found by status and fetched again, alone.
  damaged = tmp_path / 'mnist' / 't10k-labels-idx1-ubyte.gz'
  damaged.write_bytes(gzip.compress(b'\0' * 100))
  assert data.check(data.DATASETS['mnist'], str(tmp_path / 'mnist'))[0] == 'damaged'
  fetched = []
  monkeypatch.setattr(data, '_fetch', lambda url, path: (
      fetched.append(url), _serve_from(data.require('mnist'))(url, path)))
  data.download('mnist', str(tmp_path), log=lambda _: None)
  assert [os.path.basename(u) for u in fetched] == ['t10k-labels-idx1-ubyte.gz']
  assert data.check(data.DATASETS['mnist'], str(tmp_path / 'mnist'))[0] == 'complete'


@pytest.mark.parametrize('damage', [
    lambda raw: gzip.compress(raw[:-1] + bytes([raw[-1] ^ 1])),  # one bit of the content
    lambda raw: gzip.compress(raw)[:1000]])  # cut short
def test_a_download_that_fails_its_checksum_is_refused(tmp_path, monkeypatch, damage):
  source = data.require('mnist')
  (tmp_path / 'mnist').mkdir()
  for name in ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte'):
    shutil.copy(os.path.join(source, name + '.gz'), tmp_path / 'mnist')  # only the labels missing

  def damaged(url, path):
    with gzip.open(os.path.join(source, os.path.basename(url))) as f:
      (tmp_path / 'x').write_bytes(damage(f.read()))
    shutil.copyfile(tmp_path / 'x', path)
  monkeypatch.setattr(data, '_fetch', damaged)
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # not installed
  with pytest.raises(data.DownloadError) as raised:
    data.download('mnist', str(tmp_path), log=lambda _: None)
  message = str(raised.value)
  assert 'failed its checksum' in message and 'tensorflow-datasets' in message
  assert '\n' not in message
  assert len(os.listdir(tmp_path / 'mnist')) == 3  # nothing damaged is left in place


def test_the_tokenizer_downloads_and_verifies(tmp_path, monkeypatch):
  source = data.require('opt-tokenizer')
  monkeypatch.setattr(data, '_hub_fetch', lambda repo, name, path: _serve_from(source)(name, path))
  data.download('opt-tokenizer', str(tmp_path), log=lambda _: None)
  assert data.check(data.DATASETS['opt-tokenizer'], str(tmp_path / 'opt-125m'))[0] == 'complete'
  (tmp_path / 'opt-125m' / 'merges.txt').unlink()
  monkeypatch.setattr(data, '_hub_fetch', lambda repo, name, path: open(path, 'w').write('x'))
  with pytest.raises(data.DownloadError, match='merges.txt failed its checksum'):
    data.download('opt-tokenizer', str(tmp_path), log=lambda _: None)


def _fake_datasets(rows):
  return types.SimpleNamespace(load_dataset=lambda *args: {
      split: {'text': text} for split, text in rows.items()})


def test_wikitext_downloads_through_datasets_and_verifies(tmp_path, monkeypatch):
  source = data.require('wikitext', parts=('validation', 'test'))
  rows = {split: pq.read_table(data.DATASETS['wikitext'].files(source, split)[0])
          .column('text').to_pylist() for split in ('validation', 'test')}
  rows['train'] = ['', ' = A train split with no known checksum = \n']
  monkeypatch.setitem(sys.modules, 'datasets', _fake_datasets(rows))
  data.download('wikitext', str(tmp_path), log=lambda _: None)
  assert data.check(data.DATASETS['wikitext'], str(tmp_path / 'wikitext-2-raw-v1')) == (
      'complete', 'checksums match')
  (tmp_path / 'wikitext-2-raw-v1' / 'test-00000-of-00001.parquet').unlink()
  rows['test'] = rows['test'][:-1]
  with pytest.raises(data.DownloadError, match='test split failed its checksum'):
    data.download('wikitext', str(tmp_path), log=lambda _: None)
  monkeypatch.setitem(sys.modules, 'datasets', None)  # not installed
  with pytest.raises(data.DownloadError, match='pip install datasets'):
    data.download('wikitext', str(tmp_path), log=lambda _: None)


def test_offline_a_download_fails_in_one_line(tmp_path, monkeypatch):
  def offline(*args, **kwargs):
    raise urllib.request.URLError('[Errno -3] Temporary failure in name resolution')
  monkeypatch.setattr(urllib.request, 'urlopen', offline)
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  with pytest.raises(data.DownloadError) as raised:
    data.download('mnist', str(tmp_path), log=lambda _: None)
  message = str(raised.value)
  assert '\n' not in message and message.startswith('cannot download https://')
  assert 'name resolution' in message and 'tensorflow-datasets' in message
  # And on the command line: one line, exit status 1 (a proxy that refuses: no network).
  env = {**os.environ, 'https_proxy': 'http://127.0.0.1:9', 'HTTPS_PROXY': 'http://127.0.0.1:9',
         'no_proxy': '', 'NO_PROXY': ''}
  proc = subprocess.run([sys.executable, '-m', 'collapse_jax.data', 'download', 'mnist',
                         f'--data_dir={tmp_path / "cli"}'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: download mnist: '), proc.stderr


def test_require_names_the_missing_parts(tmp_path):
  (tmp_path / 'wikitext-2-raw-v1').mkdir()
  shutil.copy(data.DATASETS['wikitext'].files(data.require('wikitext', parts=('test',)), 'test')[0],
              tmp_path / 'wikitext-2-raw-v1')
  with pytest.raises(validation.ConfigError) as raised:
    data.require('wikitext', str(tmp_path))
  assert str(raised.value).startswith('--data_dir: WikiText-2 (train, validation) not found in ')
  assert data.require('wikitext', str(tmp_path), parts=('test',)) == str(
      tmp_path / 'wikitext-2-raw-v1')


def test_offline_the_hub_fails_in_one_line_without_retrying(tmp_path, monkeypatch):
  def offline(*args, **kwargs):
    raise urllib.request.URLError('[Errno -2] Name or service not known')
  monkeypatch.setattr(urllib.request, 'urlopen', offline)
  with pytest.raises(data.DownloadError, match=r'^cannot reach https://\S+ \(URLError'):
    data.download('opt-tokenizer', str(tmp_path), log=lambda _: None)


def test_without_a_mirror_mnist_comes_from_tensorflow_datasets_with_its_own_checksums(
    tmp_path, monkeypatch):
  """tensorflow-datasets keeps its own order, so its files carry their own SHA256SUMS."""
  def load(name, split, batch_size):
    n = 6 if split == 'train' else 4
    return {'image': np.arange(n * 784, dtype=np.int64).reshape(n, 28, 28, 1) % 256,
            'label': np.arange(n) % 10}
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets',
                      types.SimpleNamespace(load=load, as_numpy=lambda x: x))
  monkeypatch.setattr(data, '_fetch', lambda url, path: (_ for _ in ()).throw(
      data.DownloadError(f'cannot download {url}')))
  data.download('mnist', str(tmp_path), log=lambda _: None)
  folder = str(tmp_path / 'mnist')
  assert data.check(data.DATASETS['mnist'], folder) == ('complete', 'checksums match')
  images, labels = mnist.load('test', folder)
  assert images.shape == (4, 784) and labels.tolist() == [0, 1, 2, 3]
  with open(os.path.join(folder, 't10k-labels-idx1-ubyte'), 'r+b') as f:
    f.seek(-1, 2)
    f.write(b'\7')
  assert data.check(data.DATASETS['mnist'], folder) == (
      'damaged', 'checksum differs: t10k-labels-idx1-ubyte')
