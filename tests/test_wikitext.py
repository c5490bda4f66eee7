"""WikiText-2 rows, OPT tokenizer, blocks, tail measures, on the data directory's ($COLLAPSE_JAX_DATA)."""

import numpy as np
import pytest

from collapse_jax import data
from collapse_jax.core.validation import ConfigError  # `validation` here: the fixture, a split
from collapse_jax.data import wikitext


@pytest.fixture(scope='session')
def directory():
  return data.require('wikitext', parts=('validation', 'test'))  # fails when missing


@pytest.fixture(scope='session')
def validation(directory):
  return wikitext.read_split('validation', directory)


@pytest.fixture(scope='session')
def tok():
  return wikitext.tokenizer(data.require('opt-tokenizer'))


def test_reads_the_real_splits(validation, directory):
  test = wikitext.read_split('test', directory)
  assert (len(validation), len(test)) == (3_760, 4_358)  # the Hugging Face row counts
  assert all(isinstance(row, str) for row in validation + test)
  assert validation[:2] == ['', ' = Homarus gammarus = \n']
  assert all(row == '' or (row.endswith('\n') and row.strip()) for row in validation)


def test_raw_file_reads_the_same_rows_as_parquet(tmp_path, validation):
  rows = validation[:40]
  # The raw file holds blank lines as ' \n'; the Hugging Face builder made them ''.
  (tmp_path / 'wiki.valid.raw').write_text(''.join(row or ' \n' for row in rows), encoding='utf-8')
  assert wikitext.read_split('validation', str(tmp_path)) == rows


def test_tokenizer_prepends_bos_as_opt_does(tok):
  assert tok('Hello world')['input_ids'] == [2, 31414, 232]


def test_no_tokenizer_is_one_line_naming_the_flag(tmp_path):
  for path in (tmp_path, tmp_path / 'nowhere'):  # an empty directory; a path that is not there
    with pytest.raises(ConfigError) as raised:
      wikitext.tokenizer(str(path))
    assert str(raised.value).startswith('--tokenizer:') and '\n' not in str(raised.value)


def test_encode_lines_tokenises_each_row_on_its_own(tok, validation):
  rows = validation[:30]
  ids_N = wikitext.encode_lines(tok, rows)
  one_by_one = [i for row in rows for i in tok(row)['input_ids']]
  assert ids_N.dtype == np.int32 and ids_N.tolist() == one_by_one
  assert ids_N[0] == 2 and np.sum(ids_N == 2) >= len(rows)  # even an empty row gives its 2
  assert wikitext.encode_lines(tok, []).shape == (0,)


def test_blocks_drop_the_remainder():
  ids_BxL = wikitext.blocks(np.arange(11), length=4)
  assert ids_BxL.dtype == np.int32
  np.testing.assert_array_equal(ids_BxL, [[0, 1, 2, 3], [4, 5, 6, 7]])
  assert wikitext.blocks(np.arange(130)).shape == (2, 64)
  with pytest.raises(ConfigError, match='^--block:'):
    wikitext.blocks(np.arange(63))


def test_distinct_and_rare_tokens():
  ids_BxL = np.array([[9, 9, 9, 4], [4, 7, 5, 1]])  # counts: 1->1, 5->1, 7->1, 4->2, 9->3
  assert wikitext.distinct_tokens(ids_BxL) == 5
  np.testing.assert_array_equal(wikitext.rare_tokens(ids_BxL, 0.2), [1])  # ceil(0.2 * 5) = 1
  np.testing.assert_array_equal(wikitext.rare_tokens(ids_BxL, 0.5), [1, 5, 7])  # ties by id
  np.testing.assert_array_equal(wikitext.rare_tokens(ids_BxL, 0.8), [1, 5, 7, 4])
  np.testing.assert_array_equal(wikitext.rare_tokens(ids_BxL, 1.0), [1, 5, 7, 4, 9])
  many_BxL = np.arange(100)[None]
  assert wikitext.rare_tokens(many_BxL, 0.07).size == 7  # not 8 from 0.07 * 100 = 7.000000000000001


def test_rare_share():
  rare_R = np.array([1, 5, 7, 4])
  assert wikitext.rare_share(np.array([[1, 9, 9], [4, 4, 9]]), rare_R) == 0.5
  assert wikitext.rare_share(np.array([[9, 9]]), rare_R) == 0.0
  assert wikitext.rare_share(np.array([[7, 5, 4, 1]]), rare_R) == 1.0


def test_repeated_ngrams():
  assert wikitext.repeated_ngrams(np.arange(64).reshape(2, 32)) == 0.0
  loop_1x16 = np.array([[5, 6, 7, 8] * 4])  # 13 4-grams, the first 4 new, 9 repeats
  assert wikitext.repeated_ngrams(loop_1x16) == pytest.approx(9 / 13)
  # Repeats count within a block only: across blocks the second one would score 4/4, not 1/4.
  assert wikitext.repeated_ngrams(np.array([[1, 2, 3, 1, 2, 3], [1, 2, 3, 1, 2, 3]]), n=3) == 0.25
  assert wikitext.repeated_ngrams(np.array([[1, 2, 3, 4, 1, 2], [1, 2, 3, 4, 5, 6]]), n=2) == 0.1
  assert wikitext.repeated_ngrams(np.full((3, 10), 7), n=1) == pytest.approx(0.9)


def test_repeated_ngrams_equals_a_loop_over_blocks(tok, validation):
  ids_BxL = wikitext.blocks(wikitext.encode_lines(tok, validation[:200]))
  expected = []
  for row in ids_BxL.tolist():
    grams = [tuple(row[i:i + 4]) for i in range(len(row) - 3)]
    expected.append(np.mean([g in grams[:i] for i, g in enumerate(grams)]))
  assert wikitext.repeated_ngrams(ids_BxL) == pytest.approx(np.mean(expected))


def test_missing_data_is_one_line_naming_the_flag(tmp_path):
  for directory in (tmp_path / 'nowhere', tmp_path):
    with pytest.raises(ConfigError) as raised:
      wikitext.read_split('train', str(directory))
    message = str(raised.value)
    assert message.startswith('--data_dir:') and '\n' not in message
    assert 'wiki.train.raw' in message and 'collapse_jax.data download wikitext' in message
