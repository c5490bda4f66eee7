"""Unusable paths and odd inputs: one line naming the flag, before anything compiles.

Tests run as root, for whom permission bits do not stop a write; /proc (which no one may
write in) and a file standing where a directory should be are the honest unwritable paths.
"""

import os

import pytest

from collapse_jax.core import driver, validation
from collapse_jax.data import mnist, wikitext
from collapse_jax.families import discrete
from conftest import run_experiment

needs_proc = pytest.mark.skipif(not os.path.isdir('/proc/self'), reason='needs Linux /proc')


def _one_line(raised, flag: str) -> str:
  message = str(raised.value)
  assert message.startswith(f'--{flag}: ') and '\n' not in message, message
  return message


@needs_proc
def test_workdir_that_cannot_be_created_is_refused():
  with pytest.raises(validation.ConfigError) as raised:
    validation.check_config('/proc/nope/run', {'seeds': 1})
  assert 'cannot create directory /proc/nope/run' in _one_line(raised, 'workdir')


@needs_proc
def test_workdir_that_cannot_be_written_is_refused():
  with pytest.raises(validation.ConfigError) as raised:
    validation.check_config('/proc/self', {'seeds': 1})  # a directory, writable by no one
  assert 'cannot write in /proc/self' in _one_line(raised, 'workdir')


def test_a_file_in_the_way_is_refused_naming_the_flag(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(validation.ConfigError) as raised:
    validation.check_config(str(blocker), {'seeds': 1})
  assert 'exists and is not a directory' in _one_line(raised, 'workdir')
  with pytest.raises(validation.ConfigError) as raised:
    validation.check_config(str(blocker / 'run'), {'seeds': 1})
  assert 'cannot create directory' in _one_line(raised, 'workdir')
  with pytest.raises(validation.ConfigError) as raised:
    validation.writable_dir('classifier_cache', str(blocker))
  _one_line(raised, 'classifier_cache')


def test_a_usable_workdir_is_made_and_left_with_only_the_config(tmp_path):
  workdir = tmp_path / 'a' / 'b'
  validation.check_config(str(workdir), {'seeds': 1})
  assert os.listdir(workdir) == ['config.json']  # the write probe is gone
  validation.check_config(str(workdir), {'seeds': 1})  # and the run resumes there


def test_a_config_json_without_the_experiments_name_resumes_but_refuses_other_flags(tmp_path):
  (tmp_path / 'config.json').write_text('{"seeds": 1}')  # as runs recorded it before the name
  validation.check_config(str(tmp_path), {'seeds': 1, 'experiment': 'gmm'})
  with pytest.raises(validation.ConfigError) as raised:
    validation.check_config(str(tmp_path), {'seeds': 2, 'experiment': 'gmm'})
  _one_line(raised, 'seeds')


def test_an_unreadable_config_json_names_the_workdir(tmp_path):
  (tmp_path / 'config.json').write_text('{"seeds": 1')
  with pytest.raises(validation.ConfigError) as raised:
    validation.check_config(str(tmp_path), {'seeds': 1})
  assert 'config.json' in _one_line(raised, 'workdir')


@pytest.mark.parametrize('probs', [(0.5, float('nan')), (0.5, float('inf')), (1e308, 1e308)])
def test_probabilities_that_are_not_finite_are_refused(probs):
  with pytest.raises(validation.ConfigError) as raised:
    discrete.DiscreteConfig(probs=probs).validate()
  _one_line(raised, 'probs')


class _Stop(Exception):
  pass


def _stop(*args, **kwargs):
  raise _Stop


def test_probabilities_not_summing_to_one_are_divided_by_their_sum_with_a_note(
    tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(driver, 'run', _stop)  # the note comes before anything compiles
  cfg = discrete.DiscreteConfig(seeds=2, generations=3, samples=(10,), probs=(0.5, 0.6))
  with pytest.raises(_Stop):
    discrete.run(cfg, str(tmp_path / 'off'), progress=False)
  note = 'note: --probs sum to 1.1, not 1; each is divided by that sum\n'
  assert capsys.readouterr().err == note
  assert cfg.true_probs() == pytest.approx([0.5 / 1.1, 0.6 / 1.1])
  with pytest.raises(_Stop):
    discrete.run(discrete.DiscreteConfig(**{**vars(cfg), 'probs': (0.1, 0.2, 0.7)}),
                 str(tmp_path / 'exact'), progress=False)
  assert capsys.readouterr().err == ''


def test_unreadable_mnist_files_name_the_flag(tmp_path):
  (tmp_path / 'train-images-idx3-ubyte').mkdir()  # a directory where the file should be
  with pytest.raises(validation.ConfigError) as raised:
    mnist.load('train', str(tmp_path))
  assert 'cannot read' in _one_line(raised, 'mnist_dir')
  (tmp_path / 'train-images-idx3-ubyte').rmdir()
  (tmp_path / 'train-images-idx3-ubyte.gz').write_bytes(b'not gzip')
  with pytest.raises(validation.ConfigError) as raised:
    mnist.load('train', str(tmp_path))
  assert 'cannot read' in _one_line(raised, 'mnist_dir')


def test_unreadable_wikitext_file_names_the_flag(tmp_path):
  (tmp_path / 'wiki.valid.raw').write_bytes(b'\xff\xfe not utf-8\n')
  with pytest.raises(validation.ConfigError) as raised:
    wikitext.read_split('validation', str(tmp_path))
  assert 'cannot read' in _one_line(raised, 'data_dir')


@needs_proc
def test_command_line_with_an_unusable_workdir_is_one_line_exit_2():
  proc = run_experiment('gmm', '--workdir=/proc/nope', '--preset=small')
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: --workdir: '), proc.stderr
  assert 'Traceback' not in proc.stderr
