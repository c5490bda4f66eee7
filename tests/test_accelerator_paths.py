"""The code paths an accelerator takes, forced on the CPU and checked against the CPU's own.

On a CPU the driver runs EM one run at a time, the language model trains one seed at a
time, and decompositions go one matrix per call; an accelerator takes the vectorised
branch of each. bf16 compute is a flag there. Each test runs both branches here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from collapse_jax.core import driver, linalg, placement
from collapse_jax.families import gmm, lm
from collapse_jax.families.lm import experiment
from collapse_jax.nets import opt, opt_train


@pytest.fixture
def on_an_accelerator(monkeypatch):
  """jax.default_backend() answers 'gpu' wherever the code asks it which branch to take."""
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')


def test_an_accelerator_vectorises_a_devices_runs_and_a_cpu_does_not(on_an_accelerator):
  em = gmm.family(gmm.GMMConfig(seeds=2, generations=1).validate())
  assert em.one_at_a_time_on_cpu and placement.default_width(em, 7) == 7
  assert experiment.seeds_at_once(lm.LMConfig(seeds=3)) == 3
  assert experiment.seeds_at_once(lm.LMConfig(seeds=3, parallel_seeds=2)) == 2


def test_a_cpu_runs_em_and_the_language_models_seeds_one_at_a_time():
  em = gmm.family(gmm.GMMConfig(seeds=2, generations=1).validate())
  assert placement.default_width(em, 7) == 1
  assert experiment.seeds_at_once(lm.LMConfig(seeds=3)) == 1


@pytest.mark.e2e
def test_em_vectorised_over_a_devices_runs_stops_each_at_its_own_convergence(tmp_path):
  cfg = gmm.GMMConfig(seeds=8, generations=2, samples=150, heldout=50,
                      checkpoint_every=2).validate()
  family, sweep = gmm.family(cfg), cfg.sweep('replace')
  alone = driver.run(family, sweep, str(tmp_path / 'alone'), 2, progress=False, width=1)
  wide = driver.run(family, sweep, str(tmp_path / 'wide'), 2, progress=False, width=8)
  # Vectorised, each run still stops at its own convergence: a group that ran on to its
  # slowest member would report that member's count for all, and could only fit closer.
  iters = wide['em_iters']
  assert np.all(wide['converged']) and len(np.unique(iters[0])) > 4
  assert np.all(np.median(iters, axis=1) < iters.max(axis=1))
  # Generation 0 fits the same data either way. Vectorised sums round differently, which can
  # move a convergence test on its threshold by an iteration; later generations draw from
  # those fits, so from there on the two runs are different samples of the same process.
  np.testing.assert_allclose(iters[0], alone['em_iters'][0], atol=2)
  for name in ('l2sq_true', 'total_var', 'heldout_ll'):
    np.testing.assert_allclose(wide[name][0], alone[name][0], rtol=1e-3, atol=1e-4,
                               err_msg=name)


@pytest.mark.parametrize('name', ['qr_r', 'svdvals', 'eigh'])
def test_batched_decompositions_equal_one_matrix_per_call(name, monkeypatch):
  f = getattr(linalg, name)
  a_BxDxD = jax.random.normal(jax.random.key(1), (12, 5, 5))
  a_BxDxD = a_BxDxD @ a_BxDxD.swapaxes(1, 2) if name == 'eigh' else a_BxDxD
  per_call = jax.vmap(f)(a_BxDxD)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  batched = jax.vmap(f)(a_BxDxD)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5),
               batched, per_call)


SMALL = opt.OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32, dropout=0.0)


def _fine_tune(config, stacked_seeds=0, steps=12):
  """Losses of `steps` AdamW steps on a fixed batch, from the same initial weights."""
  params = opt.init(SMALL, jax.random.key(0))
  ids_BxL = jax.random.randint(jax.random.key(1), (4, 16), 3, SMALL.vocab_size)
  tx = optax.adamw(3e-3)
  key = jax.random.key(2)
  if stacked_seeds:
    params = jax.tree.map(lambda p: jnp.stack([p] * stacked_seeds), params)
    ids_BxL = jnp.stack([ids_BxL] * stacked_seeds)
    key = jnp.stack([key] * stacked_seeds)
  state = jax.vmap(tx.init)(params) if stacked_seeds else tx.init(params)
  step = opt_train.make_train_step(config, tx, stacked=bool(stacked_seeds))
  losses = []
  for _ in range(steps):
    params, state, loss = step(params, state, ids_BxL, key)
    losses.append(np.asarray(loss))
  return np.stack(losses)


@pytest.fixture(scope='session')
def float32_losses():
  return _fine_tune(SMALL)


@pytest.mark.e2e
def test_stacked_seeds_train_as_one_seed_does(float32_losses):
  one = float32_losses
  three = _fine_tune(SMALL, stacked_seeds=3)
  for s in range(3):
    np.testing.assert_allclose(three[:, s], one, rtol=2e-5)


@pytest.mark.e2e
def test_bfloat16_fine_tuning_follows_float32(float32_losses):
  full = float32_losses
  half = _fine_tune(opt.OPTConfig(**{**SMALL.__dict__, 'dtype': 'bfloat16'}))
  assert half.dtype == np.float32 and full[-1] < 0.8 * full[0]  # it learns
  np.testing.assert_allclose(half, full, rtol=0.03)
  # ...and is not the float32 computation under another name.
  assert np.abs(half - full).max() > 1e-5
