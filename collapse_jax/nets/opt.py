"""OPT in Flax: the decoder, Hugging Face checkpoints in and out, a KV cache, beam search and training.

Parameters keep Hugging Face's names (`q_proj`, `fc1`, `self_attn_layer_norm`, ...);
the layers are one `nn.scan`, so every layer parameter has a leading layer axis
and the network compiles once, whatever its depth. Tokens are ids_BxS with a
mask_BxS (1 for a real token); prompts are padded on the left, as for `generate`.
"""

import dataclasses
import functools
import glob
import json
import os
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

POSITION_OFFSET = 2  # OPT's learned positions start at row 2 of their table
NEG = -1e9  # the score of a beam that is not there


@dataclasses.dataclass(frozen=True)
class OPTConfig:
  """The fields of a Hugging Face OPT `config.json` that shape the network."""
  vocab_size: int = 50272
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  ffn_dim: int = 3072
  max_position_embeddings: int = 2048
  word_embed_proj_dim: int = 768
  do_layer_norm_before: bool = True
  remove_final_layer_norm: bool = False
  layer_norm_elementwise_affine: bool = True
  enable_bias: bool = True
  activation_function: str = 'relu'
  dropout: float = 0.1
  attention_dropout: float = 0.0
  init_std: float = 0.02
  pad_token_id: int = 1
  bos_token_id: int = 2
  eos_token_id: int = 2
  dtype: str = 'float32'  # compute dtype; parameters stay float32

  @classmethod
  def from_hf(cls, hf: dict, **overrides):
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {k: v for k, v in hf.items() if k in names}
    fields['remove_final_layer_norm'] = hf.get('_remove_final_layer_norm', False)
    fields.setdefault('word_embed_proj_dim', hf.get('hidden_size', cls.hidden_size))
    fields.pop('dtype', None)
    return cls(**{**fields, **overrides})

  def to_hf(self) -> dict:
    hf = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
          if f.name not in ('dtype', 'remove_final_layer_norm')}
    hf.update(_remove_final_layer_norm=self.remove_final_layer_norm, model_type='opt',
              architectures=['OPTForCausalLM'], activation_dropout=0.0, layerdrop=0.0,
              tie_word_embeddings=True, use_cache=True, torch_dtype='float32')
    return hf

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


# A small OPT for CPU runs and tests: the real vocabulary, a toy network.
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=256,
            word_embed_proj_dim=64, max_position_embeddings=256)


# ----------------------------------------------------------------------------- the network


def _dense(config: OPTConfig, features: int, name: str, bias: bool = True):
  return nn.Dense(features, use_bias=bias and config.enable_bias, dtype=config.dtype,
                  kernel_init=nn.initializers.normal(config.init_std), name=name)


def _norm(config: OPTConfig, name: str):
  affine = config.layer_norm_elementwise_affine
  return nn.LayerNorm(epsilon=1e-5, use_bias=affine, use_scale=affine, dtype=config.dtype, name=name)


class Beams(NamedTuple):
  """What the queries of a beam-search step see, in place of a mask.

  Each layer's cache is then (prompt k, prompt v, generated k, generated v): the
  prompt's BxHxDxT and BxHxTxD, shared by a row's W beams, and the generated tokens'
  BxHxDxNxW and BxHxNxWxD, where the beam in row w writes its token n to slot (n, w)
  and nothing moves afterwards. A beam's history is spread over the rows of its ancestors, which
  `from_BxWxNxW` names: [b, w, n, r] is True when beam w's token n lies in row r.
  """
  prompt_mask_BxT: jax.Array
  from_BxWxNxW: jax.Array

  def follow(self, parent_BxW, n):
    """The beams after each took its parent's history and wrote token n in its own row."""
    w = parent_BxW.shape[1]
    from_ = jnp.take_along_axis(self.from_BxWxNxW, parent_BxW[:, :, None, None], axis=1)
    return self._replace(from_BxWxNxW=from_.at[:, :, n].set(jnp.eye(w, dtype=bool)))


def _beam_attention(q_BWx1xHxD, k_BWxHx1xD, v_BWxHx1xD, cache, beams: Beams, index):
  """Attention of one new token per beam over the shared prompt and the beam's own history
  (see Beams); the token's k and v go to slot `index` of its row. Scores against every row
  of the same prompt, all but the ancestors' masked out: no cache is gathered.
  Heads lead, after the batch, so that every product is a plain batched matmul; keys are
  stored transposed (see new_cache), and a token's W rows side by side, so that each write
  is one contiguous run per head dimension."""
  prompt_k, prompt_v, k_BxHxDxNxW, v_BxHxNxWxD = cache
  b, w = beams.from_BxWxNxW.shape[:2]
  h, d = q_BWx1xHxD.shape[2:]
  n, t = v_BxHxNxWxD.shape[2], prompt_v.shape[2]
  k_BxHxDx1xW = k_BWxHx1xD.reshape(b, w, h, d).transpose(0, 2, 3, 1)[:, :, :, None]
  v_BxHx1xWxD = v_BWxHx1xD.reshape(b, w, h, d).transpose(0, 2, 1, 3)[:, :, None]
  k_BxHxDxNxW = jax.lax.dynamic_update_slice(k_BxHxDxNxW, k_BxHxDx1xW.astype(k_BxHxDxNxW.dtype),
                                             (0, 0, 0, index, 0))
  v_BxHxNxWxD = jax.lax.dynamic_update_slice(v_BxHxNxWxD, v_BxHx1xWxD.astype(v_BxHxNxWxD.dtype),
                                             (0, 0, index, 0, 0))
  from_Bx1xWxNW = beams.from_BxWxNxW.reshape(b, 1, w, n * w)
  q_BxHxWxD = q_BWx1xHxD.reshape(b, w, h, d).transpose(0, 2, 1, 3)
  low = jnp.finfo(jnp.float32).min
  s_prompt = jnp.einsum('bhwd,bhdt->bhwt', q_BxHxWxD, prompt_k).astype(jnp.float32)
  s_prompt = jnp.where(beams.prompt_mask_BxT[:, None, None, :], s_prompt, low)
  s_rows = jnp.einsum('bhwd,bhdk->bhwk', q_BxHxWxD, k_BxHxDxNxW.reshape(b, h, d, n * w))
  s_rows = jnp.where(from_Bx1xWxNW, s_rows.astype(jnp.float32), low)  # k: (slot, row)
  p = jax.nn.softmax(jnp.concatenate([s_prompt, s_rows], axis=-1), axis=-1).astype(prompt_v.dtype)
  out_BxHxWxD = jnp.einsum('bhwt,bhtd->bhwd', p[..., :t], prompt_v) + jnp.einsum(
      'bhwk,bhkd->bhwd', p[..., t:], v_BxHxNxWxD.reshape(b, h, n * w, d))
  out = out_BxHxWxD.transpose(0, 2, 1, 3).reshape(b * w, 1, h, d)
  return out, (prompt_k, prompt_v, k_BxHxDxNxW, v_BxHxNxWxD)


class Attention(nn.Module):
  """Causal self-attention. With a cache (k, v), this layer's BxHxDxK and BxHxKxD, this call's
  keys and values go to slot `index`, written in place, and the queries read all K slots;
  with Beams in place of the mask, see _beam_attention."""
  config: OPTConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxSxE, allowed_BxSxK, cache, index):
    c = self.config
    heads = lambda y: y.reshape(*y.shape[:2], c.num_attention_heads, c.head_dim)  # noqa: E731
    q_BxSxHxD = heads(_dense(c, c.hidden_size, 'q_proj')(x_BxSxE)) * c.head_dim**-0.5
    k_BxHxSxD = heads(_dense(c, c.hidden_size, 'k_proj')(x_BxSxE)).transpose(0, 2, 1, 3)
    v_BxHxSxD = heads(_dense(c, c.hidden_size, 'v_proj')(x_BxSxE)).transpose(0, 2, 1, 3)
    if isinstance(allowed_BxSxK, Beams):
      out_BxSxHxD, cache = _beam_attention(q_BxSxHxD, k_BxHxSxD, v_BxHxSxD, cache, allowed_BxSxK, index)
      return _dense(c, c.hidden_size, 'out_proj')(out_BxSxHxD.reshape(x_BxSxE.shape)), cache
    if cache is None:
      s_BxHxSxK = jnp.einsum('bshd,bhkd->bhsk', q_BxSxHxD, k_BxHxSxD).astype(jnp.float32)
    else:
      k_BxHxDxK = jax.lax.dynamic_update_slice(
          cache[0], k_BxHxSxD.swapaxes(2, 3).astype(cache[0].dtype), (0, 0, 0, index))
      v_BxHxSxD = jax.lax.dynamic_update_slice(cache[1], v_BxHxSxD.astype(cache[1].dtype),
                                               (0, 0, index, 0))
      cache = k_BxHxDxK, v_BxHxSxD
      s_BxHxSxK = jnp.einsum('bshd,bhdk->bhsk', q_BxSxHxD, k_BxHxDxK).astype(jnp.float32)
    s_BxHxSxK = jnp.where(allowed_BxSxK[:, None], s_BxHxSxK, jnp.finfo(jnp.float32).min)
    p_BxHxSxK = nn.Dropout(c.attention_dropout)(jax.nn.softmax(s_BxHxSxK, axis=-1), self.deterministic)
    out_BxSxHxD = jnp.einsum('bhsk,bhkd->bshd', p_BxHxSxK.astype(v_BxHxSxD.dtype), v_BxHxSxD)
    out = _dense(c, c.hidden_size, 'out_proj')(out_BxSxHxD.reshape(x_BxSxE.shape))
    return out, cache


class Layer(nn.Module):
  """One decoder layer, pre- or post-LayerNorm as `do_layer_norm_before` says: (hidden state,
  this layer's cache) -> the same, updated (scanned: the carry, and the cache as xs and ys)."""
  config: OPTConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxSxE, cache, allowed_BxSxK, index):
    c = self.config
    pre = c.do_layer_norm_before
    drop = lambda y: nn.Dropout(c.dropout)(y, self.deterministic)  # noqa: E731
    norm1, norm2 = _norm(c, 'self_attn_layer_norm'), _norm(c, 'final_layer_norm')
    h, cache = Attention(c, self.deterministic, name='self_attn')(
        norm1(x_BxSxE) if pre else x_BxSxE, allowed_BxSxK, cache, index)
    x_BxSxE = x_BxSxE + drop(h)
    x_BxSxE = x_BxSxE if pre else norm1(x_BxSxE)
    h = _dense(c, c.ffn_dim, 'fc1')(norm2(x_BxSxE) if pre else x_BxSxE)
    h = _dense(c, c.hidden_size, 'fc2')(ACTIVATIONS[c.activation_function](h))
    x_BxSxE = x_BxSxE + drop(h)
    return (x_BxSxE if pre else norm2(x_BxSxE)), cache


ACTIVATIONS = {'relu': nn.relu, 'gelu': functools.partial(nn.gelu, approximate=False),
               'gelu_new': nn.gelu}


class OPT(nn.Module):
  """OPTForCausalLM: ids_BxS at positions_BxS -> logits_BxSxV (float32), and the updated cache.

  The layers are one scanned module (`layers`, parameters stacked), or with `scan_layers=False`
  separate ones (`layer_0`, ...: see `unstack`), which a generation step uses so that it reads
  each layer's weights where they are rather than slicing them out of the stack every token.
  """
  config: OPTConfig
  deterministic: bool = True
  scan_layers: bool = True

  @nn.compact
  def __call__(self, ids_BxS, positions_BxS, allowed_BxSxK, cache=None, index=0, last=False):
    c = self.config
    init = nn.initializers.normal(c.init_std)
    embed = nn.Embed(c.vocab_size, c.word_embed_proj_dim, dtype=c.dtype, embedding_init=init,
                     name='embed_tokens')
    x = embed(ids_BxS)
    projected = c.word_embed_proj_dim != c.hidden_size
    if projected:
      x = _dense(c, c.hidden_size, 'project_in', bias=False)(x)
    x = x + nn.Embed(c.max_position_embeddings + POSITION_OFFSET, c.hidden_size, dtype=c.dtype,
                     embedding_init=init, name='embed_positions')(positions_BxS + POSITION_OFFSET)
    if self.scan_layers:
      layers = nn.scan(Layer, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                       in_axes=(0, nn.broadcast, nn.broadcast), length=c.num_hidden_layers)
      x, cache = layers(c, self.deterministic, name='layers')(x, cache, allowed_BxSxK, index)
    else:
      caches = []  # a cache is then a tuple of each layer's own
      for i in range(c.num_hidden_layers):
        x, layer_cache = Layer(c, self.deterministic, name=f'layer_{i}')(
            x, None if cache is None else cache[i], allowed_BxSxK, index)
        caches.append(layer_cache)
      cache = None if cache is None else tuple(caches)
    if last:  # only the last position's logits (a prompt run before generating)
      x = x[:, -1:]
    if c.do_layer_norm_before and not c.remove_final_layer_norm:
      x = _norm(c, 'final_layer_norm')(x)
    if projected:
      x = _dense(c, c.word_embed_proj_dim, 'project_out', bias=False)(x)
    return embed.attend(x).astype(jnp.float32), cache


def unstack(params):
  """The parameters of OPT(scan_layers=False): the stacked layers as `layer_0`, `layer_1`, ..."""
  if 'layers' not in params:
    return params
  count = jax.tree.leaves(params['layers'])[0].shape[0]
  rest = {k: v for k, v in params.items() if k != 'layers'}
  return {**rest, **{f'layer_{i}': jax.tree.map(lambda p, i=i: p[i], params['layers'])
                     for i in range(count)}}


def positions(mask_BxS):
  """OPT's positions from the mask: 0, 1, ... over the real tokens, -1 on padding."""
  return jnp.cumsum(mask_BxS, axis=1) * mask_BxS - 1


def causal(mask_BxS):
  """allowed_BxSxS: a token sees itself and the real tokens before it."""
  s = mask_BxS.shape[1]
  return jnp.tril(jnp.ones((s, s), bool))[None] & (mask_BxS[:, None, :] > 0)


def init(config: OPTConfig, key):
  ids = jnp.zeros((1, 2), jnp.int32)
  return OPT(config).init(key, ids, ids, causal(jnp.ones((1, 2), jnp.int32)))['params']


def logits(config: OPTConfig, params, ids_BxS, mask_BxS):
  """The logits of whole sequences, no cache, no dropout."""
  return OPT(config).apply({'params': params}, ids_BxS, positions(mask_BxS), causal(mask_BxS))[0]


# ----------------------------------------------------------------------------- Hugging Face checkpoints

# Flax path below `layers` -> (Hugging Face name below `decoder.layers.{i}`, stored transposed)
_LAYER = {}
for _m in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
  _LAYER[('self_attn', _m, 'kernel')] = (f'self_attn.{_m}.weight', True)
  _LAYER[('self_attn', _m, 'bias')] = (f'self_attn.{_m}.bias', False)
for _m in ('fc1', 'fc2'):
  _LAYER[(_m, 'kernel')] = (f'{_m}.weight', True)
  _LAYER[(_m, 'bias')] = (f'{_m}.bias', False)
for _m in ('self_attn_layer_norm', 'final_layer_norm'):
  _LAYER[(_m, 'scale')] = (f'{_m}.weight', False)
  _LAYER[(_m, 'bias')] = (f'{_m}.bias', False)
_TOP = {('embed_tokens', 'embedding'): ('embed_tokens.weight', False),
        ('embed_positions', 'embedding'): ('embed_positions.weight', False),
        ('project_in', 'kernel'): ('project_in.weight', True),
        ('project_out', 'kernel'): ('project_out.weight', True),
        ('final_layer_norm', 'scale'): ('final_layer_norm.weight', False),
        ('final_layer_norm', 'bias'): ('final_layer_norm.bias', False)}


def _flat(tree, prefix=()):
  for k, v in tree.items():
    yield from (_flat(v, prefix + (k,)) if isinstance(v, dict) else [(prefix + (k,), v)])


def _nest(flat: dict) -> dict:
  tree = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def to_hf_tensors(params) -> dict:
  """{Hugging Face name: float32 array} of OPTForCausalLM (the output embedding is tied, so absent)."""
  out = {}
  for path, v in _flat(params):
    v = np.asarray(v, np.float32)
    if path[0] == 'layers':
      name, transposed = _LAYER[path[1:]]
      for i, w in enumerate(v):
        out[f'model.decoder.layers.{i}.{name}'] = np.ascontiguousarray(w.T if transposed else w)
    else:
      name, transposed = _TOP[path]
      out[f'model.decoder.{name}'] = np.ascontiguousarray(v.T if transposed else v)
  return out


def from_hf_tensors(config: OPTConfig, tensors: dict):
  """Flax parameters from {Hugging Face name: array}; names may or may not start with 'model.'."""
  tensors = {k.removeprefix('model.'): np.asarray(v, np.float32) for k, v in tensors.items()}
  expected = jax.eval_shape(functools.partial(init, config), jax.random.key(0))
  flat = {}
  for path, shape in _flat(expected):
    if path[0] == 'layers':
      name, transposed = _LAYER[path[1:]]
      names = [f'decoder.layers.{i}.{name}' for i in range(config.num_hidden_layers)]
    else:
      name, transposed = _TOP[path]
      names = [f'decoder.{name}']
    missing = [n for n in names if n not in tensors]
    if missing:
      raise ValueError(f'the checkpoint lacks {missing[0]} (and {len(missing) - 1} more)')
    arrays = [tensors.pop(n) for n in names]
    arrays = [a.T if transposed else a for a in arrays]
    value = np.stack(arrays) if path[0] == 'layers' else arrays[0]
    if value.shape != shape.shape:
      raise ValueError(f'{names[0]} has shape {value.shape}, the config wants {shape.shape}')
    flat[path] = jnp.asarray(value)
  head = tensors.pop('lm_head.weight', None)
  if head is not None and not np.array_equal(head, flat[('embed_tokens', 'embedding')]):
    raise ValueError('lm_head.weight differs from the token embedding; OPT ties them')
  if tensors:
    raise ValueError(f'unexpected tensors in the checkpoint: {sorted(tensors)[:5]}')
  return _nest(flat)


def _read_tensors(directory: str) -> dict:
  index = [f for f in ('model.safetensors.index.json', 'pytorch_model.bin.index.json')
           if os.path.exists(os.path.join(directory, f))]
  if index:
    with open(os.path.join(directory, index[0])) as f:
      files = sorted(set(json.load(f)['weight_map'].values()))
  else:
    files = sorted(glob.glob(os.path.join(directory, '*.safetensors'))) or \
        [f for f in ['pytorch_model.bin'] if os.path.exists(os.path.join(directory, f))]
  if not files:
    raise FileNotFoundError(f'no model.safetensors or pytorch_model.bin in {directory}')
  tensors = {}
  for name in files:
    path = os.path.join(directory, name)
    if path.endswith('.safetensors'):
      from safetensors.numpy import load_file  # noqa: PLC0415 (only when loading)
      tensors.update(load_file(path))
    else:
      import torch  # noqa: PLC0415 (PyTorch .bin files need PyTorch)
      state = torch.load(path, map_location='cpu', weights_only=True)
      tensors.update({k: v.float().numpy() for k, v in state.items()})
  return tensors


def local_directory(name_or_path: str) -> str:
  """A local directory as is; otherwise a hub name, fetched (or found in the cache) by huggingface_hub."""
  if os.path.isdir(name_or_path):
    return name_or_path
  from huggingface_hub import snapshot_download  # noqa: PLC0415 (only for hub names)
  return snapshot_download(name_or_path, allow_patterns=['*.json', '*.safetensors', '*.bin', '*.txt'])


def load(name_or_path: str, **overrides):
  """(config, params) of a Hugging Face OPT checkpoint (safetensors or PyTorch .bin)."""
  directory = local_directory(name_or_path)
  with open(os.path.join(directory, 'config.json')) as f:
    config = OPTConfig.from_hf(json.load(f), **overrides)
  return config, from_hf_tensors(config, _read_tensors(directory))


def save(directory: str, config: OPTConfig, params):
  """Writes config.json and model.safetensors that `transformers` loads as OPTForCausalLM."""
  from safetensors.numpy import save_file  # noqa: PLC0415
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(config.to_hf(), f, indent=2)
  save_file(to_hf_tensors(params), os.path.join(directory, 'model.safetensors'), metadata={'format': 'pt'})


# ----------------------------------------------------------------------------- generation


def new_cache(config: OPTConfig, batch: int, length: int):
  """Every layer's keys LxBxHxDxK and values LxBxHxKxD: keys transposed, so that a few
  queries' scores against many keys are a matmul XLA's CPU kernels run 3-7x faster."""
  l, h, d = config.num_hidden_layers, config.num_attention_heads, config.head_dim
  return (jnp.zeros((l, batch, h, d, length), config.dtype),
          jnp.zeros((l, batch, h, length, d), config.dtype))


def prefill(config: OPTConfig, params, prompt_BxT, mask_BxT, new_tokens: int):
  """Runs the prompt into a cache with room for `new_tokens` more: (last logits_BxV, cache, key mask_BxK),
  the cache a tuple of each layer's (k, v), laid out as in `new_cache`, which `decode` takes."""
  b, t = prompt_BxT.shape
  key_mask_BxK = jnp.concatenate([mask_BxT > 0, jnp.ones((b, new_tokens), bool)], axis=1)
  allowed_BxTxK = (jnp.arange(t + new_tokens)[None, :] <= jnp.arange(t)[:, None])[None] \
      & key_mask_BxK[:, None, :]
  logits_Bx1xV, (k, v) = OPT(config).apply({'params': params}, prompt_BxT, positions(mask_BxT),
                                           allowed_BxTxK, new_cache(config, b, t + new_tokens), 0,
                                           last=True)
  return logits_Bx1xV[:, 0], tuple(zip(k, v)), key_mask_BxK


def decode(config: OPTConfig, params, token_B, position_B, cache, key_mask_BxK, index):
  """One token per row at cache slot `index`: (logits_BxV, cache)."""
  allowed_Bx1xK = ((jnp.arange(key_mask_BxK.shape[1]) <= index) & key_mask_BxK)[:, None, :]
  logits_Bx1xV, cache = OPT(config, scan_layers=False).apply(
      {'params': unstack(params)}, token_B[:, None], position_B[:, None], allowed_Bx1xK, cache, index)
  return logits_Bx1xV[:, 0], cache


def penalise(scores_BxV, seen_BxV, penalty: float):
  """The CTRL repetition penalty, as `transformers` applies it: scores of seen tokens
  divided by `penalty` where positive, multiplied where negative."""
  penalised = jnp.where(scores_BxV < 0, scores_BxV * penalty, scores_BxV / penalty)
  return jnp.where(seen_BxV, penalised, scores_BxV)


def _seen(prompt_BxT, vocab: int):
  """Tokens present in each prompt, padding included (as `transformers` counts them)."""
  rows = jnp.arange(prompt_BxT.shape[0])[:, None]
  return jnp.zeros((prompt_BxT.shape[0], vocab), bool).at[rows, prompt_BxT].set(True)


def _no_eos(scores_BxV, eos: int):
  """Every call generates exactly its number of new tokens, so end-of-sequence is never chosen."""
  return scores_BxV.at[:, eos].set(-jnp.inf)


@functools.partial(jax.jit, static_argnames=('config', 'new_tokens', 'repetition_penalty',
                                             'temperature', 'top_k', 'top_p'))
def sample(config: OPTConfig, params, prompt_BxT, mask_BxT, key, new_tokens: int,
           repetition_penalty: float = 1.0, temperature: float = 0.0, top_k: int = 0,
           top_p: float = 1.0):
  """new_BxN: greedy (temperature 0) or sampled continuations of left-padded prompts."""
  logits_BxV, cache, key_mask = prefill(config, params, prompt_BxT, mask_BxT, new_tokens)
  params = unstack(params)  # once, not every token
  t = prompt_BxT.shape[1]
  position_B = positions(mask_BxT)[:, -1] + 1

  def choose(logits_BxV, seen_BxV, step):
    scores = _no_eos(penalise(logits_BxV, seen_BxV, repetition_penalty), config.eos_token_id)
    if temperature == 0.0:
      return jnp.argmax(scores, axis=-1)
    return jax.random.categorical(jax.random.fold_in(key, step), truncate(scores / temperature, top_k, top_p))

  def step(carry, n):
    logits_BxV, cache, seen_BxV = carry
    token_B = choose(logits_BxV, seen_BxV, n)
    seen_BxV = seen_BxV.at[jnp.arange(token_B.shape[0]), token_B].set(True)
    logits_BxV, cache = decode(config, params, token_B, position_B + n, cache, key_mask, t + n)
    return (logits_BxV, cache, seen_BxV), token_B

  carry = (logits_BxV, cache, _seen(prompt_BxT, config.vocab_size))
  (logits_BxV, _, seen_BxV), tokens_NxB = jax.lax.scan(step, carry, jnp.arange(new_tokens - 1))
  last_B = choose(logits_BxV, seen_BxV, new_tokens - 1)
  return jnp.concatenate([tokens_NxB.T, last_B[:, None]], axis=1)


def truncate(logits_BxV, top_k: int, top_p: float):
  """Logits outside the top k, or outside the smallest set holding probability top_p, to -inf."""
  if top_k:
    kth_B = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_B, -jnp.inf, logits_BxV)
  if top_p < 1.0:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    before_BxV = jnp.cumsum(jax.nn.softmax(sorted_BxV, axis=-1), axis=-1) - jax.nn.softmax(sorted_BxV, axis=-1)
    cut_B = jnp.min(jnp.where(before_BxV < top_p, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < cut_B, -jnp.inf, logits_BxV)
  return logits_BxV


@functools.partial(jax.jit, static_argnames=('config', 'new_tokens', 'beams', 'repetition_penalty'))
def beam_search(config: OPTConfig, params, prompt_BxT, mask_BxT, new_tokens: int, beams: int = 5,
                repetition_penalty: float = 1.0):
  """new_BxN: the best of `beams` beams, exactly `new_tokens` long, scored by summed log-probability
  after the repetition penalty, as `transformers`' generate(num_beams=beams, min_new_tokens=
  max_new_tokens=new_tokens) chooses them. The prompt runs once and its cache is shared by the
  beams; the generated tokens' cache is never reordered (see Beams)."""
  b = prompt_BxT.shape[0]
  logits_BxV, prompt_cache, _ = prefill(config, params, prompt_BxT, mask_BxT, 0)
  params = unstack(params)  # once, not every token
  beam = lambda x: jnp.repeat(x, beams, axis=0)  # noqa: E731  (B, ...) -> (B*W, ...)
  k_shape = (b, config.num_attention_heads, config.head_dim, new_tokens, beams)
  v_shape = (b, config.num_attention_heads, new_tokens, beams, config.head_dim)
  cache = tuple((k, v, jnp.zeros(k_shape, k.dtype), jnp.zeros(v_shape, v.dtype))
                for k, v in prompt_cache)
  history = Beams(mask_BxT > 0, jnp.zeros((b, beams, new_tokens, beams), bool))
  position_BW = beam(positions(mask_BxT)[:, -1] + 1)

  def extend(logits_BWxV, score_BxW, seen_BWxV, tokens_BxWxN, n):
    logp = _no_eos(penalise(jax.nn.log_softmax(logits_BWxV), seen_BWxV, repetition_penalty),
                   config.eos_token_id)
    total_BxWV = (logp.reshape(b, beams, -1) + score_BxW[:, :, None]).reshape(b, -1)
    score_BxW, index_BxW = jax.lax.top_k(total_BxWV, beams)
    parent_BxW = index_BxW // config.vocab_size
    parent_BW = (parent_BxW + jnp.arange(b)[:, None] * beams).reshape(-1)
    token_BW = (index_BxW % config.vocab_size).reshape(-1)
    seen_BWxV = seen_BWxV[parent_BW].at[jnp.arange(b * beams), token_BW].set(True)
    tokens_BxWxN = tokens_BxWxN.reshape(b * beams, -1)[parent_BW].at[:, n].set(token_BW)
    return score_BxW, parent_BxW, token_BW, seen_BWxV, tokens_BxWxN.reshape(b, beams, -1)

  def step(carry, n):
    logits_BWxV, cache, history, score_BxW, seen_BWxV, tokens_BxWxN = carry
    score_BxW, parent_BxW, token_BW, seen_BWxV, tokens_BxWxN = extend(
        logits_BWxV, score_BxW, seen_BWxV, tokens_BxWxN, n)
    history = history.follow(parent_BxW, n)
    logits_BWx1xV, cache = OPT(config, scan_layers=False).apply(
        {'params': params}, token_BW[:, None], (position_BW + n)[:, None], history, cache, n)
    return (logits_BWx1xV[:, 0], cache, history, score_BxW, seen_BWxV, tokens_BxWxN), None

  score_BxW = jnp.tile(jnp.array([0.0] + [NEG] * (beams - 1)), (b, 1))  # the beams start as one
  carry = (beam(logits_BxV), cache, history, score_BxW, beam(_seen(prompt_BxT, config.vocab_size)),
           jnp.zeros((b, beams, new_tokens), jnp.int32))
  carry, _ = jax.lax.scan(step, carry, jnp.arange(new_tokens - 1))
  logits_BWxV, _, _, score_BxW, seen_BWxV, tokens_BxWxN = carry
  _, _, _, _, tokens_BxWxN = extend(logits_BWxV, score_BxW, seen_BWxV, tokens_BxWxN, new_tokens - 1)
  return tokens_BxWxN[:, 0]


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """AdamW after a linear warm-up, then down to min_learning_rate: linearly over the steps
  (the defaults: the Hugging Face Trainer's), or along a cosine stepped once per epoch
  (torch's CosineAnnealingLR(T_max=epochs) under PyTorch Lightning, as the paper's main.py)."""
  learning_rate: float = 5e-5
  batch: int = 8
  weight_decay: float = 0.0
  warmup_steps: int = 0
  schedule: str = 'linear'  # or 'cosine'
  min_learning_rate: float = 0.0
  epochs: int = 1  # the cosine's period; an epoch is total_steps // epochs steps


SCHEDULES = ('linear', 'cosine')


def lr_schedule(cfg: TrainConfig, total_steps: int):
  """The learning rate at each step of a run of total_steps (an optax schedule)."""
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f'schedule must be one of {SCHEDULES}, not {cfg.schedule!r}')
  warmup = optax.schedules.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
  if cfg.schedule == 'linear':
    decay = optax.schedules.linear_schedule(cfg.learning_rate, cfg.min_learning_rate,
                                            max(total_steps - cfg.warmup_steps, 1))
    return optax.schedules.join_schedules([warmup, decay], [cfg.warmup_steps])
  cosine = optax.schedules.cosine_decay_schedule(  # min + (lr - min)(1 + cos(pi epoch / epochs)) / 2
      cfg.learning_rate, cfg.epochs, alpha=cfg.min_learning_rate / cfg.learning_rate)
  steps_per_epoch = max(total_steps // cfg.epochs, 1)
  return lambda step: jnp.where(step < cfg.warmup_steps, warmup(step), cosine(step // steps_per_epoch))


def optimizer(cfg: TrainConfig, total_steps: int):
  return optax.adamw(lr_schedule(cfg, total_steps), b1=0.9, b2=0.999, eps=1e-8,
                     weight_decay=cfg.weight_decay)


def token_nll(config: OPTConfig, params, ids_BxL, dropout_key=None):
  """nll_BxL-1: each token's negative log-likelihood given the ones before it, in full blocks."""
  mask = jnp.ones_like(ids_BxL)
  rngs = {} if dropout_key is None else {'dropout': dropout_key}
  logits_BxLxV, _ = OPT(config, deterministic=dropout_key is None).apply(
      {'params': params}, ids_BxL, positions(mask), causal(mask), rngs=rngs)
  logits_BxLxV = logits_BxLxV[:, :-1]
  picked_BxL = jnp.take_along_axis(logits_BxLxV, ids_BxL[:, 1:, None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits_BxLxV, axis=-1) - picked_BxL


def make_train_step(config: OPTConfig, tx, stacked: bool = False):
  """(params, opt_state, ids_BxL, key) -> (params, opt_state, loss), jitted, the state donated.
  `stacked`: every argument has a leading axis of seeds, which train together (vmapped)."""
  def step(params, opt_state, ids_BxL, key):
    loss, grads = jax.value_and_grad(lambda p: token_nll(config, p, ids_BxL, key).mean())(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return jax.jit(jax.vmap(step) if stacked else step, donate_argnums=(0, 1))


@functools.partial(jax.jit, static_argnames='config')
def block_nll(config: OPTConfig, params, ids_BxL):
  """nll_B: mean next-token negative log-likelihood of each block (its perplexity is exp(nll_B))."""
  return token_nll(config, params, ids_BxL).mean(axis=1)
