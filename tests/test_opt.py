"""The Flax OPT on its own: cache, causality, padding, sampling, training, checkpoint errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax import data
from collapse_jax.nets import opt, opt_decode, opt_train, opt_weights

SMALL = opt.OPTConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32, dropout=0.0)


@pytest.fixture(scope='session')
def params():
  return opt.init(SMALL, jax.random.key(0))


def ids(b=2, s=12, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(3, SMALL.vocab_size, (b, s)), jnp.int32)


def test_the_cache_gives_the_logits_of_the_whole_sequence(params):
  x = ids()
  mask = jnp.ones_like(x)
  full = opt.logits(SMALL, params, x, mask)
  last, cache, key_mask = opt_decode.prefill(SMALL, params, x[:, :5], mask[:, :5], 7)
  np.testing.assert_allclose(last, full[:, 4], atol=1e-5)
  for i in range(5, 12):
    step, cache = opt_decode.decode(SMALL, params, x[:, i], jnp.full((2,), i), cache, key_mask, i)
    np.testing.assert_allclose(step, full[:, i], atol=1e-5)


def test_no_token_sees_the_future(params):
  x = ids()
  changed = x.at[:, 7].set((x[:, 7] + 1) % SMALL.vocab_size)
  mask = jnp.ones_like(x)
  a, b = opt.logits(SMALL, params, x, mask), opt.logits(SMALL, params, changed, mask)
  np.testing.assert_array_equal(a[:, :7], b[:, :7])
  assert np.abs(a[:, 7:] - b[:, 7:]).max() > 1e-4


def test_left_padding_changes_nothing(params):
  x = ids(1, 8)
  padded = jnp.concatenate([jnp.ones((1, 3), jnp.int32), x], axis=1)
  mask = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 8), jnp.int32)], axis=1)
  np.testing.assert_allclose(opt.logits(SMALL, params, padded, mask)[:, 3:],
                             opt.logits(SMALL, params, x, jnp.ones_like(x)), atol=1e-5)
  a = opt_decode.beam_search(SMALL, params, padded, mask, 6, 3)
  np.testing.assert_array_equal(a, opt_decode.beam_search(SMALL, params, x, jnp.ones_like(x), 6, 3))


def test_sampling_with_top_k_1_is_greedy_and_never_ends(params):
  x = ids(3, 6)
  mask = jnp.ones_like(x)
  greedy = opt_decode.sample(SMALL, params, x, mask, None, 10)
  sampled = opt_decode.sample(SMALL, params, x, mask, jax.random.key(1), 10, temperature=1.0, top_k=1)
  np.testing.assert_array_equal(greedy, sampled)
  free = opt_decode.sample(SMALL, params, x, mask, jax.random.key(2), 10, temperature=5.0)
  assert free.shape == (3, 10) and not np.any(np.asarray(free) == SMALL.eos_token_id)


@pytest.mark.e2e
def test_beam_search_beats_or_ties_greedy_on_its_own_score(params):
  """Beam search maximises the summed log-probability; greedy is one of its candidates' paths."""
  x = ids(4, 6)
  mask = jnp.ones_like(x)

  def score(new):
    seq = jnp.concatenate([x, new], axis=1)
    logits = opt.logits(SMALL, params, seq, jnp.ones_like(seq))[:, 5:-1]
    logp = jax.nn.log_softmax(logits.at[:, :, SMALL.eos_token_id].set(-jnp.inf))
    return jnp.take_along_axis(logp, new[..., None], -1)[..., 0].sum(1)
  beam = opt_decode.beam_search(SMALL, params, x, mask, 8, 4)
  greedy = opt_decode.sample(SMALL, params, x, mask, None, 8)
  assert np.all(np.asarray(score(beam)) >= np.asarray(score(greedy)) - 1e-5)


def test_one_beam_is_greedy_padding_and_all(params):
  """With one beam, the search's shared prompt cache and ancestor rows reduce to greedy decoding."""
  x = ids(3, 7, seed=3)
  mask = jnp.ones_like(x).at[0, :2].set(0)
  np.testing.assert_array_equal(opt_decode.beam_search(SMALL, params, x, mask, 9, 1),
                                opt_decode.sample(SMALL, params, x, mask, None, 9))


def test_top_p_keeps_the_smallest_set_reaching_p():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = np.isfinite(np.asarray(opt_decode.truncate(logits, 0, 0.7)))
  np.testing.assert_array_equal(kept, [[True, True, False, False]])
  kept = np.isfinite(np.asarray(opt_decode.truncate(logits, 3, 0.99)))
  np.testing.assert_array_equal(kept, [[True, True, True, False]])


def kept_by_numpy(logits_V, top_k, top_p, crossing=True):
  """The tokens top-k then top-p sampling keeps, computed directly: the k likeliest (0: all),
  then the fewest likeliest whose probability (renormalised over those k) reaches top_p;
  crossing=False leaves out the token that crosses top_p (a plausible wrong reading)."""
  order = np.argsort(-logits_V.astype(np.float64))
  k = top_k or len(order)
  p_K = np.exp(logits_V[order[:k]] - logits_V[order[0]])
  cum_K = np.cumsum(p_K / p_K.sum())
  n = int(np.searchsorted(cum_K, top_p)) + 1 if top_p < 1 else k
  n = min(n, k) if crossing else max(int((cum_K <= top_p).sum()), 1)
  kept_V = np.zeros(len(order), bool)
  kept_V[order[:n]] = True
  return kept_V


@pytest.mark.parametrize('top_k, top_p', [(0, 0.3), (0, 0.9), (5, 1.0), (1, 1.0), (7, 0.5),
                                          (50, 0.99), (0, 1.0)])
def test_truncation_keeps_what_a_direct_computation_keeps_static_or_traced(top_k, top_p):
  """truncate against NumPy on random logits, with settings fixed at compile time (as the
  sampler's defaults) and traced (a sweep's knobs: one program for every value); the
  computation tells the right reading of top_p from one that drops the crossing token."""
  logits_BxV = np.random.default_rng(top_k + int(100 * top_p)).normal(0, 2, (64, 50)).astype(
      np.float32)
  expected = np.stack([kept_by_numpy(row, top_k, top_p) for row in logits_BxV])
  static = np.asarray(opt_decode.truncate(jnp.asarray(logits_BxV), top_k, top_p))
  traced = np.asarray(jax.jit(opt_decode.truncate)(jnp.asarray(logits_BxV), jnp.float32(top_k),
                                                   jnp.float32(top_p)))
  np.testing.assert_array_equal(np.isfinite(static), expected)
  np.testing.assert_array_equal(traced, static)  # the same logits, bit for bit
  np.testing.assert_array_equal(static[expected], logits_BxV[expected])
  if 0 < top_p < 1:
    wrong = np.stack([kept_by_numpy(row, top_k, top_p, crossing=False) for row in logits_BxV])
    assert (wrong != expected).any()


@pytest.mark.heavy  # several decoders compiled
def test_traced_knobs_sample_as_the_static_settings_and_reach_greedy(params):
  """The sampler with its settings as traced knobs draws what it draws with them fixed at
  compile time, token for token; top_k 1 and a temperature near 0 are greedy decoding."""
  x = ids(3, 6)
  mask = jnp.ones_like(x)
  key = jax.random.key(4)
  knobs = {'temperature': jnp.float32(0.7), 'top_k': jnp.float32(5), 'top_p': jnp.float32(0.9)}
  static = opt_decode.sample(SMALL, params, x, mask, key, 10, 2.0, 0.7, 5, 0.9)
  np.testing.assert_array_equal(opt_decode.sample(SMALL, params, x, mask, key, 10, 2.0, 1.0,
                                                  knobs=knobs), static)
  free = opt_decode.sample(SMALL, params, x, mask, key, 10, 2.0, 1.0)
  assert (np.asarray(free) != np.asarray(static)).any()  # the knobs changed something
  greedy = opt_decode.sample(SMALL, params, x, mask, None, 10, 2.0)
  for knob, value in (('top_k', 1.0), ('temperature', 1e-6)):
    np.testing.assert_array_equal(opt_decode.sample(SMALL, params, x, mask, key, 10, 2.0, 1.0,
                                                    knobs={knob: jnp.float32(value)}), greedy)


def test_the_first_sampled_token_follows_the_tempered_truncated_law(params):
  """4,000 draws of a prompt's first new token under temperature 0.25, top_k 8 and top_p 0.9
  (traced knobs) against that law, computed directly from the prompt's logits: a chi-square
  test at the 99.9% level accepts it and rejects the law with the temperature left out."""
  from scipy import stats  # noqa: PLC0415
  n, x = 4000, ids(1, 6, seed=5)
  knobs = {'temperature': jnp.float32(0.25), 'top_k': jnp.float32(8), 'top_p': jnp.float32(0.9)}
  first_N = np.asarray(opt_decode.sample(SMALL, params, jnp.tile(x, (n, 1)),
                                         jnp.ones((n, 6), jnp.int32), jax.random.key(0), 2, 1.0,
                                         1.0, knobs=knobs))[:, 0]
  logits_V = np.asarray(opt_decode.prefill(SMALL, params, x, jnp.ones_like(x), 1)[0][0], np.float64)
  logits_V[SMALL.eos_token_id] = -np.inf

  def law(temperature):
    kept_V = kept_by_numpy(logits_V / temperature, 8, 0.9)
    p_V = np.where(kept_V, np.exp(logits_V / temperature - logits_V.max() / temperature), 0.0)
    return p_V / p_V.sum()

  counts_V = np.bincount(first_N, minlength=SMALL.vocab_size)

  def rejected(p_V):
    if counts_V[p_V == 0].any():
      return True
    expected_V = n * p_V[p_V > 0]
    chi2 = ((counts_V[p_V > 0] - expected_V) ** 2 / expected_V).sum()
    return chi2 > stats.chi2.ppf(0.999, (p_V > 0).sum() - 1)

  assert (law(0.25) > 0).sum() >= 3 and not rejected(law(0.25))
  assert rejected(law(1.0))


@pytest.mark.e2e
def test_training_lowers_the_loss_and_block_nll_is_the_mean_token_nll(params):
  x = ids(4, 16)
  tx = opt_train.optimizer(opt_train.TrainConfig(learning_rate=3e-3, batch=4), 30)
  step = opt_train.make_train_step(SMALL, tx)
  p, state = jax.tree.map(jnp.copy, params), tx.init(params)
  first = float(opt_train.block_nll(SMALL, params, x).mean())
  for i in range(30):
    p, state, loss = step(p, state, x, jax.random.key(i))
  assert float(opt_train.block_nll(SMALL, p, x).mean()) < 0.7 * first  # 3.94 -> 2.40 when written
  logp = jax.nn.log_softmax(opt.logits(SMALL, p, x, jnp.ones_like(x))[:, :-1])
  manual = -jnp.take_along_axis(logp, x[:, 1:, None], -1)[..., 0].mean(1)
  np.testing.assert_allclose(opt_train.block_nll(SMALL, p, x), manual, rtol=1e-5)


def test_dropout_is_random_in_training_only(params):
  config = opt.OPTConfig(**{**SMALL.__dict__, 'dropout': 0.5})
  x = ids()
  a = opt_train.token_nll(config, params, x, jax.random.key(0))
  b = opt_train.token_nll(config, params, x, jax.random.key(1))
  assert np.abs(a - b).max() > 1e-3
  np.testing.assert_array_equal(opt_train.token_nll(config, params, x),
                                opt_train.token_nll(config, params, x))


def test_the_real_opt_125m_config_reads_and_writes_back():
  with open(os.path.join(data.require('opt-tokenizer'), 'config.json')) as f:
    hf = json.load(f)
  config = opt.OPTConfig.from_hf(hf)
  assert config == opt.OPTConfig(vocab_size=50272)  # the defaults are OPT-125m
  back = config.to_hf()
  assert all(back[k] == hf[k] for k in ('hidden_size', 'ffn_dim', 'num_hidden_layers',
                                        'do_layer_norm_before', 'word_embed_proj_dim', 'vocab_size'))


def test_bad_checkpoints_are_refused(params):
  tensors = opt_weights.to_hf_tensors(params)
  with pytest.raises(ValueError, match='lacks model.decoder.layers.0.fc1.weight|lacks decoder'):
    opt_weights.from_hf_tensors(SMALL, {k: v for k, v in tensors.items() if '.0.fc1.weight' not in k})
  wrong = dict(tensors, **{'model.decoder.embed_positions.weight': np.zeros((3, 32), np.float32)})
  with pytest.raises(ValueError, match='shape'):
    opt_weights.from_hf_tensors(SMALL, wrong)
  with pytest.raises(ValueError, match='ties'):
    opt_weights.from_hf_tensors(SMALL, dict(tensors, **{'lm_head.weight': np.zeros((50, 32), np.float32)}))
  back = opt_weights.from_hf_tensors(SMALL, tensors)
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_bfloat16_compute_stays_close_to_float32(params):
  x = ids()
  mask = jnp.ones_like(x)
  half = opt.OPTConfig(**{**SMALL.__dict__, 'dtype': 'bfloat16'})
  a, b = opt.logits(SMALL, params, x, mask), opt.logits(half, params, x, mask)
  assert b.dtype == jnp.float32 and np.abs(a - b).max() < 0.05 * np.abs(a).max()
  assert opt_decode.beam_search(half, params, x, mask, 4, 2).shape == (2, 4)
