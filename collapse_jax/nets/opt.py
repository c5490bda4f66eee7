"""OPT in Flax: the decoder of Hugging Face's OPTForCausalLM, its configuration and its logits.

Parameters keep Hugging Face's names (`q_proj`, `fc1`, `self_attn_layer_norm`, ...);
the layers are one `nn.scan`, so every layer parameter has a leading layer axis
and the network compiles once, whatever its depth. Tokens are ids_BxS with a
mask_BxS (1 for a real token); prompts are padded on the left, as for `generate`.
Beside it: opt_weights (Hugging Face checkpoints in and out), opt_decode (a KV cache,
sampling and beam search) and opt_train (the optimiser and the training step).
"""

import dataclasses
import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

POSITION_OFFSET = 2  # OPT's learned positions start at row 2 of their table


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
