"""The Flax OPT against `transformers`' PyTorch OPT: small random models saved with save_pretrained."""

import os
import shutil

import jax
import numpy as np
import pytest
import transformers

from collapse_jax.nets import opt, opt_decode, opt_weights

torch = pytest.importorskip('torch', reason='needs PyTorch (the [test] extra on Python 3.11)')
pytestmark = pytest.mark.torch

VARIANTS = {
    'pre_ln': dict(do_layer_norm_before=True),
    'post_ln': dict(do_layer_norm_before=False),
    'projected': dict(do_layer_norm_before=True, word_embed_proj_dim=24),
}


def small_hf(tmp_path_factory, name: str):
  """A random OPTForCausalLM (vocab 96, 2 layers, hidden 32) saved to a fresh directory."""
  torch.manual_seed(0)
  fields = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=1, bos_token_id=2,
                eos_token_id=2, dropout=0.0)
  config = transformers.OPTConfig(**{**fields, **VARIANTS[name]})
  model = transformers.OPTForCausalLM(config).eval()
  with torch.no_grad():  # final norms away from identity, so a missing one shows
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  directory = tmp_path_factory.mktemp(name)
  model.save_pretrained(directory)
  return model, str(directory)


@pytest.fixture(scope='session', params=list(VARIANTS))
def saved(request, tmp_path_factory):
  return small_hf(tmp_path_factory, request.param)


def padded_batch(rows=2, length=12, seed=0):
  """Random rows, the second left-padded by 3, as a tokenizer with padding_side='left' gives."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, 96, size=(rows, length)).astype(np.int64)
  mask = np.ones_like(ids)
  ids[1, :3], mask[1, :3] = 1, 0
  return ids, mask


def torch_logits(model, ids, mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def test_logits_match_on_a_padded_batch(saved):
  model, directory = saved
  config, params = opt_weights.load(directory)
  ids, mask = padded_batch()
  ours = np.asarray(opt.logits(config, params, ids, mask))
  theirs = torch_logits(model, ids, mask)
  real = mask.astype(bool)
  scale = np.abs(theirs[real]).max()
  np.testing.assert_allclose(ours[real], theirs[real], rtol=1e-4, atol=1e-4 * scale)


def test_saved_back_checkpoint_reloads_in_transformers(saved, tmp_path):
  model, directory = saved
  config, params = opt_weights.load(directory)
  opt_weights.save(str(tmp_path), config, params)
  again = transformers.OPTForCausalLM.from_pretrained(str(tmp_path)).eval()
  ids, mask = padded_batch()
  real = mask.astype(bool)
  np.testing.assert_allclose(torch_logits(again, ids, mask)[real], torch_logits(model, ids, mask)[real],
                             rtol=1e-6, atol=1e-6)


def test_a_wrong_layer_is_noticed(saved):
  """The parity check can fail: swapping the two layers' weights changes the logits."""
  model, directory = saved
  config, params = opt_weights.load(directory)
  swapped = {**params, 'layers': {k: v for k, v in params['layers'].items()}}
  swapped['layers']['fc2'] = {k: v[::-1] for k, v in params['layers']['fc2'].items()}
  ids, mask = padded_batch()
  real = mask.astype(bool)
  ours = np.asarray(opt.logits(config, swapped, ids, mask))
  assert np.abs(ours[real] - torch_logits(model, ids, mask)[real]).max() > 1e-3


@pytest.mark.parametrize('beams', [1, pytest.param(5, marks=pytest.mark.e2e)])  # 5: e2e
def test_generation_equals_transformers_generate(saved, beams):
  """Token for token, with the paper's repetition penalty and without one; exactly 16 new tokens."""
  model, directory = saved
  config, params = opt_weights.load(directory)
  ids, mask = padded_batch(rows=3, length=10, seed=1)
  for penalty in (1.0, 2.0):
    with torch.no_grad():
      theirs = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                              do_sample=False, num_beams=beams, max_new_tokens=16, min_new_tokens=16,
                              repetition_penalty=penalty)[:, ids.shape[1]:].numpy()
    if beams == 1:
      ours = opt_decode.sample(config, params, ids, mask, None, 16, repetition_penalty=penalty)
    else:
      ours = opt_decode.beam_search(config, params, ids, mask, 16, beams, repetition_penalty=penalty)
    np.testing.assert_array_equal(np.asarray(ours), theirs, err_msg=f'beams={beams} penalty={penalty}')


def test_a_pytorch_bin_checkpoint_loads_as_the_safetensors_one(saved, tmp_path):
  """Older hub checkpoints: a pickled state dict, names without 'model.', the tied head included."""
  model, directory = saved
  state = {k.removeprefix('model.'): v for k, v in model.state_dict().items()}
  torch.save(state, tmp_path / 'pytorch_model.bin')
  shutil.copy(os.path.join(directory, 'config.json'), tmp_path)
  _, from_bin = opt_weights.load(str(tmp_path))
  _, from_safetensors = opt_weights.load(directory)
  jax.tree.map(np.testing.assert_array_equal, from_bin, from_safetensors)
