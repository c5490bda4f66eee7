"""The language-model generation loop on the real tokenizer and WikiText-2 (in the data directory,
$COLLAPSE_JAX_DATA), tiny sizes."""

import dataclasses
import inspect
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd
import pytest

from collapse_jax.core import knobs as knobs_module
from collapse_jax.core import regimes, results, validation
from collapse_jax.families import lm
from collapse_jax.families.lm import arrays, decoding, inputs, measurement, training
from collapse_jax.nets import opt, opt_train, opt_weights
from experiments import opt as opt_experiment

try:  # main.py's measure, by transformers' OPT; PyTorch is in the [test] extra on Python 3.11
  import torch
  import transformers
except ImportError:
  torch = None

CFG = lm.LMConfig(**{**lm.PRESETS['tiny'], 'generations': 2,
                     'regimes': ('replace',), 'train_blocks': 24, 'eval_blocks': 8, 'batch': 8,
                     'real_fractions': (0.0,), 'epochs': 2, 'block': 16, 'new_tokens': 16, 'beams': 2, 'gen_batch': 8,
                     'eval_batch': 8})


@pytest.fixture(scope='session')
def data():
  return inputs.load_data(CFG)


def quiet(*_):
  pass


def _main_py_perplexity(config, params, ids_NxL, directory) -> float:
  """main.py's score of a model on a set of blocks (--evalgen_only scores its training set):
  exp of the transformers OPT's loss, the mean next-token NLL, with labels = input_ids."""
  opt_weights.save(str(directory), config, params)
  model = transformers.OPTForCausalLM.from_pretrained(str(directory)).eval()
  ids = torch.as_tensor(np.asarray(ids_NxL, np.int64))
  with torch.no_grad():
    return float(np.exp(model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.item()))


@pytest.mark.e2e
def test_a_run_writes_its_tables_and_resumes_exactly(tmp_path, data, monkeypatch):
  measured = []  # each generation's model and the blocks its own_train_ppl was measured on
  measure = measurement.measure

  def spy(cfg, config, params_S, params0_S, data, train_SxNxL, new_SxNxT, pass_rate_S=None):
    measured.append((config, jax.tree.map(np.asarray, arrays.seed(params_S, 0)), train_SxNxL[0]))
    return measure(cfg, config, params_S, params0_S, data, train_SxNxL, new_SxNxT, pass_rate_S)
  monkeypatch.setattr(measurement, 'measure', spy)
  table = lm.run(CFG, str(tmp_path), progress=False, log=quiet)
  metrics = pd.read_csv(tmp_path / 'metrics.csv')

  # own_train_ppl is each model's perplexity on the blocks it was fine-tuned on, scored as
  # main.py does: the original blocks at generation 0, then the previous generation's text
  # as written to disk.
  seed_dir = tmp_path / 'replace' / 'seed_0'
  trained_on = [data['train']] + [
      np.concatenate([np.load(p) for p in sorted((seed_dir / f'gen_{g:02d}' / 'generated').glob('*.npy'))])
      for g in (0, 1)]
  assert len(measured) == 3
  for g, ((config, params, blocks), expected) in enumerate(zip(measured, trained_on)):
    np.testing.assert_array_equal(blocks, expected)
    if torch is not None:  # else test_opt_torch's parity, on the stack that has PyTorch
      np.testing.assert_allclose(metrics['own_train_ppl'][g],
                                 _main_py_perplexity(config, params, expected, tmp_path / f'hf_{g}'),
                                 rtol=1e-4, err_msg=f'generation {g}')

  assert len(metrics) == 3 and metrics['generation'].tolist() == [0, 1, 2]
  assert np.all(np.isfinite(metrics[list(measurement.METRICS)].to_numpy()))
  assert (metrics['test_ppl'] > 1).all() and metrics['distinct_tokens'].min() >= 1
  per_block = pd.read_csv(tmp_path / 'generated_perplexity.csv')
  assert len(per_block) == 3 * 24
  assert len(pd.read_csv(tmp_path / 'continuations.csv')) == 3
  for name in ('perplexity.png', 'tails.png', 'histograms.png', 'summary.txt'):
    assert (tmp_path / name).stat().st_size > 0
  before = (tmp_path / 'metrics.csv').read_text()

  # A run killed during generation 2's beam search: its model and a batch of prompts are
  # lost too. The rerun redoes only that and writes the same numbers.
  gen2 = tmp_path / 'replace' / 'seed_0' / 'gen_02'
  (gen2 / 'metrics.json').unlink()
  (gen2 / 'generated' / '00000008.npy').unlink()
  again = lm.run(CFG, str(tmp_path), progress=False, log=quiet)
  assert (tmp_path / 'metrics.csv').read_text() == before
  np.testing.assert_array_equal(again['test_ppl'], table['test_ppl'])

  # A finished run reloads without training anything.
  monkeypatch.setattr(training, 'fine_tune', lambda *a, **k: pytest.fail('retrained'))
  lm.run(CFG, str(tmp_path), progress=False, log=quiet)
  assert (tmp_path / 'metrics.csv').read_text() == before


@pytest.mark.e2e
def test_settings_share_generation_0(tmp_path, data):
  cfg = dataclasses.replace(CFG, generations=1, regimes=('replace', 'mix'), real_fractions=(0.5,))
  lm.run(cfg, str(tmp_path), progress=False, log=quiet)
  assert (tmp_path / 'mix_0.5' / 'seed_0' / 'gen_00').is_symlink()
  metrics = pd.read_csv(tmp_path / 'metrics.csv')
  first = metrics[metrics.generation == 0].drop(columns=['regime', 'real_fraction'])
  assert len(first) == 2 and (first.iloc[0] == first.iloc[1]).all()
  assert len(pd.read_csv(tmp_path / 'generated_perplexity.csv')) == 4 * 24
  # results.load reads the run as one table, with its settings as columns.
  table = results.load(tmp_path)
  assert (table['experiment'] == 'opt').all() and (table['model'] == 'tiny').all()
  pd.testing.assert_frame_equal(table[metrics.columns].astype({'seed': int}), metrics)


@pytest.mark.e2e
def test_seeds_run_together_as_they_do_one_at_a_time(tmp_path, data):
  cfg = dataclasses.replace(CFG, seeds=2, generations=1)
  alone = lm.run(dataclasses.replace(cfg, parallel_seeds=1), str(tmp_path / 'alone'), progress=False,
                 log=quiet)
  together = lm.run(dataclasses.replace(cfg, parallel_seeds=2), str(tmp_path / 'together'),
                    progress=False, log=quiet)
  for seed in (0, 1):  # the same text, token for token
    for g in (0, 1):
      gen = f'replace/seed_{seed}/gen_{g:02d}/generated/00000000.npy'
      np.testing.assert_array_equal(np.load(tmp_path / 'together' / gen),
                                    np.load(tmp_path / 'alone' / gen))
  # Perplexities agree to float32 rounding: XLA may sum a batch of 2 models in another order.
  for m in measurement.METRICS:
    np.testing.assert_allclose(together[m], alone[m], rtol=1e-5, err_msg=m)
  before = (tmp_path / 'together' / 'metrics.csv').read_text()

  # Killed with seed 0's generation 1 finished and seed 1's model not yet saved: the pair
  # trains again, and only what is missing is written.
  gen1 = tmp_path / 'together' / 'replace' / 'seed_1' / 'gen_01'
  (gen1 / 'metrics.json').unlink()
  shutil.rmtree(gen1 / 'model')
  lm.run(dataclasses.replace(cfg, parallel_seeds=2), str(tmp_path / 'together'), progress=False,
         log=quiet)
  assert (tmp_path / 'together' / 'metrics.csv').read_text() == before
  assert not list((tmp_path / 'together' / 'replace').glob('train_seeds_*'))


@pytest.mark.e2e
def test_seeds_that_run_out_of_memory_together_say_how_many_to_run(tmp_path, data, monkeypatch):
  def out_of_memory(*args, **kwargs):
    raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory allocating 2.3GiB')
  monkeypatch.setattr(training, 'fine_tune', out_of_memory)
  with pytest.raises(validation.ConfigError) as e:
    lm.run(dataclasses.replace(CFG, seeds=5, parallel_seeds=5), str(tmp_path), progress=False,
           log=quiet)
  assert e.value.flag == 'parallel_seeds' and '--parallel_seeds=2' in str(e.value)


@pytest.mark.e2e
def test_fine_tuning_killed_after_an_epoch_resumes_to_the_same_weights(tmp_path, data, monkeypatch):
  cfg = dataclasses.replace(CFG, schedule='cosine', min_learning_rate=1e-4)  # main.py's, per epoch
  config, params = inputs.start_model(cfg, [0, 1])
  ids = np.stack([data['train'], data['train'][::-1]])
  args = (cfg, config, params, ids, data['valid'], [jax.random.key(3), jax.random.key(4)])
  whole, losses = training.fine_tune(*args, str(tmp_path / 'a'), '', False)

  save = ocp.CheckpointManager.save

  def save_then_die(self, step, *a, **k):
    save(self, step, *a, **k)
    raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save_then_die)
  with pytest.raises(KeyboardInterrupt):
    training.fine_tune(*args, str(tmp_path / 'b'), '', False)
  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  resumed, resumed_losses = training.fine_tune(*args, str(tmp_path / 'b'), '', False)
  jax.tree.map(np.testing.assert_array_equal, resumed, whole)
  np.testing.assert_array_equal(resumed_losses, losses)
  assert np.all(np.isfinite(losses))


def test_training_sets_follow_the_regimes(data):
  x0 = data['train']
  generated = [np.full_like(x0, 100 + k) for k in range(3)]
  key = jax.random.key(0)
  assert inputs.training_set(CFG, 'replace', 0.0, 0, key, data, [])[0] is x0
  np.testing.assert_array_equal(inputs.training_set(CFG, 'replace', 0.0, 2, key, data, generated)[0],
                                generated[1])
  mixed = inputs.training_set(CFG, 'mix', 0.25, 1, key, data, generated)[0]
  real = np.array([any((row == r).all() for r in x0) for row in mixed])
  assert real.sum() == 6 and (mixed[~real] == 100).all()  # round(0.25 * 24) original blocks
  pooled = inputs.training_set(CFG, 'accumulate', 1.0, 2, key, data, generated)[0]  # age_decay 1
  assert len(pooled) == 3 * len(x0) and (pooled[-24:] == 101).all()
  sub = inputs.training_set(CFG, 'accumulate-subsample', 0.0, 2, key, data, generated)[0]
  assert len(sub) == len(x0) and not (sub == 102).all(axis=1).any()  # generation 2's is not yet made


def test_verify_curate_and_augment_choose_among_generated_blocks(data):
  x0 = data['train']
  generated = [np.stack([np.full(x0.shape[1], 100 + i) for i in range(2 * len(x0))])]
  scores = [np.arange(2.0 * len(x0))[::-1]]  # the first candidates score highest
  key = jax.random.key(0)
  kept, rate = inputs.training_set(CFG, 'verify', 0.5, 1, key, data, generated, scores)
  assert rate == 0.5 and sorted(kept[:, 0]) == list(range(100, 100 + len(x0)))
  chosen, rate = inputs.training_set(CFG, 'curate', 1e3, 1, key, data, generated, scores)
  assert rate == 1.0 and len(chosen) == len(x0)
  assert ((chosen[:, 0] - 100) % 2 == 0).all()  # of each pair (2i, 2i + 1), the likelier
  augmented, _ = inputs.training_set(CFG, 'augment', 0.25, 1, key, data, generated, scores)
  assert len(augmented) == len(x0) + 6 and (augmented[:len(x0)] == x0).all()
  assert inputs.candidate_blocks(CFG, 'verify', 0.5, 24) == 48
  assert inputs.candidate_blocks(CFG, 'curate', 1.0, 24) == 24 * CFG.candidates
  assert inputs.candidate_blocks(CFG, 'augment', 0.5, 24) == 24


@pytest.mark.e2e
def test_a_verified_run_ranks_blocks_by_the_first_models_likelihood(tmp_path, data):
  """Generation 1 trains on the likelier half, under generation 0's model, of twice as many
  sampled blocks as prompts (generation 0 shared with replace, which made half as many), and
  a resumed run is the same."""
  cfg = dataclasses.replace(CFG, generations=1, regimes=('replace', 'verify'), decoding='sample',
                            keep_fractions=(0.5,))
  lm.run(cfg, str(tmp_path), progress=False, log=quiet)
  table = pd.read_csv(tmp_path / 'metrics.csv')
  verify = table[table['regime'] == 'verify'].set_index('generation')
  scores = np.load(tmp_path / 'verify_0.5' / 'seed_0' / 'gen_00' / 'scores.npy')
  assert len(scores) == 48  # twice the 24 prompts
  np.testing.assert_allclose(verify.loc[1, 'train_score'], np.sort(scores)[24:].mean(), rtol=1e-5)
  np.testing.assert_allclose(verify.loc[0, 'sample_score'], scores[:24].mean(), rtol=1e-5)
  assert verify.loc[1, 'train_score'] > scores.mean()
  assert verify.loc[1, 'pass_rate'] == 0.5 and (table['score'] == 'gen0').all()
  first = (tmp_path / 'metrics.csv').read_text()
  shutil.rmtree(tmp_path / 'verify_0.5' / 'seed_0' / 'gen_01')
  lm.run(cfg, str(tmp_path), progress=False, log=quiet)
  assert (tmp_path / 'metrics.csv').read_text() == first
  with pytest.raises(validation.ConfigError, match='--decoding'):
    dataclasses.replace(cfg, decoding='beam').validate()
  with pytest.raises(validation.ConfigError, match="--score: 'truth' is not a score"):
    dataclasses.replace(cfg, score='truth').validate()


@pytest.mark.heavy  # three groups of a whole run
def test_sampling_knobs_are_groups_of_runs_with_their_own_folders_and_columns(tmp_path, data,
                                                                             monkeypatch):
  """--temperature=0.5,1,2: three groups, each in its own folder and with its value in every
  table, sharing generation 0's model (trained once) but not its text, decoded by one
  compiled program; hotter text is less likely under the generation-0 model."""
  cfg = dataclasses.replace(CFG, generations=1, decoding='sample', temperatures=(0.5, 1.0, 2.0))
  lm.run(cfg, str(tmp_path), progress=False, log=quiet)
  metrics = pd.read_csv(tmp_path / 'metrics.csv')
  assert metrics['temperature'].tolist() == [0.5, 1.0, 2.0] * 2
  assert metrics['generation'].tolist() == [0, 0, 0, 1, 1, 1]
  assert 'top_k' not in metrics and 'top_p' not in metrics
  for name in ('continuations.csv', 'generated_perplexity.csv'):
    table = pd.read_csv(tmp_path / name)
    named = 'replace_temperature_' + table['temperature'].map('{:g}'.format)
    assert (table['setting'] == named).all()
    assert table['temperature'].nunique() == 3
  assert 'temperature' in (tmp_path / 'summary.txt').read_text()

  gen0 = [tmp_path / f'replace_temperature_{t}' / 'seed_0' / 'gen_00' for t in ('0.5', '1', '2')]
  assert not gen0[0].is_symlink() and not (gen0[0] / 'model').is_symlink()
  assert all((g / 'model').is_symlink() and not g.is_symlink() for g in gen0[1:])
  first = metrics[metrics['generation'] == 0]
  assert first['test_ppl'].nunique() == 1  # one model
  text = [np.load(g / 'generated' / '00000000.npy') for g in gen0]
  assert not np.array_equal(text[0], text[1]) and not np.array_equal(text[1], text[2])
  assert first['generated_ppl_median'].is_monotonic_increasing
  config = opt.OPTConfig(**opt.TINY, dtype=cfg.dtype)
  assert decoding._continuer(cfg, config)._cache_size() == 1

  before = (tmp_path / 'metrics.csv').read_text()
  monkeypatch.setattr(training, 'fine_tune', lambda *a, **k: pytest.fail('retrained'))
  lm.run(cfg, str(tmp_path), progress=False, log=quiet)
  assert (tmp_path / 'metrics.csv').read_text() == before


def test_old_sampling_flags_are_one_value_sweeps_and_a_run_without_knobs_records_as_before():
  fv = opt_experiment.FLAGS
  fv.unparse_flags()
  fv(['opt', '--preset=tiny', '--decoding=sample', '--temperature=0.7', '--top_k=1,5,0'])
  cfg = opt_experiment.config()
  fv.unparse_flags()
  assert (cfg.temperatures, cfg.top_ks, cfg.top_ps) == ((0.7,), (1, 5, 0), (1.0,))
  assert [knobs for _, knobs in cfg.validate().sweep('replace', 0.0, 24).grid()] == [
      {'temperature': 0.7, 'top_k': k} for k in (1.0, 5.0, 0.0)]
  record = cfg.record()
  assert record['temperatures'] == [0.7] and record['top_ks'] == [1, 5, 0]
  assert record['top_p'] == 1.0 and 'temperature' not in record and 'top_ps' not in record
  # As LMConfig recorded its scalar sampling settings before they were knobs.
  plain = lm.LMConfig(**lm.PRESETS['tiny']).record()
  assert {k: plain[k] for k in ('temperature', 'top_k', 'top_p')} == {
      'temperature': 1.0, 'top_k': 0, 'top_p': 1.0}
  assert not set(plain) & set(knobs_module.FIELDS.values())
  assert 'parallel_seeds' not in plain and 'data_dir' not in plain


@pytest.mark.torch
def test_the_default_paper_preset_is_the_authors_main_py():
  """github.com/iliaishacked/curse_recurse: main.py's defaults (-lr 2e-5, -m 5, -b 128,
  -gen_percent 0.0, facebook/opt-125m, 64-token blocks in dataset.py), its generate(num_beams=5,
  max_new_tokens=64, min_new_tokens=64, repetition_penalty=3.0), and plt_model.py's
  torch.optim.AdamW(lr=lr) with CosineAnnealingLR(T_max=epochs, eta_min=1e-6), which
  Lightning steps once per epoch. Update these only if that code changes."""
  main_py = dict(model='facebook/opt-125m', learning_rate=2e-5, epochs=5, batch=128,
                 schedule='cosine', min_learning_rate=1e-6, warmup_steps=0, block=64,
                 decoding='beam', beams=5, new_tokens=64, repetition_penalty=3.0,
                 regimes=('replace',), real_fractions=(0.0,),
                 weight_decay=inspect.signature(torch.optim.AdamW).parameters['weight_decay'].default)
  assert list(lm.PRESETS)[0] == 'paper' and lm.PRESETS['paper'] == {}
  released = lm.LMConfig(**lm.PRESETS['paper'])
  assert {k: getattr(released, k) for k in main_py} == main_py
  # The paper's text keeps the Hugging Face Trainer's optimiser and no repetition penalty.
  trainer = dict(learning_rate=5e-5, batch=8, weight_decay=0.0, schedule='linear',
                 min_learning_rate=0.0, repetition_penalty=1.0)
  for name, extra in [('paper-text', dict(epochs=5, regimes=('replace',))),
                      ('paper-text-keep10', dict(epochs=10, regimes=('mix',), real_fractions=(0.1,)))]:
    cfg = lm.LMConfig(**lm.PRESETS[name])
    assert {k: getattr(cfg, k) for k in {**trainer, **extra}} == {**trainer, **extra}, name


@pytest.mark.torch
def test_the_cosine_schedule_is_cosine_annealing_stepped_once_per_epoch():
  """The official schedule equals its closed form and torch's CosineAnnealingLR stepped after
  every epoch (as Lightning does with main.py's scheduler), and AdamW follows it step by step."""
  train, steps = lm.LMConfig().train, 7  # 2e-5 down to 1e-6 over 5 epochs of 7 steps
  n = steps * train.epochs
  ours = np.asarray(opt_train.lr_schedule(train, n)(jnp.arange(n)))
  epoch = np.arange(n) // steps
  closed = 1e-6 + (2e-5 - 1e-6) * (1 + np.cos(np.pi * epoch / 5)) / 2
  np.testing.assert_allclose(ours, closed, rtol=1e-6)
  np.testing.assert_allclose(ours[[0, 6, 7, 34]], [2e-5, 2e-5, 1.8185661e-5, 2.8143379e-6], rtol=1e-6)

  p = torch.nn.Parameter(torch.zeros(1))
  adamw = torch.optim.AdamW([p], lr=2e-5)
  cosine = torch.optim.lr_scheduler.CosineAnnealingLR(adamw, T_max=5, eta_min=1e-6)
  reference = []
  for _ in range(train.epochs):
    reference += [adamw.param_groups[0]['lr']] * steps
    adamw.step()  # no gradient: nothing moves, but the scheduler's order is Lightning's
    cosine.step()
  np.testing.assert_allclose(ours, reference, rtol=1e-6)
  linear = np.asarray(opt_train.lr_schedule(dataclasses.replace(train, schedule='linear'), n)(
      jnp.arange(n)))
  assert np.abs(linear - ours).max() > 0.1 * 2e-5  # the Trainer's schedule is another one

  # Under a constant gradient at zero weights Adam's step is the learning rate itself (to
  # float32 rounding of its bias corrections).
  tx, params = opt_train.optimizer(train, n), jnp.zeros(1)
  state, grads, updates, step = tx.init(params), jnp.ones(1), [], jax.jit(tx.update)
  for _ in range(n):
    update, state = step(grads, state, params)
    updates.append(-float(update[0]))
  np.testing.assert_allclose(updates, ours, rtol=1e-4)


def test_blocks_are_ranked_only_by_the_models_own_likelihoods():
  """verify and curate rank blocks by a score in SCORES; one the language model lacks (a true
  density, a reward) is refused, naming --score."""
  ranked = dict(regimes=('verify',), decoding='sample')
  for score in lm.SCORES:
    dataclasses.replace(CFG, **ranked, score=score).validate()
  for score in set(regimes.SCORES) - set(lm.SCORES):
    with pytest.raises(validation.ConfigError) as e:
      dataclasses.replace(CFG, **ranked, score=score).validate()
    assert e.value.flag == 'score', score


@pytest.mark.parametrize('change, flag', [
    (dict(batch=0), 'batch'),
    (dict(schedule='step'), 'schedule'),
    (dict(min_learning_rate=1.0), 'min_learning_rate'),
    (dict(tokenizer='/no/such/dir'), 'tokenizer'),
    (dict(data_dir='/no/such/dir'), 'data_dir'),
    (dict(regimes=('mix',), real_fractions=(0.1,), new_tokens=8), 'new_tokens'),
    (dict(regimes=('sideways',)), 'regime'),
    (dict(temperatures=(0.5,)), 'temperature'),  # beam search
    (dict(decoding='greedy', top_ks=(5,)), 'top_k'),
    (dict(decoding='sample', top_ps=(0.5, 0.5000001)), 'top_p'),  # one folder
    (dict(decoding='sample', top_ks=(2, -1)), 'top_k'),
    (dict(decoding='sample', regimes=('mix',), real_fractions=(0.1,), real_weights=(0.5,)),
     'real_weight'),
    (dict(decoding='sample', verifier_shifts=(1.0,)), 'verifier_shift'),
])
def test_bad_flags_fail_in_one_line_before_anything_runs(tmp_path, change, flag):
  cfg = dataclasses.replace(CFG, **change)
  with pytest.raises(validation.ConfigError) as e:
    lm.run(cfg, str(tmp_path), progress=False, log=quiet)
  assert e.value.flag == flag and '\n' not in str(e.value)
  assert not os.listdir(tmp_path)
