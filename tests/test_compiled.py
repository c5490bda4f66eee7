"""The GMM's accelerator paths on this CPU, and the programs compiled for a TPU and a GPU target.

The compile-only test needs the `compile` extra (libtpu and the CUDA plugin, Python 3.12+) and
JAX_PLATFORMS=cpu (else jax claims the CUDA plugin for a GPU it does not find), and skips,
saying so, where it cannot compile for its targets.
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax.core import driver
from collapse_jax.families import gaussian, gmm
from conftest import assert_gmm_matches_scikit_learn

CFG = gmm.EMConfig()


def _blobs(seed, n):
  """Two overlapping 2-D clusters: EM needs from a few to hundreds of iterations."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 2)) * [1.0, 0.5]
  x[: n // 3] += [1.5 * rng.uniform(), 0.0]
  return x.astype(np.float32)


def test_every_matmul_of_a_fit_reaches_the_compiled_program_at_highest_precision():
  x, w = jax.ShapeDtypeStruct((16, 2), jnp.float32), jax.ShapeDtypeStruct((16,), jnp.float32)
  text = jax.jit(lambda x, w, k: gmm.fit(x, w, k, CFG)).lower(x, w, jax.random.key(0)).compile(
      ).as_text()
  dots = [line for line in text.splitlines() if re.search(r'= \S+ dot\(', line)]
  assert len(dots) >= 5, text  # k-means, its start, the moments, EM's two products
  for line in dots:
    assert 'operand_precision={highest,highest}' in line, line


@pytest.mark.heavy  # two compiles of a vmapped fit
def test_rounds_give_every_run_the_result_it_gets_iterating_alone(monkeypatch):
  s, n = 16, 200
  x_SxNxD = np.stack([_blobs(i, n) for i in range(s)])
  keys, w_SxN = jax.random.split(jax.random.key(1), s), jnp.ones((s, n))

  def fit_all():  # traced anew each call, so that it sees ROUND_MIN as it is then
    return jax.jit(jax.vmap(lambda x, w, k: gmm.fit(x, w, k, CFG)))(x_SxNxD, w_SxN, keys)
  assert gmm.round_sizes(s) == (16,)  # one batch: a plain vmapped while_loop
  alone, _ = jax.tree.map(np.asarray, fit_all())
  monkeypatch.setattr(gmm, 'ROUND_MIN', 2)
  assert gmm.round_sizes(s) == (16, 8, 4, 2)
  mix, info = jax.tree.map(np.asarray, fit_all())
  assert len(set(info['em_iters'])) > 4, info['em_iters']  # the runs do differ
  for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(mix)):
    np.testing.assert_array_equal(a, b)


def test_round_work_counts_each_round_until_the_next_size_remains(monkeypatch):
  monkeypatch.setattr(gmm, 'ROUND_MIN', 2)
  monkeypatch.setattr(gmm, 'ROUND_SHRINK', 4)
  iters = [5] * 12 + [10, 20, 30, 40]  # 16 runs: rounds of 16 then 4
  # 16 runs step until 4 still iterate (5 steps), then 4 until none (35 more)
  assert gmm.round_work(iters) == 16 * 5 + 4 * 35
  assert gmm.round_work(iters) < 16 * 40  # one while_loop: every run as long as the slowest


def test_fused_em_step_is_em_step_to_float32_rounding():
  xc = _blobs(0, 500)
  f_FxN, w_N = gmm.features(jnp.asarray(xc - xc.mean(0))), jnp.ones(500)
  start = gmm.Mixture(jnp.array([0.4, 0.6]), jnp.array([[-0.5, 0.1], [0.4, 0.0]]),
                      jnp.stack([jnp.eye(2), 0.5 * jnp.eye(2)]))
  a, bound_a = jax.jit(gmm.em_step, static_argnums=3)(start, f_FxN, w_N, 1e-6)
  b, bound_b = jax.jit(gmm.em_step_fused, static_argnums=3)(start, f_FxN, w_N, 1e-6)
  for u, v in zip(a, b):
    np.testing.assert_allclose(u, v, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(bound_a, bound_b, rtol=1e-6)


@pytest.mark.parametrize('k,d,n', [(2, 2, 500), (3, 3, 129)])
def test_triton_em_step_is_em_step_to_float32_rounding(k, d, n):
  # run as plain JAX here (interpret); N not a power of two: the kernel's block is masked
  rng = np.random.default_rng(k)
  x = rng.normal(size=(n, d)).astype(np.float32) * np.linspace(0.5, 2.0, d, dtype=np.float32)
  w_N = jnp.asarray(rng.uniform(0.5, 1.5, n).astype(np.float32))
  f_FxN = gmm.features(jnp.asarray(x - x.mean(0)))
  covs = np.stack([np.eye(d) * (1 + c) + 0.1 * (1 - np.eye(d)) for c in range(k)])
  start = gmm.Mixture(jnp.full(k, 1 / k), jnp.asarray(rng.normal(size=(k, d)), jnp.float32),
                      jnp.asarray(covs, jnp.float32))
  a, bound_a = jax.jit(gmm.em_step, static_argnums=3)(start, f_FxN, w_N, 1e-6)
  b, bound_b = jax.jit(lambda m, x, w: gmm.em_step_triton(m, x, w, 1e-6, interpret=True))(
      start, f_FxN[1:1 + d], w_N)
  for u, v in zip(a, b):
    np.testing.assert_allclose(u, v, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(bound_a, bound_b, rtol=1e-6)


@pytest.mark.heavy  # a fit compiled
@pytest.mark.parametrize('seed,fused', [(0, True), (1, True), (0, 'triton')])
def test_fused_fit_matches_scikit_learn(seed, fused):
  rng = np.random.default_rng(seed)
  x = np.concatenate([rng.normal(size=(300, 2)) * [1.0, 0.5] + [-4, 1],
                      rng.normal(size=(700, 2)) * [0.7, 1.2] + [3, -2]]).astype(np.float32)
  mix, info = jax.jit(lambda x, k: gmm.fit(x, jnp.ones(len(x)), k, CFG, fused=fused))(
      x, jax.random.key(seed))
  assert_gmm_matches_scikit_learn(mix, x, seed)
  assert bool(info['converged'])


# ----------------------------------------------------------------------------- compile-only


def _targets():
  """The compile-only targets, or a skip naming what is missing (a failure where
  COLLAPSE_JAX_REQUIRE_TARGETS is set: CI's stack with the extra must not skip)."""
  from collapse_jax.core import targets  # noqa: PLC0415
  for name in ('v5e', 'h100'):
    why = targets.available(name)
    if why:
      message = (f'cannot compile for {name} here ({why}): it needs the compile extra '
                 '(pip install -e ".[compile]", Python 3.12+) and JAX_PLATFORMS=cpu')
      if os.environ.get('COLLAPSE_JAX_REQUIRE_TARGETS'):
        pytest.fail(message)
      pytest.skip(message)
  return targets


@pytest.mark.heavy
@pytest.mark.parametrize('name', ['gmm', 'gaussian'])
def test_programs_compile_for_a_tpu_and_a_gpu_within_the_drivers_prediction(name):
  targets = _targets()
  if name == 'gmm':
    cfg = gmm.GMMConfig(seeds=64, generations=4, samples=200, heldout=200).validate()
    fam, sweep = gmm.family(cfg), cfg.sweep('replace')
  else:
    cfg = gaussian.GaussianConfig(seeds=256, generations=4, samples=(100,),
                                  regimes=('replace',)).validate()
    fam, sweep = gaussian.family(cfg), cfg.sweep('replace', 100)
  bigger = type(sweep)(**{**sweep.__dict__, 'seeds': 2 * sweep.seeds})
  found = {}
  for target in ('v5e', 'h100'):
    devices = targets.devices(target)
    needs = []
    for s in (sweep, bigger):
      _, per_device, first, advance, shapes, need = driver.compile_sweep(fam, s, 2,
                                                                         devices=devices)
      assert per_device == s.seeds and first.executable and advance.executable
      text = advance.executable.as_text()
      if devices[0].platform == 'tpu':  # compiled for the TPU: its tiled layouts
        assert ':T(' in text
      if name == 'gmm':  # EM's step on an NVIDIA GPU: the one-pass Triton kernel
        assert ('xla.gpu.triton' in text) == (devices[0].platform == 'gpu'), target
      held = sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(shapes[:2]))
      assert need >= held, (target, need, held)  # it holds at least the runs' state
      needs.append(need)
    # placement.check_memory's model, bytes proportional to the runs a device holds, must not
    # underestimate: twice the runs need more bytes, and at most twice as many (tiles and
    # fixed buffers make small batches cost more per run, never less)
    assert needs[0] < needs[1] <= 2 * needs[0], (target, needs)
    found[target] = needs[1] - needs[0]
  if name == 'gmm':  # TPU tiles filled: a v5e's bytes per added run at most twice an H100's
    assert found['v5e'] <= 2 * found['h100'], found


def test_the_largest_batch_search_brackets_the_capacity(monkeypatch):
  from benchmarks import compiled  # noqa: PLC0415
  compiles = []

  def fake(case, target, seeds, chunk):  # 1 MB a run and 100 MB shared: 60 GB holds 59,900
    compiles.append(seeds)
    return 100e6 + 1e6 * seeds, None, 0.0, ''
  monkeypatch.setattr(compiled, 'compile_advance', fake)
  case = compiled.Case('fake', None, None, 1024)
  lo, hi, used = compiled.largest(case, 'h100', {}, lambda line: None, 1 << 20, 8, 1)
  assert lo <= 59_900 < hi and hi - lo <= max(1024, lo // 16), (lo, hi)
  assert used == len(compiles) <= 8


def _matmul_params(config) -> int:
  """Weights a token multiplies by in the layers' matmuls and the logits' (biases aside)."""
  e, f = config.hidden_size, config.ffn_dim
  return config.num_hidden_layers * (4 * e * e + 2 * e * f) + config.vocab_size * e


@pytest.mark.heavy  # twelve compiles for two compile-only targets
@pytest.mark.parametrize('target,dtype', [('v5e', 'bfloat16'), ('h100', 'float32')])
def test_vae_and_opt_steps_compile_within_the_target_and_count_every_layer(target, dtype):
  targets = _targets()
  from benchmarks import compiled  # noqa: PLC0415
  from collapse_jax.families import lm  # noqa: PLC0415
  from collapse_jax.nets import opt  # noqa: PLC0415
  shape = dict(opt.TINY, vocab_size=512)  # 2 layers: the layer scans must be counted twice
  lm_cfg = lm.LMConfig(batch=4, gen_batch=2, new_tokens=4)
  cases = compiled.vae_case(None, 2) + compiled.opt_cases((dtype,), shape, lm_cfg)
  t = targets.get(target)
  for case in cases:
    need, exe, _, why = compiled.compile_advance(case, target, case.size, 1)
    assert exe is not None and 0 < need < t.memory * t.usable, (case.name, need, why)
    flops = compiled.per_step(case, target, exe, case.size, lambda line: None)['total']['flops']
    if 'OPT' not in case.name:
      continue
    # a lower bound: each token's matmuls, 2 flops a weight (6 in training: forward, and the
    # backward's two); attention, norms and the optimiser come on top, far less at this size
    p = _matmul_params(opt.OPTConfig(**shape))
    if 'fine-tuning' in case.name:
      bound = 6 * p * lm_cfg.batch * compiled.BLOCK
    else:  # the prompts once (no logits but the last), then each beam's tokens after the first
      prompt = 2 * (p - shape['vocab_size'] * shape['hidden_size']) * compiled.BLOCK
      bound = lm_cfg.gen_batch * (prompt + 2 * p * lm_cfg.beams * (lm_cfg.new_tokens - 1))
    assert bound <= flops <= 1.6 * bound, (case.name, flops, bound)
