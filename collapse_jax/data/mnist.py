"""MNIST from the standard IDX files (gzip or not), in the data directory or a --mnist_dir."""

import gzip
import os
import zlib

import numpy as np

from collapse_jax.core import validation

FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
         'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}
HOW = ('pass --mnist_dir=DIR holding train-images-idx3-ubyte, train-labels-idx1-ubyte, '
       't10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (gzip or not), or leave it empty for '
       "the data directory's mnist/ (python -m collapse_jax.data status)")


def read_idx(path: str) -> np.ndarray:
  """An IDX array: magic (0, 0, type, ndim), big-endian uint32 dims, then the data."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    raw = f.read()
  if raw[:2] != b'\0\0' or raw[2] != 0x08:
    raise ValueError(f'{path} is not an IDX file of unsigned bytes')
  ndim = raw[3]
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes unsigned bytes as an IDX file (gzip if path ends in .gz), through a temporary file."""
  array = np.ascontiguousarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  with (gzip.open if path.endswith('.gz') else open)(path + '.part', 'wb') as f:
    f.write(header + array.tobytes())
  os.replace(path + '.part', path)


def _find(directory: str, name: str) -> str:
  for candidate in (name, name + '.gz'):
    path = os.path.join(directory, candidate)
    if os.path.exists(path):
      return path
  raise validation.ConfigError('mnist_dir', f'{name}[.gz] is not in {directory}; {HOW}')


def _read(directory: str, name: str) -> np.ndarray:
  """The IDX array `name`[.gz] in directory; ConfigError naming --mnist_dir if it cannot be read."""
  path = _find(directory, name)
  try:
    return read_idx(path)
  except (OSError, EOFError, ValueError, zlib.error) as e:  # unreadable, truncated, not IDX
    raise validation.ConfigError('mnist_dir',
                                 f'cannot read {path} ({type(e).__name__}: {e})') from None


def load(split: str, directory: str):
  """(images_Nx784 float32 in [0, 1], labels_N int32) of the 'train' or 'test' split."""
  if not os.path.isdir(directory):
    raise validation.ConfigError('mnist_dir', f'{directory} is not a directory; {HOW}')
  images_file, labels_file = FILES[split]
  images = _read(directory, images_file).reshape(-1, 784)
  labels = _read(directory, labels_file)
  return (images.astype(np.float32) / 255.0), labels.astype(np.int32)
