"""Training OPT: AdamW and its learning-rate schedules, each token's loss, the jitted step
(one model, or seeds stacked and vmapped) and each block's mean loss."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from collapse_jax.nets.opt import OPT, OPTConfig, causal, positions



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
