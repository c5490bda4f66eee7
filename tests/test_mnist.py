"""MNIST from IDX files: the real files in the data directory ($COLLAPSE_JAX_DATA), and clear errors."""

import gzip

import numpy as np
import pytest

from collapse_jax import data
from collapse_jax.core import validation
from collapse_jax.data import mnist


def test_reads_the_real_files():
  directory = data.require('mnist')  # fails, naming where it looked, when the data is missing
  x, y = mnist.load('train', directory)
  assert x.shape == (60_000, 784) and x.dtype == np.float32
  assert 0.0 == x.min() and x.max() == 1.0
  np.testing.assert_array_equal(y[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])  # MNIST's first labels
  x, y = mnist.load('test', directory)
  assert x.shape == (10_000, 784) and np.bincount(y).tolist()[:3] == [980, 1135, 1032]


def test_plain_and_gzip_files_read_the_same(tmp_path):
  data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  raw = bytes([0, 0, 8, 3]) + b''.join(d.to_bytes(4, 'big') for d in data.shape) + data.tobytes()
  (tmp_path / 'a').write_bytes(raw)
  with gzip.open(tmp_path / 'b.gz', 'wb') as f:
    f.write(raw)
  np.testing.assert_array_equal(mnist.read_idx(str(tmp_path / 'a')), data)
  np.testing.assert_array_equal(mnist.read_idx(str(tmp_path / 'b.gz')), data)


def test_written_idx_files_read_back(tmp_path):
  data_3x2 = np.arange(6, dtype=np.uint8).reshape(3, 2)
  for name in ('a', 'b.gz'):
    mnist.write_idx(str(tmp_path / name), data_3x2)
    np.testing.assert_array_equal(mnist.read_idx(str(tmp_path / name)), data_3x2)


def test_missing_files_say_both_ways_to_supply_them(tmp_path):
  with pytest.raises(validation.ConfigError, match='--mnist_dir.*leave it empty'):
    mnist.load('train', str(tmp_path))
  with pytest.raises(validation.ConfigError, match='--mnist_dir.*leave it empty'):
    mnist.load('train', str(tmp_path / 'nowhere'))
