"""MNIST from IDX files: the real files in ../shared/data (or $COLLAPSE_JAX_DATA), and clear errors."""

import gzip
import os

import numpy as np
import pytest

from collapse_jax import driver, mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get('COLLAPSE_JAX_DATA', os.path.join(ROOT, '..', 'shared', 'data'))
MNIST_DIR = os.path.join(DATA, 'mnist')


def test_reads_the_real_files():
  x, y = mnist.load('train', MNIST_DIR)
  assert x.shape == (60_000, 784) and x.dtype == np.float32
  assert 0.0 == x.min() and x.max() == 1.0
  np.testing.assert_array_equal(y[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])  # MNIST's first labels
  x, y = mnist.load('test', MNIST_DIR)
  assert x.shape == (10_000, 784) and np.bincount(y).tolist()[:3] == [980, 1135, 1032]


def test_plain_and_gzip_files_read_the_same(tmp_path):
  data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  raw = bytes([0, 0, 8, 3]) + b''.join(d.to_bytes(4, 'big') for d in data.shape) + data.tobytes()
  (tmp_path / 'a').write_bytes(raw)
  with gzip.open(tmp_path / 'b.gz', 'wb') as f:
    f.write(raw)
  np.testing.assert_array_equal(mnist.read_idx(str(tmp_path / 'a')), data)
  np.testing.assert_array_equal(mnist.read_idx(str(tmp_path / 'b.gz')), data)


def test_missing_data_says_both_ways_to_supply_it(tmp_path):
  with pytest.raises(driver.ConfigError, match='--mnist_dir.*tensorflow-datasets'):
    mnist.load('train', str(tmp_path))
  with pytest.raises(driver.ConfigError, match='--mnist_dir.*tensorflow-datasets'):
    mnist.load('train', str(tmp_path / 'nowhere'))
