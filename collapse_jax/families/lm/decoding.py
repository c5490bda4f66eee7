"""Decoding with the language model: every seed's continuations of the same prompts, split over
the devices, by beam search, greedy decoding or sampling; saved batch by batch, so that a
restarted run generates only what is missing."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec
from tqdm.auto import tqdm

from collapse_jax.core import checkpoints, placement
from collapse_jax.families.lm import arrays, records
from collapse_jax.nets import opt, opt_decode


def _decode(cfg, config, params, prompt_BxT, key, knobs):
  """new_BxN of full (unpadded) prompts, by the configured decoding; sampled under the
  sampling knobs `knobs` ({name: traced value}, those the group sets)."""
  mask = jnp.ones_like(prompt_BxT)
  if cfg.decoding == 'beam':
    return opt_decode.beam_search(config, params, prompt_BxT, mask, cfg.new_tokens, cfg.beams,
                                  cfg.repetition_penalty)
  return opt_decode.sample(config, params, prompt_BxT, mask, key, cfg.new_tokens,
                           cfg.repetition_penalty, 0.0 if cfg.decoding == 'greedy' else 1.0,
                           knobs=knobs)


def continue_prompts(cfg, config, params_S, prompt_BxT, key_S, knob_values=None):
  """new_SxBxN: every seed's continuations of the same full (unpadded) prompts, each
  device continuing its own rows, sampled under `knob_values` ({name: value}, the sampling
  knobs the group sets: arguments of one compiled program, whatever their values)."""
  knobs = {k: jnp.float32(v) for k, v in (knob_values or {}).items()}
  return _continuer(cfg, config)(params_S, prompt_BxT, key_S, knobs)


@functools.lru_cache(maxsize=4)
def _continuer(cfg, config: opt.OPTConfig):
  def local(params_S, prompt_BxT, key_S, knobs):
    key_S = arrays.fold_in(key_S, jax.lax.axis_index('data'))
    return jax.vmap(lambda p, k: _decode(cfg, config, p, prompt_BxT, k, knobs))(params_S, key_S)
  replicated = PartitionSpec()
  return jax.jit(jax.shard_map(local, mesh=arrays.mesh(),
                               in_specs=(replicated, PartitionSpec('data'), replicated, replicated),
                               out_specs=PartitionSpec(None, 'data'), check_vma=False))


def regenerate(cfg, config, params_S, prompts_NxL, key_S, directories, desc: str,
               progress: bool, knob_values=None):
  """new_SxNxT: each seed's continuation of every prompt (under the sampling knobs'
  `knob_values`), seed s's saved in directories[s] batch by batch as they finish; a restarted
  call generates only the missing batches."""
  for directory in directories:
    os.makedirs(directory, exist_ok=True)
  out = []
  chunks = list(arrays.chunks(prompts_NxL, cfg.gen_batch))
  for start, prompt, n in tqdm(chunks, desc=desc, disable=not progress or not placement.is_primary(),
                               leave=False):
    paths = [os.path.join(directory, f'{start:08d}.npy') for directory in directories]
    if all([checkpoints.intact(path, 'generating it again') for path in paths]):
      saved = [np.load(path) for path in paths]  # a setting with more candidates may save more
      if all(len(x) >= n for x in saved):
        out.append(np.stack([x[:n] for x in saved]))
        continue
    new_SxBxT = continue_prompts(cfg, config, params_S, arrays.split(prompt),
                                 arrays.fold_in(key_S, start), knob_values)
    out.append(placement.to_host(new_SxBxT)[:, :n].astype(np.int32))
    for path, new in zip(paths, out[-1]):
      records.save_npy(path, new)  # the same as any a killed run left
  return np.concatenate(out, axis=1)


def continuation(cfg, config, params, tok, knob_values=None) -> str:
  """The model's continuation of the fixed prompt (under the sampling knobs' `knob_values`)."""
  ids = arrays.replicated(np.asarray(tok(cfg.prompt)['input_ids'], np.int32)[None])
  knobs = {k: jnp.float32(v) for k, v in (knob_values or {}).items()}
  new = _decode(cfg, config, params, ids, jax.random.key(0), knobs)
  return tok.decode(placement.to_host(new)[0])
