"""OPT-125m fine-tuning and beam-search tokens per second: this project against `transformers`, same run.

  python -m benchmarks.opt_throughput                    # 5 train steps of 8x64; 8 prompts (~2 min on 2 cores)
  python -m benchmarks.opt_throughput --batch=32 --train_steps=20 --prompts=64 --gen_repeats=3   # on a GPU
  python -m benchmarks.opt_throughput --train_seeds=2,5 --prompts=0 --skip_torch_train   # seeds at once

Both sides run the same random OPT-125m (`transformers.OPTConfig()`'s defaults, which are
facebook/opt-125m's shape): PyTorch builds it, save_pretrained writes it, and opt_weights.load reads
the same weights into Flax. Training is AdamW (lr 5e-5, no weight decay) on B blocks of 64
tokens with dropout on: ours is opt_train.make_train_step, theirs PyTorch's eager loop (loss from
model(ids, labels=ids), backward, step, zero_grad). Generation is the paper's: 5 beams,
exactly 64 new tokens after P prompts of 64 tokens; ours is opt_decode.beam_search, theirs
model.generate. Our compile time is measured apart and excluded; both sides run `--warmup`
untimed train steps, and one untimed generation call of `--gen_warmup_tokens` new tokens
(same prompts and beams), before the timed ones. The tokens both sides generate are compared
row by row. `--train_seeds` also times S copies of the model trained together, as the experiment
trains its seeds (stacked, the step vmapped), against S times one model's step.
"""

import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from collapse_jax.core import cli, validation
from collapse_jax.nets import opt, opt_decode, opt_train, opt_weights

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags: defined when it runs, not when benchmarks.accelerator imports it."""
  flags.DEFINE_integer('batch', 8, 'Blocks per train step.')
  flags.DEFINE_integer('block', 64, 'Tokens per block.')
  flags.DEFINE_integer('train_steps', 5, 'Train steps timed, for both sides; 0 to skip training.')
  flags.DEFINE_integer('prompts', 8, 'Prompts generated from together; 0 to skip generation.')
  flags.DEFINE_integer('prompt_len', 64, 'Tokens per prompt.')
  flags.DEFINE_integer('new_tokens', 64, 'New tokens per prompt.')
  flags.DEFINE_integer('beams', 5, 'Beams per prompt.')
  flags.DEFINE_float('repetition_penalty', 1.0, 'CTRL repetition penalty (the paper uses 1.0 and 2.0).')
  flags.DEFINE_integer('gen_repeats', 1, 'Timed generation calls, for both sides.')
  flags.DEFINE_integer('warmup', 1, 'Untimed train steps before timing, both sides.')
  flags.DEFINE_integer('gen_warmup_tokens', 4, 'New tokens of the one untimed generation call each side '
                       'makes before timing (same prompts and beams); 0 for none.')
  flags.DEFINE_list('train_seeds', [], 'Also time this many seeds trained together (vmapped), for each '
                    'number in the list.')
  flags.DEFINE_bool('skip_torch_train', False, 'Time only our training.')
  flags.DEFINE_bool('skip_torch_gen', False, 'Time only our generation (no token comparison).')


def reference_model(directory: str, device: str, shape: dict | None = None):
  """A random OPT-125m-shaped OPTForCausalLM (or of `shape`, OPTConfig fields such as
  opt.TINY), saved to `directory` and returned on `device`."""
  import torch  # noqa: PLC0415 (a benchmark-only dependency)
  import transformers  # noqa: PLC0415

  transformers.utils.logging.disable_progress_bar()
  torch.manual_seed(0)
  model = transformers.OPTForCausalLM(transformers.OPTConfig(**(shape or {})))
  model.save_pretrained(directory)
  return model.to(device)


def sync(device: str):
  import torch  # noqa: PLC0415
  if device == 'cuda':
    torch.cuda.synchronize()


# ----------------------------------------------------------------------------- fine-tuning


def ours_train(config, params, ids_KxBxL, warmup: int, seeds: int = 0):
  """(compile seconds, run seconds, last loss) of opt_train.make_train_step over the K batches; with
  `seeds`, that many copies of the model train together (stacked), each on the same batches."""
  tx = opt_train.optimizer(opt_train.TrainConfig(learning_rate=5e-5), warmup + len(ids_KxBxL))
  init = tx.init
  if seeds:
    params = jax.tree.map(lambda p: jnp.repeat(p[None], seeds, axis=0), params)
    ids_KxBxL = np.repeat(np.asarray(ids_KxBxL)[:, None], seeds, axis=1)
    init = jax.vmap(tx.init)
  params = jax.tree.map(lambda p: p.copy(), params)  # the step donates them
  state = (params, jax.jit(init)(params))
  warmup_key, key = jax.random.split(jax.random.key(0), (2, seeds) if seeds else 2)
  t0 = time.perf_counter()
  step = opt_train.make_train_step(config, tx, stacked=bool(seeds)).lower(
      *state, ids_KxBxL[0], key).compile()
  compile_s = time.perf_counter() - t0
  fold = jax.vmap(jax.random.fold_in, in_axes=(0, None)) if seeds else jax.random.fold_in
  for k in range(warmup):
    state = step(*state, ids_KxBxL[k % len(ids_KxBxL)], fold(warmup_key, k))[:2]
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for k, ids_BxL in enumerate(ids_KxBxL):
    *state, loss = step(*state, ids_BxL, fold(key, k))
  loss = float(jax.block_until_ready(loss).mean())
  return compile_s, time.perf_counter() - t0, loss


def torch_train(model, ids_KxBxL, warmup: int, device: str):
  """(run seconds, last loss) of the same steps in PyTorch's eager loop, after `warmup` untimed steps."""
  import torch  # noqa: PLC0415

  model.train()
  adamw = torch.optim.AdamW(model.parameters(), lr=5e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
  ids_KxBxL = torch.from_numpy(np.asarray(ids_KxBxL, np.int64)).to(device)

  def step(ids_BxL):
    loss = model(input_ids=ids_BxL, labels=ids_BxL).loss
    loss.backward()
    adamw.step()
    adamw.zero_grad()
    return loss.detach()

  for k in range(warmup):
    step(ids_KxBxL[k % len(ids_KxBxL)])
  sync(device)
  t0 = time.perf_counter()
  for ids_BxL in ids_KxBxL:
    loss = step(ids_BxL)
  loss = loss.item()
  sync(device)
  return time.perf_counter() - t0, loss


# ----------------------------------------------------------------------------- beam search


def ours_generate(config, params, prompt_BxT, mask_BxT, warmup_tokens: int, repeats: int,
                  new_tokens: int, beams: int, repetition_penalty: float):
  """(compile seconds, seconds per call, new_BxN) of opt_decode.beam_search."""
  static = dict(beams=beams, repetition_penalty=repetition_penalty)
  if warmup_tokens:
    jax.block_until_ready(opt_decode.beam_search(config, params, prompt_BxT, mask_BxT, warmup_tokens,
                                                 **static))
  t0 = time.perf_counter()
  search = opt_decode.beam_search.lower(config, params, prompt_BxT, mask_BxT, new_tokens,
                                       **static).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(repeats):
    new_BxN = jax.block_until_ready(search(params, prompt_BxT, mask_BxT))
  return compile_s, (time.perf_counter() - t0) / repeats, np.asarray(new_BxN)


def torch_generate(model, prompt_BxT, mask_BxT, warmup_tokens: int, repeats: int, device: str,
                   new_tokens: int, beams: int, repetition_penalty: float):
  """(seconds per call, new_BxN) of model.generate with the same beams and lengths."""
  import torch  # noqa: PLC0415

  model.eval()
  ids, mask = (torch.from_numpy(np.asarray(a, np.int64)).to(device) for a in (prompt_BxT, mask_BxT))

  def call(tokens: int):
    with torch.no_grad():
      out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=beams,
                           max_new_tokens=tokens, min_new_tokens=tokens,
                           repetition_penalty=repetition_penalty)
    sync(device)
    return out

  if warmup_tokens:
    call(warmup_tokens)
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = call(new_tokens)
  return (time.perf_counter() - t0) / repeats, out[:, ids.shape[1]:].cpu().numpy()


# ----------------------------------------------------------------------------- main


def validate():
  checks = [('batch', FLAGS.batch >= 1), ('block', FLAGS.block >= 2), ('train_steps', FLAGS.train_steps >= 0),
            ('prompts', FLAGS.prompts >= 0), ('prompt_len', FLAGS.prompt_len >= 1),
            ('new_tokens', FLAGS.new_tokens >= 1), ('beams', FLAGS.beams >= 1),
            ('gen_repeats', FLAGS.gen_repeats >= 1), ('warmup', FLAGS.warmup >= 0),
            ('gen_warmup_tokens', 0 <= FLAGS.gen_warmup_tokens <= FLAGS.new_tokens),
            ('repetition_penalty', FLAGS.repetition_penalty > 0),
            ('train_seeds', all(s.isdigit() and int(s) >= 1 for s in FLAGS.train_seeds))]
  for flag, ok in checks:
    if not ok:
      raise validation.ConfigError(flag, 'is out of range (sizes and train_seeds positive; '
                                   'train_steps, prompts, warmup >= 0; gen_warmup_tokens at most '
                                   'new_tokens)')
  if max(FLAGS.block, FLAGS.prompt_len + FLAGS.new_tokens) > opt.OPTConfig().max_position_embeddings:
    raise validation.ConfigError('block', 'blocks and prompt + new tokens must fit 2048 positions')


def run(config, params, model, directory: str, device: str):
  """Prints the fine-tuning and beam-search rows for the model saved in `directory`."""
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415

  vocab = config.vocab_size
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()} (JAX {jax.__version__}); '
        f'PyTorch {torch.__version__} on {device}, {torch.get_num_threads()} threads; '
        f'transformers {transformers.__version__}; {os.cpu_count()} CPU cores')
  print(f'model: random OPT-125m shape ({sum(p.size for p in jax.tree.leaves(params)) / 1e6:.1f} M '
        f'parameters), float32')

  if FLAGS.train_steps:
    rng = np.random.default_rng(0)
    ids_KxBxL = rng.integers(3, vocab, (FLAGS.train_steps, FLAGS.batch, FLAGS.block)).astype(np.int32)
    tokens = FLAGS.train_steps * FLAGS.batch * FLAGS.block
    print(f'\nfine-tuning: AdamW, {FLAGS.batch} x {FLAGS.block} tokens a step, dropout on, '
          f'{FLAGS.train_steps} steps timed after {FLAGS.warmup} warm-up')
    compile_s, run_s, loss = ours_train(config, params, ids_KxBxL, FLAGS.warmup)
    rate = tokens / run_s
    print(f'  collapse-jax : {rate:9.1f} tok/s  ({run_s / FLAGS.train_steps:.2f} s/step; '
          f'compile {compile_s:.1f} s, excluded; last loss {loss:.3f})')
    if not FLAGS.skip_torch_train:
      run_s, ref_loss = torch_train(model, ids_KxBxL, FLAGS.warmup, device)
      ref = tokens / run_s
      print(f'  transformers : {ref:9.1f} tok/s  ({run_s / FLAGS.train_steps:.2f} s/step, eager; '
            f'last loss {ref_loss:.3f})')
      print(f'  ratio        : {rate / ref:9.2f}x  (target >= 1x on a CPU)')
    one_s = tokens / rate / FLAGS.train_steps
    for seeds in map(int, FLAGS.train_seeds):
      compile_s, run_s, loss = ours_train(config, params, ids_KxBxL, FLAGS.warmup, seeds)
      step_s = run_s / FLAGS.train_steps
      print(f'  {seeds:2d} seeds     : {seeds * tokens / run_s:9.1f} tok/s  ({step_s:.2f} s/step, '
            f'{step_s / one_s:.2f}x one seed\'s step; compile {compile_s:.1f} s, excluded)')

  if FLAGS.prompts:
    # the saved weights again: the train loop changed the model's
    model = transformers.OPTForCausalLM.from_pretrained(directory).to(device)
    rng = np.random.default_rng(1)
    prompt_BxT = rng.integers(3, vocab, (FLAGS.prompts, FLAGS.prompt_len)).astype(np.int32)
    mask_BxT = np.ones_like(prompt_BxT)
    new = FLAGS.prompts * FLAGS.new_tokens
    print(f'\nbeam search: {FLAGS.prompts} prompts x {FLAGS.prompt_len} tokens, {FLAGS.new_tokens} new, '
          f'{FLAGS.beams} beams, repetition penalty {FLAGS.repetition_penalty}; '
          f'{FLAGS.gen_repeats} timed call(s) after a warm-up of {FLAGS.gen_warmup_tokens} new tokens')
    search = dict(new_tokens=FLAGS.new_tokens, beams=FLAGS.beams,
                  repetition_penalty=FLAGS.repetition_penalty)
    compile_s, call_s, ours_BxN = ours_generate(config, params, prompt_BxT, mask_BxT,
                                                FLAGS.gen_warmup_tokens, FLAGS.gen_repeats, **search)
    rate = new / call_s
    print(f'  collapse-jax : {rate:9.1f} new tok/s  ({call_s:.2f} s/call; compile {compile_s:.1f} s, excluded)')
    if not FLAGS.skip_torch_gen:
      call_s, theirs_BxN = torch_generate(model, prompt_BxT, mask_BxT, FLAGS.gen_warmup_tokens,
                                          FLAGS.gen_repeats, device, **search)
      ref = new / call_s
      print(f'  transformers : {ref:9.1f} new tok/s  ({call_s:.2f} s/call)')
      print(f'  ratio        : {rate / ref:9.2f}x  (target >= 3x on a CPU)')
      rows = (ours_BxN == theirs_BxN).all(axis=1)
      print(f'  tokens       : {rows.sum()} of {len(rows)} rows identical; '
            f'{(ours_BxN == theirs_BxN).mean():.1%} of tokens equal')


def main(argv):
  del argv
  try:
    validate()
  except validation.ConfigError as e:
    cli.fail(e)
  import torch  # noqa: PLC0415

  torch.set_num_threads(os.cpu_count() or 1)
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  with tempfile.TemporaryDirectory() as directory:
    model = reference_model(directory, device)
    config, params = opt_weights.load(directory)
    run(config, params, model, directory, device)


if __name__ == '__main__':
  define_flags()
  app.run(main)
