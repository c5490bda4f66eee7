"""What the language model starts from and trains on: the tokenizer and WikiText-2's blocks,
the starting model for each seed, and each generation's training blocks under a regime."""

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax import data
from collapse_jax.core import regimes, validation
from collapse_jax.data import wikitext
from collapse_jax.families.lm import arrays
from collapse_jax.families.lm.config import LMConfig
from collapse_jax.nets import opt, opt_weights


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
      raise validation.ConfigError('train_blocks', f'{cfg.train_split} has {len(train)} blocks')
    train = train[:cfg.train_blocks]
  if len(train) < cfg.batch:
    raise validation.ConfigError('batch', f'is larger than the {len(train)} training blocks')
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
    return opt_weights.local_directory(cfg.model)
  except Exception as e:  # noqa: BLE001 (no hub, no such name: one line either way)
    raise validation.ConfigError('model', f'cannot find {cfg.model} ({type(e).__name__}); pass a '
                             'local Hugging Face OPT directory or --model=tiny') from None


def start_model(cfg: LMConfig, seeds):
  """(config, params_S) to fine-tune from, stacked over `seeds`: the pretrained weights
  for every seed, or a tiny OPT drawn from each seed."""
  if cfg.model == 'tiny':
    config = opt.OPTConfig(**opt.TINY, dtype=cfg.dtype)
    return config, arrays.stack([opt.init(config, jax.random.key(seed)) for seed in seeds])
  try:
    config, params = opt_weights.load(_model_dir(cfg), dtype=cfg.dtype)
  except (OSError, ValueError) as e:
    raise validation.ConfigError('model', f'cannot load {cfg.model}: {e}') from None
  return config, jax.tree.map(lambda x: jnp.broadcast_to(x, (len(seeds), *x.shape)), params)



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
