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
