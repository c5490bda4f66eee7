"""WikiText-2 (raw) rows, the OPT tokenizer, 64-token blocks, tail measures of tokenised text."""

import glob
import itertools
import math
import os

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from collapse_jax.core import validation

SPLITS = ('train', 'validation', 'test')
RAW_FILES = {'train': 'wiki.train.raw', 'validation': 'wiki.valid.raw', 'test': 'wiki.test.raw'}
HOW = ('pass --data_dir=DIR holding SPLIT-*.parquet files with a text column, as the Hugging '
       'Face dataset wikitext/wikitext-2-raw-v1 serves them, or the raw files wiki.train.raw, '
       'wiki.valid.raw and wiki.test.raw, or DIR/wikitext-2-raw-v1/ holding them; '
       '`python -m collapse_jax.data download wikitext` fetches them')


def _why(e: Exception) -> str:
  """The exception's type and first line, so a ConfigError stays one line."""
  lines = str(e).strip().splitlines()
  return f'{type(e).__name__}: {lines[0][:200]}' if lines else type(e).__name__


def _read_parquet(paths: list[str]) -> list[str]:
  """The text column of these Parquet files, concatenated in order."""
  import pyarrow.parquet as pq  # noqa: PLC0415 (only needed for Parquet)
  rows = []
  for path in paths:
    try:
      rows += pq.read_table(path, columns=['text']).column('text').to_pylist()
    except (OSError, ValueError, KeyError) as e:  # ArrowInvalid is a ValueError
      raise validation.ConfigError(
          'data_dir', f'cannot read the text column of {path} ({_why(e)}); {HOW}') from None
  return rows


def _read_raw(path: str) -> list[str]:
  """Lines keeping their '\\n', blank ones '': the rows Hugging Face's builder made of this file."""
  try:
    with open(path, encoding='utf-8') as f:
      return [row if row.strip() else '' for row in f]
  except (OSError, UnicodeDecodeError) as e:
    raise validation.ConfigError('data_dir', f'cannot read {path} ({_why(e)}); {HOW}') from None


def read_split(split: str, directory: str) -> list[str]:
  """Rows of WikiText-2 (raw) 'train', 'validation' or 'test': lines with their '\\n', or ''."""
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; choose from {", ".join(SPLITS)}')
  if not os.path.isdir(directory):
    raise validation.ConfigError('data_dir', f'{directory} is not a directory; {HOW}')
  parquet = sorted(glob.glob(os.path.join(glob.escape(directory), f'{split}-*.parquet')))
  if parquet:
    return _read_parquet(parquet)
  raw = os.path.join(directory, RAW_FILES[split])
  if os.path.isfile(raw):
    return _read_raw(raw)
  raise validation.ConfigError(
      'data_dir', f'neither {split}-*.parquet nor {RAW_FILES[split]} is in {directory}; {HOW}')


def tokenizer(path: str):
  """The tokenizer at a directory or hub name, prepending BOS as OPT does ('</s>' = 2 there)."""
  try:
    from transformers import AutoTokenizer  # noqa: PLC0415 (heavy; only text experiments need it)
    return AutoTokenizer.from_pretrained(path, add_bos_token=True)
  except Exception as e:  # noqa: BLE001 (any failure means: no tokenizer there)
    raise validation.ConfigError(
        'tokenizer', f'cannot load a tokenizer from {path} ({_why(e)})') from None


def encode_lines(tok, lines) -> np.ndarray:
  """ids_N int32: each row tokenised on its own (so each starts with BOS), concatenated in order."""
  lines = list(lines)
  if not lines:
    return np.zeros(0, np.int32)
  ids = tok(lines)['input_ids']
  count = sum(len(row) for row in ids)
  return np.fromiter(itertools.chain.from_iterable(ids), np.int32, count=count)


def blocks(ids_N: np.ndarray, length: int = 64) -> np.ndarray:
  """ids_BxL int32: consecutive blocks of `length` tokens, the remainder dropped."""
  ids_N = np.asarray(ids_N).reshape(-1)
  if length < 1 or ids_N.size < length:
    raise validation.ConfigError(
        'block', f'blocks of {length} tokens need at least that many, got {ids_N.size}')
  b = ids_N.size // length
  return ids_N[:b * length].reshape(b, length).astype(np.int32)


def distinct_tokens(ids_BxL: np.ndarray) -> int:
  """How many different token ids occur: the vocabulary a corpus still uses."""
  return int(np.unique(ids_BxL).size)


def rare_tokens(ids_BxL: np.ndarray, fraction: float = 0.1) -> np.ndarray:
  """ids_R: the rarest `fraction` of the occurring ids, by (count, id) ascending: the tail."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'fraction must be in (0, 1], got {fraction}')
  ids_V, counts_V = np.unique(ids_BxL, return_counts=True)  # ids_V ascending
  order_V = np.argsort(counts_V, kind='stable')  # ties keep id order
  r = math.ceil(round(fraction * ids_V.size, 9))  # round: 0.07 * 100 is 7.000000000000001
  return ids_V[order_V[:r]]


def rare_share(ids_BxL: np.ndarray, rare_R: np.ndarray) -> float:
  """The fraction of the rare ids that still occur at least once in ids_BxL."""
  rare_R = np.asarray(rare_R)
  if rare_R.size == 0:
    raise ValueError('rare_R is empty')
  return float(np.isin(rare_R, ids_BxL).mean())


def repeated_ngrams(ids_BxL: np.ndarray, n: int = 4) -> float:
  """Mean over blocks of the share of its n-grams seen earlier in it: 0 fresh, near 1 a loop."""
  b, length = ids_BxL.shape
  if not 1 <= n <= length:
    raise ValueError(f'n must be in [1, {length}], got {n}')
  w = length - n + 1
  grams_MxN = sliding_window_view(ids_BxL, n, axis=1).reshape(b * w, n)
  keyed_MxK = np.concatenate([np.repeat(np.arange(b), w)[:, None], grams_MxN], axis=1)
  order_M = np.lexsort(keyed_MxK.T[::-1])  # stable: equal n-grams stay in position order
  sorted_MxK = keyed_MxK[order_M]
  repeat_M = np.zeros(b * w, bool)
  repeat_M[order_M[1:]] = (sorted_MxK[1:] == sorted_MxK[:-1]).all(axis=1)
  return float(repeat_M.mean())  # every block has w n-grams, so this is the mean over blocks
