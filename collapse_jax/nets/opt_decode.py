"""Generation with OPT: a KV cache, the prompt run once (prefill), one token at a time (decode),
greedy or sampled continuations and beam search, as `transformers`' generate chooses them."""

import functools

import jax
import jax.numpy as jnp

from collapse_jax.nets.opt import OPT, Beams, OPTConfig, positions, unstack

NEG = -1e9  # the score of a beam that is not there



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
           top_p: float = 1.0, knobs=None):
  """new_BxN: greedy (temperature 0) or sampled continuations of left-padded prompts.

  `knobs` ({'temperature', 'top_k', 'top_p'}: traced scalars, those a sweep sets) replace
  the static settings of the same names, so every value of a sweep runs one compiled
  program; temperature 0 (greedy) ignores them."""
  logits_BxV, cache, key_mask = prefill(config, params, prompt_BxT, mask_BxT, new_tokens)
  params = unstack(params)  # once, not every token
  t = prompt_BxT.shape[1]
  position_B = positions(mask_BxT)[:, -1] + 1
  law = {'temperature': temperature, 'top_k': top_k, 'top_p': top_p, **(knobs or {})}

  def choose(logits_BxV, seen_BxV, step):
    scores = _no_eos(penalise(logits_BxV, seen_BxV, repetition_penalty), config.eos_token_id)
    if temperature == 0.0:
      return jnp.argmax(scores, axis=-1)
    return jax.random.categorical(jax.random.fold_in(key, step),
                                  truncate(scores / law['temperature'], law['top_k'], law['top_p']))

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


def truncate(logits_BxV, top_k=0, top_p=1.0):
  """Logits outside the k most likely (0: all), or outside the smallest set of the most likely
  holding probability top_p (1: all), to -inf; ties with the last one kept stay. top_k and
  top_p may be traced (a sweep's knobs; top_k a float, as knobs come): then a top_k of 0 and a
  top_p of 1 keep every logit too."""
  if _static(top_k, 0) and _static(top_p, 1.0):
    return logits_BxV
  sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
  cut_Bx1 = jnp.full((logits_BxV.shape[0], 1), -jnp.inf, logits_BxV.dtype)
  if not _static(top_k, 0):
    k = jnp.clip(jnp.asarray(top_k).astype(jnp.int32), 0, logits_BxV.shape[-1])
    kth_Bx1 = jax.lax.dynamic_slice_in_dim(sorted_BxV, jnp.maximum(k, 1) - 1, 1, axis=1)
    cut_Bx1 = jnp.where(k > 0, kth_Bx1, cut_Bx1)
    sorted_BxV = jnp.where(sorted_BxV < cut_Bx1, -jnp.inf, sorted_BxV)
  if not _static(top_p, 1.0):
    p_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    before_BxV = jnp.cumsum(p_BxV, axis=-1) - p_BxV  # the mass of the likelier ones
    last_Bx1 = jnp.min(jnp.where(before_BxV < top_p, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    cut_Bx1 = jnp.maximum(cut_Bx1, jnp.where(jnp.asarray(top_p) < 1.0, last_Bx1, -jnp.inf))
  return jnp.where(logits_BxV < cut_Bx1, -jnp.inf, logits_BxV)


def _static(value, off) -> bool:
  """Whether a setting is a Python number that leaves the logits as they are."""
  return isinstance(value, (int, float)) and value == off


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
