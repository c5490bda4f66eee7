"""Fine-tuning the language model: seeds stacked and trained together, each on its own blocks,
the best epoch by validation loss kept, and each block's loss under each seed's model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from collapse_jax.core import checkpoints, placement
from collapse_jax.families.lm import arrays
from collapse_jax.nets import opt, opt_train


@functools.partial(jax.jit, static_argnames='config')
def _seeds_block_nll(config, params_S, ids_SxBxL):
  return jax.vmap(functools.partial(opt_train.block_nll, config))(params_S, ids_SxBxL)


def block_nll(config, params_S, ids, batch: int):
  """nll_SxN: every block's mean next-token negative log-likelihood under each seed's model;
  the blocks are the same for every seed (ids_NxL) or each seed's own (ids_SxNxL)."""
  s = jax.tree.leaves(params_S)[0].shape[0]
  ids_SxNxL = np.broadcast_to(ids, (s, *ids.shape[-2:]))
  out = [placement.to_host(_seeds_block_nll(config, params_S, arrays.split(x)))[:, :n]
         for _, x, n in arrays.chunks(ids_SxNxL, batch)]
  return np.concatenate(out, axis=1)


@functools.lru_cache(maxsize=4)
def _trainer(config: opt.OPTConfig, train: opt_train.TrainConfig, total_steps: int):
  """The optimiser and the compiled step over stacked seeds, shared by generations of the same length."""
  tx = opt_train.optimizer(train, total_steps)
  return tx, opt_train.make_train_step(config, tx, stacked=True)


def fine_tune(cfg, config, params_S, ids_SxNxL, valid_NxL, keys, directory: str,
              desc: str, progress: bool):
  """Each seed's parameters at its epoch with the lowest validation loss, and every epoch's
  validation loss (losses_SxE). Seeds train together, each on its own blocks (ids_SxNxL) in
  the order drawn from its own key.

  The state is saved after each epoch in `directory`, and a restarted call goes on from there.
  """
  seeds, n = ids_SxNxL.shape[:2]
  steps = n // cfg.batch
  tx, step_fn = _trainer(config, cfg.train, steps * cfg.epochs)
  params = arrays.replicated(params_S)
  state = {'params': params, 'opt': arrays.replicated(jax.vmap(tx.init)(params)),
           'best': params, 'losses': np.full((seeds, cfg.epochs), np.nan, np.float32)}
  manager = checkpoints.manager(directory, keep=1)  # a damaged epoch is moved aside, then redone
  done = manager.latest_step() or 0
  if done:  # onto the same shardings
    held = {k: v for k, v in state.items() if k != 'losses'}
    state = manager.restore(done, args=ocp.args.StandardRestore(
        {**arrays.like(held), 'losses': state['losses']}))
  # Training donates its buffers: work on a copy, so the caller's parameters (the
  # pretrained ones, reused by every generation) and the best epoch's survive.
  params, opt_state, best = jax.tree.map(jnp.copy, state['params']), state['opt'], state['best']
  losses = np.array(placement.to_host(state['losses']))
  bar = tqdm(total=steps * cfg.epochs, initial=steps * done, desc=desc,
             disable=not progress or not placement.is_primary(), leave=False)
  for epoch in range(done, cfg.epochs):
    order_keys, step_keys = zip(*(jax.random.split(jax.random.fold_in(k, epoch)) for k in keys))
    order_SxN = np.stack([np.asarray(jax.random.permutation(k, n)) for k in order_keys])
    step_key_S = jnp.stack(step_keys)
    for s in range(steps):
      rows_SxB = order_SxN[:, s * cfg.batch:(s + 1) * cfg.batch]
      batch = arrays.split(np.take_along_axis(ids_SxNxL, rows_SxB[:, :, None], axis=1))
      step_key = arrays.fold_in(step_key_S, s)
      params, opt_state, loss_S = step_fn(params, opt_state, batch, step_key)
      bar.update()
      if s % 20 == 0:
        bar.set_postfix(loss=' '.join(f'{x:.3f}' for x in placement.to_host(loss_S)), refresh=False)
    losses[:, epoch] = block_nll(config, params, valid_NxL, cfg.eval_batch).mean(axis=1)
    better_S = losses[:, epoch] <= np.nanmin(losses, axis=1)
    best = jax.tree.map(lambda b, p: jnp.where(better_S.reshape(-1, *[1] * (p.ndim - 1)), p, b),
                        best, params)  # new buffers: the step donates params'
    checkpoints.save(manager, epoch + 1, ocp.args.StandardSave(
        {'params': params, 'opt': opt_state, 'best': best, 'losses': losses}))
  bar.close()
  manager.close()
  return best, losses
