"""OPT's Hugging Face checkpoints in and out: config.json and the tensors of OPTForCausalLM
(safetensors or PyTorch .bin), by the names `transformers` gives them."""

import functools
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.nets.opt import OPTConfig, init

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
