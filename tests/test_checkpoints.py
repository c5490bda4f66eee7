"""Checkpoints that cannot lie: whatever a run saved and reads back is checked against its
digest; damage is named and routed around (an earlier step, or the thing computed again),
and the run ends as an undamaged one would."""

import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from collapse_jax.core import checkpoints, driver, protocol
from collapse_jax.families import lm, vae
from collapse_jax.families.lm import arrays, decoding, generations, inputs, measurement
from collapse_jax.nets import conv_vae, opt
from conftest import run_experiment


# ---------------------------------------------------------------- ways to damage a saved thing

def _files(path):
  """The files of a saved directory, or the file itself, without the digests."""
  if os.path.isfile(path):
    return [path]
  return [os.path.join(path, f) for f in checkpoints._files(path)]


def truncate(path):
  """Every file cut to half its length: a disk that filled up, a copy that stopped."""
  for f in _files(path):
    os.truncate(f, os.path.getsize(f) // 2)


def overwrite(path):
  """64 bytes in the middle of the largest file inverted: a bad sector, a stray write."""
  f = max(_files(path), key=os.path.getsize)
  middle = max(os.path.getsize(f) // 2 - 32, 0)
  with open(f, 'r+b') as out:
    out.seek(middle)
    data = out.read(64)
    out.seek(middle)
    out.write(bytes(b ^ 0xFF for b in data))


def unseal(path):
  """The digest lost: a run killed after the save committed and before its digest was written."""
  os.remove(os.path.join(path, checkpoints.MANIFEST) if os.path.isdir(path)
            else path + checkpoints.SUFFIX)


def _lines(err, *words):
  """The lines of stderr that hold every word."""
  return [line for line in err.splitlines() if all(w in line for w in words)]


def test_the_digest_names_what_changed(tmp_path):
  step = tmp_path / '3'
  (step / 'items').mkdir(parents=True)
  (step / 'items' / 'a').write_bytes(b'a' * 100)
  (step / 'b').write_bytes(b'b' * 10)
  single = tmp_path / 'x.npy'
  np.save(single, np.arange(5))
  for path in (step, single):
    checkpoints.seal(str(path))
    assert checkpoints.damage(str(path)) is None
  assert (step / checkpoints.MANIFEST).read_text().endswith('  items/a\n')  # sha256sum's format
  overwrite(str(step))
  assert checkpoints.damage(str(step)) == 'items/a has changed since it was saved'
  (step / 'c').write_bytes(b'')
  (step / 'b').unlink()
  assert checkpoints.damage(str(step)) == 'b is missing'
  truncate(str(single))
  assert checkpoints.damage(str(single)) == 'x.npy has changed since it was saved'
  with pytest.raises(checkpoints.Damaged, match=f'{single} is damaged'):
    checkpoints.checked(str(single))
  unseal(str(single))
  assert checkpoints.damage(str(single)).startswith('no digest')


# ---------------------------------------------------------------- the driver

SWEEP = protocol.Sweep('replace', seeds=2, generations=6, samples=50)  # steps 4 and 6 are kept


def _gaussian_family():
  """A 1-D Gaussian refitted on its own samples: the cheapest family to compile."""
  def fit(x_NxD, w_N, key):
    del key
    mu = w_N @ x_NxD[:, 0] / jnp.sum(w_N)
    return {'mu': mu, 'sd': jnp.sqrt(w_N @ (x_NxD[:, 0] - mu) ** 2 / jnp.sum(w_N))}, {}

  return protocol.Family(
      draw_real=lambda key, n: 1.0 + 2.0 * jax.random.normal(key, (n, 1)),
      fit=fit,
      sample=lambda p, key, n: p['mu'] + p['sd'] * jax.random.normal(key, (n, 1)),
      reference=lambda p0, key: {},
      evaluate=lambda p, x, ref: {'mu': p['mu'], 'sd': p['sd']})


_compile_sweep, _compiled = driver.compile_sweep, {}


def _compile_once(family, sweep, chunk, width=None, with_first=True):
  """driver.compile_sweep, once: every run here is the same sweep, and what is tested is
  what happens around its programs (both compiled, whichever a run asks for)."""
  del with_first
  if (sweep, chunk) not in _compiled:
    _compiled[sweep, chunk] = _compile_sweep(family, sweep, chunk, width)
  return _compiled[sweep, chunk]


def _run(directory):
  with pytest.MonkeyPatch.context() as m:
    m.setattr(driver, 'compile_sweep', _compile_once)
    return driver.run(_gaussian_family(), SWEEP, str(directory), 2, progress=False)


@pytest.fixture(scope='session')
def finished(tmp_path_factory):
  """A finished run's checkpoints and its metrics."""
  directory = tmp_path_factory.mktemp('finished') / 'checkpoints'
  return directory, _run(directory)


def _same(a, b):
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_truncated_last_step_falls_back_to_the_one_before(finished, tmp_path, capsys):
  """Without digests, this was a traceback from the OCDBT reader."""
  whole, metrics = finished
  directory = tmp_path / 'checkpoints'
  shutil.copytree(whole, directory)
  truncate(str(directory / '6'))
  _same(_run(directory), metrics)
  err = capsys.readouterr().err
  assert len(_lines(err, 'damaged')) == 1, err
  assert _lines(err, f'checkpoint step 6 at {directory / "6"} is damaged', 'resuming from step 4')
  assert checkpoints.damage(str(directory / '6')) is None  # saved again, and sealed
  assert sorted(os.listdir(directory)) == ['4', '6', '6.damaged']
  _same(_run(directory), metrics)  # the damaged copy set aside is no checkpoint to Orbax
  assert capsys.readouterr().err == ''


def test_every_step_damaged_starts_again_from_the_beginning(finished, tmp_path, capsys):
  whole, metrics = finished
  directory = tmp_path / 'checkpoints'
  shutil.copytree(whole, directory)
  unseal(str(directory / '6'))  # as a run killed before the digest of its last step
  overwrite(str(directory / '4'))
  _same(_run(directory), metrics)  # runs are deterministic from their keys
  err = capsys.readouterr().err
  assert len(_lines(err, 'no intact step is left: starting from the beginning')) == 2, err
  assert _lines(err, 'step 6', 'no digest')
  assert _lines(err, 'step 4', 'has changed since it was saved')


@pytest.mark.e2e
def test_the_command_line_names_a_damaged_step_on_one_line(tmp_path):
  """The GMM experiment, end to end: 64 bytes overwritten in the last step of a finished run
  (which, without digests, were read back in silence as 55 different rows of metrics.csv).
  The same command goes back a step and writes the same metrics.csv, byte for byte, with
  one line saying so and no traceback."""
  workdir = tmp_path / 'run'
  command = ['--seeds=2', '--generations=6', '--checkpoint_every=2', '--samples=50',
             '--heldout=50', f'--workdir={workdir}']
  first = run_experiment('gmm', *command)
  assert first.returncode == 0, first.stderr[-3000:]
  before = (workdir / 'metrics.csv').read_text()
  step = workdir / 'checkpoints' / 'replace' / '6'
  overwrite(str(step))
  again = run_experiment('gmm', *command)
  assert again.returncode == 0 and 'Traceback' not in again.stderr, again.stderr[-3000:]
  assert len(_lines(again.stderr, 'damaged')) == 1, again.stderr
  assert _lines(again.stderr, f'checkpoint step 6 at {step} is damaged', 'resuming from step 4')
  assert (workdir / 'metrics.csv').read_text() == before
  assert again.stdout == first.stdout


# ---------------------------------------------------------------- the VAE's classifier cache

def test_a_damaged_classifier_cache_is_trained_again(tmp_path, capsys, monkeypatch):
  path = str(tmp_path / 'classifier.npz')
  np.savez(path, **{'Dense_0/kernel': np.zeros((2, 2))})  # a cache, sealed, then damaged
  checkpoints.seal(path)
  overwrite(path)
  rng = np.random.default_rng(0)
  images, labels = rng.uniform(size=(256, conv_vae.PIXELS)).astype(np.float32), rng.integers(0, 10, 256)
  trained = vae.cached_classifier(path, images, labels)
  assert _lines(capsys.readouterr().err, f'{path} is damaged', 'training the classifier again')
  assert checkpoints.damage(path) is None  # written again, and sealed
  monkeypatch.setattr(vae, 'train_classifier', lambda *a: pytest.fail('trained an intact cache'))
  jax.tree.map(np.testing.assert_array_equal, vae.cached_classifier(path, images, labels), trained)
  assert capsys.readouterr().err == ''


# ---------------------------------------------------------------- the language model

@pytest.mark.e2e
def test_the_language_model_remakes_what_was_damaged(tmp_path, capsys, monkeypatch):
  """An epoch's training state, a model, a batch of generated blocks and their perplexities,
  all damaged: each is named and made again, the same. A micro OPT on random tokens keeps it
  fast; what is measured (measure, continuation) is beside the point here and stubbed."""
  config = opt.OPTConfig(**{**opt.TINY, 'vocab_size': 64, 'hidden_size': 16, 'ffn_dim': 32,
                            'word_embed_proj_dim': 16, 'num_hidden_layers': 1, 'dropout': 0.0})
  cfg = lm.LMConfig(model='tiny', seeds=1, generations=0, epochs=2, batch=4, eval_batch=4,
                    block=8, new_tokens=4, beams=2, gen_batch=4)
  ids = np.random.default_rng(0).integers(3, 64, (12, 8)).astype(np.int32)
  data = {'train': ids[:8], 'valid': ids[8:], 'tokenizer': None}
  params = arrays.stack([jax.jit(opt.init, static_argnums=0)(config, jax.random.key(0))])
  monkeypatch.setattr(inputs, 'start_model', lambda cfg, seeds: (config, params))
  monkeypatch.setattr(measurement, 'measure',
                      lambda *a: ([{'test_ppl': 1.0, 'generated_ppl_median': 1.0}],
                                  np.arange(8.0)[None], None))  # no scores
  monkeypatch.setattr(decoding, 'continuation', lambda *a: '')
  run = lambda: generations.run_seeds(cfg, 'replace', 0.0, [0], data, str(tmp_path),  # noqa: E731
                                      False, log=lambda *_: None)
  with monkeypatch.context() as m:  # keep the epoch states a finished generation deletes
    m.setattr(generations, 'shutil', types.SimpleNamespace(rmtree=lambda *a, **k: None))
    run()
  gen0 = tmp_path / 'seed_0' / 'gen_00'
  state = tmp_path / 'train_seeds_0-0' / 'gen_00' / str(cfg.epochs)
  saved = {p: p.read_bytes() for p in (gen0 / 'generated').glob('*.npy')}
  model = ocp.StandardCheckpointer().restore(str(gen0 / 'model'))
  capsys.readouterr()

  damaged = {state: truncate, gen0 / 'model': overwrite,
             gen0 / 'generated' / '00000004.npy': overwrite, gen0 / 'generated_ppl.npy': truncate}
  for path, damage in damaged.items():
    damage(str(path))
  run()
  err = capsys.readouterr().err
  assert len(_lines(err, 'damaged')) == len(damaged), err
  for path in damaged:
    assert _lines(err, f'{path} is damaged'), (path, err)
  for path in damaged.keys() - {state}:  # made again, and sealed (the state is done with)
    assert checkpoints.damage(str(path)) is None, path
  assert {p: p.read_bytes() for p in saved} == saved
  jax.tree.map(np.testing.assert_array_equal,
               ocp.StandardCheckpointer().restore(str(gen0 / 'model')), model)
