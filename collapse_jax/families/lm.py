"""The language-model experiment: OPT fine-tuned on WikiText-2, then on its own beam-search text.

Generation 0 fine-tunes the starting model on the original 64-token blocks and
keeps its best epoch by validation perplexity; it then continues every original
block by beam search, and those continuations are generation 1's training set
(mixed with real blocks as the regime says), and so on. A generation is a whole
training run, so generations run in a host loop. Seeds run together on an
accelerator (`seeds_at_once`): their parameters are stacked and every step is
vmapped over them, each seed on its own blocks in its own order. Batches and
prompts are split over every device (data parallel).

Everything a generation produces is on disk before the next starts, and a
killed run resumes at the last finished epoch or batch of prompts, drawing the
same random numbers: keys are folded from (seed, generation, epoch, step).
"""

import csv
import dataclasses
import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from collapse_jax import data
from collapse_jax.core import checkpoints, driver, plots, regimes, results
from collapse_jax.data import wikitext
from collapse_jax.nets import opt

# The paper's Example 1 prompt.
PROMPT = ('some started before 1360 \u2014 was typically accomplished by a master mason and a small '
          'team of itinerant masons, supplemented by local parish labourers, according to Poyntz '
          'Wright. But other authors reject this model, suggesting instead that leading architects '
          'designed the parish church towers based on early examples of Perpendicular')


DECODED = {'beam': 'beam-search', 'greedy': 'greedy', 'sample': 'sampled'}  # for titles


@dataclasses.dataclass(frozen=True)
class LMConfig(regimes.Options):
  """The language-model experiment; defaults are the authors' released code (main.py): the
  paper's no-original-data setting with main.py's optimiser, schedule and repetition penalty.

  verify and curate rank generated blocks by their mean token log-likelihood under the
  generation-0 model (gen0, the default) or the model being measured (self): the per-block
  perplexities the experiment reports. A regime that needs more blocks than there are prompts
  (verify, curate, augment with a ratio above 1) continues each prompt again, which takes
  --decoding=sample (beam search would repeat itself).
  """
  DEFAULT_SCORE = 'gen0'
  model: str = 'facebook/opt-125m'  # a hub name, a local HF directory, or 'tiny' (random, small)
  tokenizer: str = ''  # default: where the model is; for 'tiny', the data directory's opt-125m/
  data_dir: str = ''  # the data directory, or WikiText-2's own; empty: data.resolve's
  train_split: str = 'train'
  valid_split: str = 'validation'
  seeds: int = 5
  first_seed: int = 0
  parallel_seeds: int = 0  # seeds run at once (vmapped); 0: all, but one at a time on a CPU
  generations: int = 10  # after the first
  regimes: tuple[str, ...] = ('replace',)
  real_fractions: tuple[float, ...] = (0.0,)
  epochs: int = 5
  batch: int = 128
  learning_rate: float = 2e-5
  weight_decay: float = 0.01  # torch.optim.AdamW's default
  warmup_steps: int = 0
  schedule: str = 'cosine'  # per epoch, as main.py; or linear over the steps (the HF Trainer's)
  min_learning_rate: float = 1e-6  # where the schedule ends (CosineAnnealingLR's eta_min)
  block: int = 64
  new_tokens: int = 64
  beams: int = 5
  repetition_penalty: float = 3.0
  decoding: str = 'beam'  # beam (the paper), greedy, or sample (temperature, top_k, top_p)
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  from_previous: bool = False  # start generation n from generation n-1's weights, not the first
  train_blocks: int = 0  # use only the first this many training blocks (0: all)
  eval_blocks: int = 0  # validation and test blocks measured (0: all)
  eval_batch: int = 64
  gen_batch: int = 64
  prompt: str = PROMPT
  dtype: str = 'float32'

  def validate(self) -> 'LMConfig':
    driver.validate_sweep(self.seeds, self.generations, 1, self.regimes,
                          self.real_fractions, min_samples=1)  # the data's size: on loading
    devices = jax.device_count()
    checks = [
        ('epochs', self.epochs >= 1, 'must be at least 1'),
        ('batch', self.batch >= 1 and self.batch % devices == 0,
         f'must be a positive multiple of the {devices} devices'),
        ('eval_batch', self.eval_batch >= 1 and self.eval_batch % devices == 0,
         f'must be a positive multiple of the {devices} devices'),
        ('gen_batch', self.gen_batch >= 1 and self.gen_batch % devices == 0,
         f'must be a positive multiple of the {devices} devices'),
        ('learning_rate', self.learning_rate > 0, 'must be positive'),
        ('weight_decay', self.weight_decay >= 0, 'must be non-negative'),
        ('warmup_steps', self.warmup_steps >= 0, 'must be non-negative'),
        ('schedule', self.schedule in opt.SCHEDULES, f'must be one of {", ".join(opt.SCHEDULES)}'),
        ('min_learning_rate', 0 <= self.min_learning_rate <= self.learning_rate,
         f'must be in [0, --learning_rate ({self.learning_rate:g})]'),
        ('block', self.block >= 2, 'must be at least 2'),
        ('new_tokens', self.new_tokens >= 2, 'must be at least 2'),
        ('beams', self.beams >= 1, 'must be at least 1'),
        ('repetition_penalty', self.repetition_penalty > 0, 'must be positive'),
        ('decoding', self.decoding in ('beam', 'greedy', 'sample'), 'must be beam, greedy or sample'),
        ('temperature', self.temperature > 0, 'must be positive'),
        ('top_k', self.top_k >= 0, 'must be non-negative'),
        ('top_p', 0 < self.top_p <= 1, 'must be in (0, 1]'),
        ('train_blocks', self.train_blocks >= 0, 'must be non-negative'),
        ('eval_blocks', self.eval_blocks >= 0, 'must be non-negative'),
        ('train_split', self.train_split in wikitext.SPLITS, f'must be one of {wikitext.SPLITS}'),
        ('valid_split', self.valid_split in wikitext.SPLITS, f'must be one of {wikitext.SPLITS}'),
        ('dtype', self.dtype in ('float32', 'bfloat16'), 'must be float32 or bfloat16'),
        ('first_seed', self.first_seed >= 0, 'must be non-negative'),
        ('parallel_seeds', self.parallel_seeds >= 0, 'must be non-negative'),
        ('new_tokens', self.new_tokens == self.block
         or set(self.regimes) <= {'replace', 'verify', 'curate'},
         f'must equal --block ({self.block}) when generated blocks are mixed with original ones'),
        ('age_decays', tuple(self.age_decays) == (1.0,),
         'must be 1: the language model fine-tunes on its blocks unweighted'),
        ('decoding', self.decoding == 'sample' or not any(
            regimes.get(r).candidates(1000, self.values(r), self.candidates) > 1000
            for r in self.regimes if r in regimes.REGIMES),
         'must be sample for a regime that continues a prompt more than once (verify, curate, '
         'augment with a ratio above 1)')]
    driver.check_fields(self, checks)
    driver.validate_options(self, SCORING)
    return self

  def values(self, regime: str) -> tuple[float, ...]:
    """The values of a regime's parameter: one setting each."""
    return driver.Sweep(regime, 1, 1, 1, self.real_fractions, **self.sweep_fields(())).fractions

  def sweep(self, regime: str, value: float, blocks: int) -> driver.Sweep:
    """The runs of one setting (a regime and one value of its parameter) over `blocks` prompts."""
    parameter = regimes.get(regime).parameter
    fields = self.sweep_fields(self.regimes)
    fields['settings'] = tuple((p, (value,) if p == parameter else v) for p, v in fields['settings'])
    reals = (value,) if parameter == 'real_fraction' else (0.0,)
    return driver.Sweep(regime, self.seeds, self.generations, blocks, reals, self.first_seed,
                        **fields)

  @property
  def train(self) -> opt.TrainConfig:
    return opt.TrainConfig(self.learning_rate, self.batch, self.weight_decay, self.warmup_steps,
                           self.schedule, self.min_learning_rate, self.epochs)


# The released code (the defaults); the paper's text, whose two settings name no optimiser
# (these keep the Hugging Face Trainer's defaults) and no repetition penalty; and a CPU-sized
# run that needs nothing from the hub (OPT's tokenizer and WikiText-2's validation and test
# splits, from the data directory).
TRAINER = dict(learning_rate=5e-5, batch=8, weight_decay=0.0, schedule='linear', min_learning_rate=0.0)
PRESETS = {
    'official': {},
    'paper': dict(TRAINER, repetition_penalty=1.0),
    'keep10': dict(TRAINER, repetition_penalty=1.0, epochs=10, regimes=('mix',), real_fractions=(0.1,)),
    'tiny': dict(TRAINER, model='tiny', train_split='validation', valid_split='test', seeds=1,
                 generations=4, epochs=4, batch=16, learning_rate=3e-3, train_blocks=512,
                 eval_blocks=256, gen_batch=128, repetition_penalty=2.0,
                 regimes=('replace', 'mix'), real_fractions=(0.1,)),
}


# ----------------------------------------------------------------------------- data and model


def load_data(cfg: LMConfig):
  """The tokenizer and the original blocks: train, validation and test (ids_NxL int32)."""
  splits = list(dict.fromkeys((cfg.train_split, cfg.valid_split, 'test')))
  directory = data.require('wikitext', cfg.data_dir, splits)
  tok = wikitext.tokenizer(_tokenizer_dir(cfg))
  split = lambda name: wikitext.blocks(  # noqa: E731
      wikitext.encode_lines(tok, wikitext.read_split(name, directory)), cfg.block)
  train = split(cfg.train_split)
  if cfg.train_blocks:
    if cfg.train_blocks > len(train):
      raise driver.ConfigError('train_blocks', f'{cfg.train_split} has {len(train)} blocks')
    train = train[:cfg.train_blocks]
  if len(train) < cfg.batch:
    raise driver.ConfigError('batch', f'is larger than the {len(train)} training blocks')
  valid, test = split(cfg.valid_split), split('test')
  n = cfg.eval_blocks or len(test)
  # The first n validation blocks choose the epoch and the last n test blocks measure it, so
  # they never overlap, even when both are the test split.
  return {'tokenizer': tok, 'train': train, 'valid': valid[:n], 'test': test[-n:],
          'rare': wikitext.rare_tokens(train)}


def _tokenizer_dir(cfg: LMConfig) -> str:
  """--tokenizer, else the model's own; the random 'tiny' model has none: OPT's, in the data
  directory."""
  if cfg.tokenizer:
    return cfg.tokenizer
  return data.require('opt-tokenizer', cfg.data_dir) if cfg.model == 'tiny' else _model_dir(cfg)


def _model_dir(cfg: LMConfig) -> str:
  try:
    return opt.local_directory(cfg.model)
  except Exception as e:  # noqa: BLE001 (no hub, no such name: one line either way)
    raise driver.ConfigError('model', f'cannot find {cfg.model} ({type(e).__name__}); pass a '
                             'local Hugging Face OPT directory or --model=tiny') from None


def start_model(cfg: LMConfig, seeds):
  """(config, params_S) to fine-tune from, stacked over `seeds`: the pretrained weights
  for every seed, or a tiny OPT drawn from each seed."""
  if cfg.model == 'tiny':
    config = opt.OPTConfig(**opt.TINY, dtype=cfg.dtype)
    return config, _stack([opt.init(config, jax.random.key(seed)) for seed in seeds])
  try:
    config, params = opt.load(_model_dir(cfg), dtype=cfg.dtype)
  except (OSError, ValueError) as e:
    raise driver.ConfigError('model', f'cannot load {cfg.model}: {e}') from None
  return config, jax.tree.map(lambda x: jnp.broadcast_to(x, (len(seeds), *x.shape)), params)


def _stack(trees):
  return jax.tree.map(lambda *x: jnp.stack(x), *trees)


def _seed(tree_S, s: int):
  """Seed s's slice of a stacked tree."""
  return jax.tree.map(lambda x: x[s], tree_S)


def _mesh():
  return driver.mesh('data')


def _split(x):
  """Rows (the second-last axis: ..., rows, tokens) over the devices (data parallel)."""
  x = np.asarray(x)
  return driver.place(x, 'data', dim=x.ndim - 2)


def _replicated(tree):
  """The same values on every device of every process."""
  sharding = NamedSharding(_mesh(), PartitionSpec())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  host = lambda x: driver.to_host(x) if isinstance(x, jax.Array) else np.asarray(x)  # noqa: E731
  return jax.tree.map(lambda x: jax.make_array_from_callback(
      np.shape(x), sharding, lambda index, v=host(x): v[index]), tree)


def _like(tree):
  """Abstract arrays with the shapes, types and shardings of `tree`: a target to restore onto."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _chunks(ids, size: int):
  """Fixed-size chunks of the rows of ids (..., rows, tokens), the last padded by repeating
  its final row, and each one's real rows."""
  for start in range(0, ids.shape[-2], size):
    part = ids[..., start:start + size, :]
    pad = [(0, 0)] * (ids.ndim - 2) + [(0, size - part.shape[-2]), (0, 0)]
    yield start, np.pad(part, pad, 'edge'), part.shape[-2]


@functools.partial(jax.jit, static_argnames='config')
def _seeds_block_nll(config, params_S, ids_SxBxL):
  return jax.vmap(functools.partial(opt.block_nll, config))(params_S, ids_SxBxL)


def block_nll(config, params_S, ids, batch: int):
  """nll_SxN: every block's mean next-token negative log-likelihood under each seed's model;
  the blocks are the same for every seed (ids_NxL) or each seed's own (ids_SxNxL)."""
  s = jax.tree.leaves(params_S)[0].shape[0]
  ids_SxNxL = np.broadcast_to(ids, (s, *ids.shape[-2:]))
  out = [driver.to_host(_seeds_block_nll(config, params_S, _split(x)))[:, :n]
         for _, x, n in _chunks(ids_SxNxL, batch)]
  return np.concatenate(out, axis=1)


# What verify and curate can rank blocks by (regimes.available_scores reads it): the
# models' own per-block log-likelihoods (self, gen0); no true density, no reward.
SCORING = driver.Family(draw_real=None, fit=None, sample=None, reference=None, evaluate=None,
                        log_density=block_nll)


# ----------------------------------------------------------------------------- one generation


@functools.lru_cache(maxsize=4)
def _trainer(config: opt.OPTConfig, train: opt.TrainConfig, total_steps: int):
  """The optimiser and the compiled step over stacked seeds, shared by generations of the same length."""
  tx = opt.optimizer(train, total_steps)
  return tx, opt.make_train_step(config, tx, stacked=True)


def fine_tune(cfg: LMConfig, config, params_S, ids_SxNxL, valid_NxL, keys, directory: str,
              desc: str, progress: bool):
  """Each seed's parameters at its epoch with the lowest validation loss, and every epoch's
  validation loss (losses_SxE). Seeds train together, each on its own blocks (ids_SxNxL) in
  the order drawn from its own key.

  The state is saved after each epoch in `directory`, and a restarted call goes on from there.
  """
  seeds, n = ids_SxNxL.shape[:2]
  steps = n // cfg.batch
  tx, step_fn = _trainer(config, cfg.train, steps * cfg.epochs)
  params = _replicated(params_S)
  state = {'params': params, 'opt': _replicated(jax.vmap(tx.init)(params)), 'best': params,
           'losses': np.full((seeds, cfg.epochs), np.nan, np.float32)}
  manager = checkpoints.manager(directory, keep=1)  # a damaged epoch is moved aside, then redone
  done = manager.latest_step() or 0
  if done:  # onto the same shardings
    state = manager.restore(done, args=ocp.args.StandardRestore(
        {**_like({k: v for k, v in state.items() if k != 'losses'}), 'losses': state['losses']}))
  # Training donates its buffers: work on a copy, so the caller's parameters (the
  # pretrained ones, reused by every generation) and the best epoch's survive.
  params, opt_state, best = jax.tree.map(jnp.copy, state['params']), state['opt'], state['best']
  losses = np.array(driver.to_host(state['losses']))
  bar = tqdm(total=steps * cfg.epochs, initial=steps * done, desc=desc,
             disable=not progress or not driver.is_primary(), leave=False)
  for epoch in range(done, cfg.epochs):
    order_keys, step_keys = zip(*(jax.random.split(jax.random.fold_in(k, epoch)) for k in keys))
    order_SxN = np.stack([np.asarray(jax.random.permutation(k, n)) for k in order_keys])
    step_key_S = jnp.stack(step_keys)
    for s in range(steps):
      rows_SxB = order_SxN[:, s * cfg.batch:(s + 1) * cfg.batch]
      batch = _split(np.take_along_axis(ids_SxNxL, rows_SxB[:, :, None], axis=1))
      params, opt_state, loss_S = step_fn(params, opt_state, batch, _fold_in(step_key_S, s))
      bar.update()
      if s % 20 == 0:
        bar.set_postfix(loss=' '.join(f'{x:.3f}' for x in driver.to_host(loss_S)), refresh=False)
    losses[:, epoch] = block_nll(config, params, valid_NxL, cfg.eval_batch).mean(axis=1)
    better_S = losses[:, epoch] <= np.nanmin(losses, axis=1)
    best = jax.tree.map(lambda b, p: jnp.where(better_S.reshape(-1, *[1] * (p.ndim - 1)), p, b),
                        best, params)  # new buffers: the step donates params'
    checkpoints.save(manager, epoch + 1, ocp.args.StandardSave(
        {'params': params, 'opt': opt_state, 'best': best, 'losses': losses}))
  bar.close()
  manager.close()
  return best, losses


_fold_in = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))  # (key_S, data) -> key_S


def _decode(cfg: LMConfig, config, params, prompt_BxT, key):
  """new_BxN of full (unpadded) prompts, by the configured decoding."""
  mask = jnp.ones_like(prompt_BxT)
  if cfg.decoding == 'beam':
    return opt.beam_search(config, params, prompt_BxT, mask, cfg.new_tokens, cfg.beams,
                           cfg.repetition_penalty)
  return opt.sample(config, params, prompt_BxT, mask, key, cfg.new_tokens, cfg.repetition_penalty,
                    0.0 if cfg.decoding == 'greedy' else cfg.temperature, cfg.top_k, cfg.top_p)


def continue_prompts(cfg: LMConfig, config, params_S, prompt_BxT, key_S):
  """new_SxBxN: every seed's continuations of the same full (unpadded) prompts, each
  device continuing its own rows."""
  return _continuer(cfg, config)(params_S, prompt_BxT, key_S)


@functools.lru_cache(maxsize=4)
def _continuer(cfg: LMConfig, config: opt.OPTConfig):
  def local(params_S, prompt_BxT, key_S):
    key_S = _fold_in(key_S, jax.lax.axis_index('data'))
    return jax.vmap(lambda p, k: _decode(cfg, config, p, prompt_BxT, k))(params_S, key_S)
  replicated = PartitionSpec()
  return jax.jit(jax.shard_map(local, mesh=_mesh(),
                               in_specs=(replicated, PartitionSpec('data'), replicated),
                               out_specs=PartitionSpec(None, 'data'), check_vma=False))


def regenerate(cfg: LMConfig, config, params_S, prompts_NxL, key_S, directories, desc: str,
               progress: bool):
  """new_SxNxT: each seed's continuation of every prompt, seed s's saved in directories[s]
  batch by batch as they finish; a restarted call generates only the missing batches."""
  for directory in directories:
    os.makedirs(directory, exist_ok=True)
  out = []
  chunks = list(_chunks(prompts_NxL, cfg.gen_batch))
  for start, prompt, n in tqdm(chunks, desc=desc, disable=not progress or not driver.is_primary(),
                               leave=False):
    paths = [os.path.join(directory, f'{start:08d}.npy') for directory in directories]
    if all([checkpoints.intact(path, 'generating it again') for path in paths]):
      saved = [np.load(path) for path in paths]  # a setting with more candidates may save more
      if all(len(x) >= n for x in saved):
        out.append(np.stack([x[:n] for x in saved]))
        continue
    out.append(driver.to_host(continue_prompts(cfg, config, params_S, _split(prompt),
                                               _fold_in(key_S, start)))[:, :n].astype(np.int32))
    for path, new in zip(paths, out[-1]):
      _save_npy(path, new)  # the same as any a killed run left
  return np.concatenate(out, axis=1)


def _save_npy(path: str, array):
  """Writes an array, then its digest (checkpoints.seal)."""
  results.write_file(path, lambda f: np.save(f, array), binary=True)
  checkpoints.seal(path)


def _measured(gdirs, candidates: int) -> bool:
  """Whether every seed's generation has its metrics, and perplexities (and scores of
  `candidates` blocks, where there is a score) that match their digest."""
  def scored(d):
    path = os.path.join(d, 'scores.npy')
    return not candidates or (checkpoints.intact(path, 'measuring it again')
                              and len(np.load(path)) >= candidates)
  return all([os.path.exists(os.path.join(d, 'metrics.json'))
              and checkpoints.intact(os.path.join(d, 'generated_ppl.npy'), 'measuring it again')
              and scored(d) for d in gdirs])


def _write_json(path: str, value):
  results.write_file(path, lambda f: json.dump(value, f, indent=1))


def continuation(cfg: LMConfig, config, params, tok) -> str:
  """The model's continuation of the fixed prompt."""
  ids = _replicated(np.asarray(tok(cfg.prompt)['input_ids'], np.int32)[None])
  new = _decode(cfg, config, params, ids, jax.random.key(0))
  return tok.decode(driver.to_host(new)[0])


def training_set(cfg: LMConfig, regime: str, value: float, g: int, key, data, generated,
                 scores=None):
  """Generation g's training blocks and the share of candidates kept: the original blocks,
  or the regime's policy applied to the blocks generated so far (`generated[k]` was written
  by generation k, `scores[k]` ranks them, for verify and curate)."""
  x0 = data['train']
  if g == 0:
    return x0, 1.0
  reg = regimes.get(regime)
  pool = np.concatenate([x0] + [x[:len(x0)] for x in generated[:g]]) if reg.keeps_pool else None
  # With a finite corpus, fresh real blocks are drawn from the original ones with replacement.
  draw_real = lambda k, n: x0[np.asarray(jax.random.randint(k, (n,), 0, len(x0)))]  # noqa: E731
  pools = regimes.Pools(jnp.asarray(x0), jnp.asarray(generated[g - 1]),
                        None if pool is None else jnp.asarray(pool), draw_real)
  rows, weight, metrics = regimes.apply(reg, pools, g, key, jnp.float32(value),
                                        None if scores is None else jnp.asarray(scores[g - 1]))
  return np.asarray(rows)[np.asarray(weight) > 0], float(metrics.get('pass_rate', 1.0))


def candidate_blocks(cfg: LMConfig, regime: str, value: float, blocks: int) -> int:
  """Blocks a generation generates: one per prompt, or as many as the regime draws."""
  return max(blocks, regimes.get(regime).candidates(blocks, (value,), cfg.candidates))


def measure(cfg, config, params_S, params0_S, data, train_SxNxL, new_SxCxT, pass_rate_S=None):
  """Each seed's generation metrics (a list of dicts), generated-block perplexities
  (ppl_SxN, the first block of each prompt) and, where the run has a score, every
  generated block's (scores_SxC): test perplexity, perplexity on the blocks the model was
  fine-tuned on (train_SxNxL; main.py's --evalgen_only), and the generated blocks under
  the seed's generation-0 model. The scores are mean token log-likelihoods under the
  generation-0 model (gen0) or this one (self); train_score and sample_score average them
  over the training blocks and the generated ones, beside pass_rate, the share of
  candidates kept."""
  n = len(data['train'])
  score = cfg.active_score(cfg.regimes)
  new_SxNxT = new_SxCxT[:, :n]
  test_nll_SxN = block_nll(config, params_S, data['test'], cfg.eval_batch)
  own_nll_SxN = block_nll(config, params_S, train_SxNxL, cfg.eval_batch)
  gen_nll_SxC = block_nll(config, params0_S, new_SxCxT if score == 'gen0' else new_SxNxT,
                          cfg.eval_batch)
  gen_ppl_SxN = np.exp(gen_nll_SxC[:, :n])
  scores_SxC, extra = None, [{} for _ in gen_nll_SxC]
  if score is not None:
    scores_SxC = -(gen_nll_SxC if score == 'gen0' else block_nll(config, params_S, new_SxCxT,
                                                                  cfg.eval_batch))
    train_SxN = own_nll_SxN if score == 'self' else block_nll(config, params0_S, train_SxNxL,
                                                               cfg.eval_batch)
    extra = [{'train_score': float(-t.mean()), 'sample_score': float(c[:n].mean()),
              'pass_rate': float(p)}
             for t, c, p in zip(train_SxN, scores_SxC, pass_rate_S)]

  def one(test_nll_N, own_nll_N, gen_ppl_N, new_NxT):
    test_ppl_N = np.exp(test_nll_N)
    return {'test_ppl': float(np.exp(test_nll_N.mean())),
            'test_ppl_block_mean': float(test_ppl_N.mean()),
            'test_ppl_block_sd': float(test_ppl_N.std()),
            'own_train_ppl': float(np.exp(own_nll_N.mean())),
            'generated_ppl_median': float(np.median(gen_ppl_N)),
            'distinct_tokens': wikitext.distinct_tokens(new_NxT),
            'rare_share': wikitext.rare_share(new_NxT, data['rare']),
            'repeated_4grams': wikitext.repeated_ngrams(new_NxT, 4)}
  return ([{**one(*x), **e} for *x, e in zip(test_nll_SxN, own_nll_SxN, gen_ppl_SxN, new_SxNxT,
                                              extra)], gen_ppl_SxN, scores_SxC)


# ----------------------------------------------------------------------------- the experiment


def run_seeds(cfg: LMConfig, regime: str, value: float, seeds, data, directory: str,
              progress: bool = True, log=print):
  """All generations of `seeds` under a regime and its parameter's value, trained and
  decoded together, seed s's in directory/seed_<s>; returns each seed's metrics (a list per
  seed of a dict per generation)."""
  config, pretrained = start_model(cfg, seeds)
  pretrained = _replicated(pretrained)
  one_seed = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=x.sharding),
                          pretrained)  # a target to restore a seed's model onto
  seed_keys = [jax.random.key(seed) for seed in seeds]
  label = f'seed {seeds[0]}' + (f'-{seeds[-1]}' if len(seeds) > 1 else '')
  train_dir = os.path.join(directory, f'train_seeds_{seeds[0]}-{seeds[-1]}')  # a generation's epochs
  ckptr = ocp.StandardCheckpointer()
  rows, generated = [[] for _ in seeds], [[] for _ in seeds]  # generated[s][k]: by generation k
  scores = [[] for _ in seeds]  # scores[s][k]: of generated[s][k], where the run has a score
  blocks = len(data['train'])
  candidates = candidate_blocks(cfg, regime, value, blocks)
  scored = cfg.active_score(cfg.regimes) is not None
  prompts = data['train'][np.arange(candidates) % blocks]  # prompt c continued by block c
  params0, params = None, pretrained
  for g in range(cfg.generations + 1):
    gdirs = [os.path.join(directory, f'seed_{seed}', f'gen_{g:02d}') for seed in seeds]
    data_keys, train_keys, gen_keys = zip(*(jax.random.split(jax.random.fold_in(k, g), 3)
                                            for k in seed_keys))
    model_dirs = [os.path.abspath(os.path.join(d, 'model')) for d in gdirs]
    metrics_paths = [os.path.join(d, 'metrics.json') for d in gdirs]
    measured = _measured(gdirs, candidates if scored else 0)
    needs_params = not measured or g == 0 or cfg.from_previous
    models_ok = [needs_params and checkpoints.intact(m, 'training it again') for m in model_dirs]
    # Generation g's training blocks, for fine-tuning and for measuring the model on them.
    def own_blocks():
      sets = [training_set(cfg, regime, value, g, k, data, gen, sc if scored else None)
              for k, gen, sc in zip(data_keys, generated, scores)]
      return np.stack([ids for ids, _ in sets]), [rate for _, rate in sets]
    ids_SxNxL, pass_rate_S = None, None
    if needs_params and not all(models_ok):
      ids_SxNxL, pass_rate_S = own_blocks()
      start = params if cfg.from_previous else pretrained
      params, losses_SxE = fine_tune(cfg, config, start, ids_SxNxL, data['valid'], train_keys,
                                     os.path.join(train_dir, f'gen_{g:02d}'), f'{label} gen {g} train',
                                     progress)
      for s, gdir in enumerate(gdirs):
        if not models_ok[s]:
          os.makedirs(gdir, exist_ok=True)
          _write_json(os.path.join(gdir, 'train.json'),
                      {'valid_nll': losses_SxE[s].tolist(), 'blocks': ids_SxNxL.shape[1]})
          # atomic: a killed save leaves no model; force: a damaged one is replaced
          ckptr.save(model_dirs[s], _seed(params, s), force=True)
          ckptr.wait_until_finished()
          checkpoints.seal(model_dirs[s])
    elif needs_params:
      params = _replicated(_stack([ckptr.restore(m, one_seed) for m in model_dirs]))
    shutil.rmtree(os.path.join(train_dir, f'gen_{g:02d}'), ignore_errors=True)  # done with
    if g == 0:
      params0 = params
    new_SxCxT = regenerate(cfg, config, params, prompts, jnp.stack(gen_keys),
                           [os.path.join(d, 'generated') for d in gdirs], f'{label} gen {g} generate',
                           progress)
    for gen, new in zip(generated, new_SxCxT):
      gen.append(new)
    if not measured:
      if ids_SxNxL is None:  # a resumed run rebuilds them
        ids_SxNxL, pass_rate_S = own_blocks()
      metrics, gen_ppl_SxN, scores_SxC = measure(cfg, config, params, params0, data, ids_SxNxL,
                                                 new_SxCxT, pass_rate_S)
      for s, gdir in enumerate(gdirs):
        with open(os.path.join(gdir, 'train.json')) as f:
          losses = np.asarray(json.load(f)['valid_nll'])
        metrics[s].update(valid_ppl=float(np.exp(np.nanmin(losses))),
                          best_epoch=int(np.nanargmin(losses)) + 1,
                          continuation=continuation(cfg, config, _seed(params, s), data['tokenizer']))
        _save_npy(os.path.join(gdir, 'generated_ppl.npy'), gen_ppl_SxN[s].astype(np.float32))
        if scored:
          _save_npy(os.path.join(gdir, 'scores.npy'), scores_SxC[s].astype(np.float32))
        _write_json(metrics_paths[s], metrics[s])
    driver.barrier(f'{directory} {label} generation {g}')  # process 0 has written what the others read
    if scored:
      for sc, gdir in zip(scores, gdirs):
        sc.append(np.load(checkpoints.checked(os.path.join(gdir, 'scores.npy')))[:candidates])
    for seed, path, seed_rows in zip(seeds, metrics_paths, rows):
      with open(path) as f:
        metrics = json.load(f)
      seed_rows.append({'generation': g, **metrics})
      log(f'{regime} {value:g} seed {seed} gen {g}: test ppl {metrics["test_ppl"]:.1f}, '
          f'generated ppl (gen-0 model) median {metrics["generated_ppl_median"]:.1f}')
  if driver.is_primary():
    shutil.rmtree(train_dir, ignore_errors=True)  # empty: every generation has trained
  return rows


METRICS = ('test_ppl', 'test_ppl_block_mean', 'test_ppl_block_sd', 'valid_ppl', 'best_epoch',
           'own_train_ppl', 'generated_ppl_median', 'distinct_tokens', 'rare_share', 'repeated_4grams')
SCORE_METRICS = ('train_score', 'sample_score', 'pass_rate')  # where the run has a score


def run(cfg: LMConfig, workdir: str, progress: bool = True, log=print):
  """Runs, resumes or reloads the experiment in `workdir`; returns its metrics table.

  Leaves there: config.json; <regime>[_<value>]/seed_<s>/gen_<g>/ with the best
  weights (Orbax), the generated blocks, their perplexities under the generation-0
  model (and their scores, for a run with one) and the metrics; metrics.csv (a row per
  regime x value of its parameter x seed x generation), generated_perplexity.csv (a row per generated block),
  continuations.csv, perplexity.png, histograms.png, tails.png and summary.txt.
  """
  cfg.validate()
  data = load_data(cfg)  # missing data or tokenizer fail here, before anything is written
  # Where things are and how many seeds run at once, not what the run is.
  where = {'tokenizer', 'data_dir', 'parallel_seeds'}
  driver.check_config(workdir, {k: v for k, v in json.loads(json.dumps(
      dataclasses.asdict(cfg))).items() if k not in where})
  log(f'{len(data["train"])} training blocks of {cfg.block} tokens, {len(data["valid"])} '
      f'validation, {len(data["test"])} test; {jax.device_count()} {jax.default_backend()} device(s)')

  # -- every setting x seed: a host loop over generations
  sweeps, hist, texts, first_name = [], [], [], None
  metric_names = METRICS + (SCORE_METRICS if cfg.active_score(cfg.regimes) else ())
  for regime in cfg.regimes:
    reg = regimes.get(regime)
    for value in cfg.values(regime):
      name = regime if reg.quiet(value) else f'{regime}_{value:g}'
      real = value if reg.parameter == 'real_fraction' else 0.0
      first_name = first_name or name
      seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
      if name != first_name:
        for seed in seeds:
          _share_first_generation(os.path.join(workdir, first_name, f'seed_{seed}'),
                                  os.path.join(workdir, name, f'seed_{seed}'))
      together, per_seed = seeds_at_once(cfg), []
      for i in range(0, cfg.seeds, together):
        try:
          per_seed += run_seeds(cfg, regime, value, seeds[i:i + together], data,
                                os.path.join(workdir, name), progress, log)
        except jax.errors.JaxRuntimeError as e:
          if 'RESOURCE_EXHAUSTED' not in str(e) or together == 1:
            raise
          raise driver.ConfigError(
              'parallel_seeds', f'{together} seeds at once ran out of device memory; rerun with '
              f'--parallel_seeds={together // 2}, which resumes where this run stopped') from None
      for seed, rows in zip(seeds, per_seed):
        for row in rows:
          ppl = np.load(checkpoints.checked(os.path.join(
              workdir, name, f'seed_{seed}', f'gen_{row["generation"]:02d}', 'generated_ppl.npy')))
          hist.append((regime, real, name, seed, row['generation'], ppl))
          texts.append((regime, real, name, seed, row['generation'], row['continuation']))
      sweep = cfg.sweep(regime, value, len(data['train']))
      metrics = {m: np.array([[rows[g][m] for rows in per_seed] for g in range(cfg.generations + 1)],
                             np.float64) for m in metric_names}
      sweeps.append((sweep, metrics))

  # -- tables, figures, summary
  table = results.long_table(sweeps, first=metric_names)
  results.write_csv(table, os.path.join(workdir, 'metrics.csv'))
  # setting: the regime and its parameter's value, as the run's folder is named
  _write_rows(os.path.join(workdir, 'continuations.csv'),
              ('regime', 'real_fraction', 'setting', 'seed', 'generation', 'text'), texts)
  _write_rows(os.path.join(workdir, 'generated_perplexity.csv'),
              ('regime', 'real_fraction', 'setting', 'seed', 'generation', 'block', 'perplexity'),
              [(*head, i, f'{p:.6g}') for *head, ppl in hist for i, p in enumerate(ppl)])
  curves = results.over_seeds(sweeps)
  plots.curves(curves, [('test_ppl', 'test perplexity', True),
                        ('generated_ppl_median', 'median perplexity of generated blocks\n'
                         'under the generation-0 model', True)],
               os.path.join(workdir, 'perplexity.png'),
               title=f'{cfg.model} fine-tuned on its own {DECODED[cfg.decoding]} text, '
                     f'{cfg.seeds} seed(s)')
  plots.curves(curves, [('distinct_tokens', 'distinct tokens generated', False),
                        ('rare_share', "share of the corpus's rarest 10% of tokens\nstill generated",
                         False),
                        ('repeated_4grams', 'repeated 4-grams within a block', False)],
               os.path.join(workdir, 'tails.png'), title='Tails of the generated text')
  plots.perplexity_histograms([(name, *rest) for _, _, name, *rest in hist],
                              os.path.join(workdir, 'histograms.png'))
  text = results.summary(curves, ('test_ppl', 'generated_ppl_median', 'distinct_tokens',
                                  'rare_share', 'repeated_4grams'), generations=(1, 5))
  results.write_text(os.path.join(workdir, 'summary.txt'), text + '\n')
  log(text)
  return table


def seeds_at_once(cfg: LMConfig) -> int:
  """Seeds vmapped together: --parallel_seeds, else all of them, except one at a time on a CPU,
  where a step over 2 stacked OPT-125m takes 2.33x one's (benchmarks/RESULTS.md)."""
  if cfg.parallel_seeds:
    return min(cfg.parallel_seeds, cfg.seeds)
  return 1 if jax.default_backend() == 'cpu' else cfg.seeds


def _share_first_generation(source: str, directory: str):
  """Links generation 0 of a finished setting into another: it trains on the original data
  with the seed's keys whatever the regime, so it is the same run."""
  link = os.path.join(directory, 'gen_00')
  if driver.is_primary() and not os.path.lexists(link):
    os.makedirs(directory, exist_ok=True)
    os.symlink(os.path.relpath(os.path.join(source, 'gen_00'), directory), link)
  driver.barrier(f'{link} shared')


def _write_rows(path: str, header, rows):
  results.write_file(path, lambda f: csv.writer(f).writerows([header, *rows]))
