"""The one prepared command for a GPU machine: the headline figures against their targets.

  PYTHONPATH=. python -m benchmarks.accelerator --out=runs/accelerator    # one H100/H200: < 8 min
  PYTHONPATH=. python -m benchmarks.accelerator --out=/tmp/acc --smoke    # toy sizes, on a CPU
  PYTHONPATH=. python -m benchmarks.accelerator --out=DIR --parts=gmm,vae # some parts only

It needs only what an accelerator image has (JAX, Flax, Optax, Orbax, transformers, PyTorch,
scikit-learn): no install step, no data, no network. Each part reuses the other benchmark
modules' functions; compile time is measured apart, and every reference runs on the same
machine in the same run.

  gmm       the paper's GMM protocol (gmm.GMMConfig's defaults) at 4,096 seeds x 2,000
            generations: warm seconds (target under 60 s) and generation-fits/s; scikit-learn's
            GaussianMixture refitted in a Python loop on a few seeds and generations, and the
            protocol in NumPy vectorised over seeds (benchmarks.numpy_gmm); both ratios.
  gmm_max   the largest GMM seed count one device holds, from compile-only memory figures
            (driver.compile_sweep's bytes against placement.device_memory()): doubling, several
            doublings at once where the bytes per seed so far say they fit, then bisection;
            then the generation-fits/s of a short run at that size.
  gaussian  the 1-D Gaussian (M = 100, replace) at 1,000,000 seeds x 1,000 generations: warm
            seconds and fits/s, against the NumPy loop and the NumPy vectorised over seeds of
            benchmarks.gaussian_throughput.
  vae       the VAE's train step for one seed and for 8 vmapped (target: 8 in at most 1.25x
            one's time); one synthetic generation of the official protocol (vae.VAEConfig's
            defaults: 8 seeds together, every batch decoded fresh) through the driver's compiled
            program, on MNIST or, where collapse_jax.data.mnist finds none, random images of its shape.
  lm        an OPT-125m-shaped model (random weights, float32) against `transformers` on the
            same device: 5-beam search, 64 prompts x 64 tokens + 64 new (target: at least 5x
            its new tokens/s), and fine-tuning steps; then one generation of the language-model
            experiment (lm.LMConfig's defaults: the official preset, 5 seeds together),
            extrapolated from timed train steps, beam-search calls and perplexity calls times
            the number of each a generation makes.

The loops that could run long have time budgets (Sizes): one that passes its budget stops, its
figure is extrapolated, and the table says so. DIR/accelerator.md (a table: part, size,
figure, target, met?) and DIR/accelerator.json (the same, with the device, versions and flags)
are rewritten atomically after every figure, so a killed run keeps what finished. A part that
fails (an exception, out of device memory included) is recorded with its one-line error, and
the run goes on to the next; the exit status is 1 if any failed. --smoke keeps XLA's
compiled programs in a cache in the temporary directory (unless JAX_COMPILATION_CACHE_DIR
names one), so that a second smoke run skips most of its compiling.
"""

import dataclasses
import gc
import importlib.metadata
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import gaussian_throughput, gmm_throughput, opt_throughput, timing, vae_throughput
from collapse_jax import data
from collapse_jax.core import cli, driver, files, placement, protocol, validation
from collapse_jax.data import mnist
from collapse_jax.families import gaussian, gmm, lm, vae
from collapse_jax.families.lm import decoding, experiment, training
from collapse_jax.nets import conv_vae, opt, opt_weights

FLAGS = flags.FLAGS
PARTS = ('gmm', 'gmm_max', 'gaussian', 'vae', 'lm')


def define_flags():
  flags.DEFINE_string('out', None, 'Directory for accelerator.md and accelerator.json.')
  flags.DEFINE_list('parts', list(PARTS), f'Parts to run, in this order: {", ".join(PARTS)}.')
  flags.DEFINE_bool('smoke', False, 'The same code at toy sizes, for a CPU: that every part runs '
                    '(its figures are not the targets\').')
  flags.mark_flag_as_required('out')


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What each part runs: the defaults are sized for 8 minutes on one H100/H200 (from estimates:
  no GPU has run them yet). A *_s field is a time budget: a loop still running past it stops,
  and its figure is extrapolated."""
  gmm_seeds: int = 4096
  gmm_generations: int = 2000
  gmm_chunk: int = 100
  gmm_budget_s: float = 75.0
  sklearn_seeds: int = 4
  sklearn_generations: int = 10
  gmm_numpy_seeds: int = 256  # the NumPy reference vectorised over seeds, on the host CPU
  gmm_numpy_generations: int = 10
  # benchmarks.compiled (compile-only, H100 target): 65,536 seeds need 6.7 GiB, 4,096 need
  # 0.39 GiB, so the search starts where one compile already says it fits
  max_first_seeds: int = 65536
  max_generations: int = 2  # of the timed run at the largest size, one chunk
  max_search_s: float = 45.0
  max_bisections: int = 4
  max_memory_of_first: float = 0.0  # 0: the device's memory; x: pretend x times the first's bytes
  max_seeds_cap: int = 1 << 24
  gaussian_seeds: int = 1_000_000
  gaussian_generations: int = 1000
  gaussian_samples: int = 100
  gaussian_chunk: int = 100
  gaussian_budget_s: float = 60.0
  numpy_seeds: int = 20
  numpy_vec_seeds: int = 10_000
  numpy_vec_generations: int = 100
  vae_batch: int = 256
  vae_steps: int = 20
  vae_seeds: int = 8
  vae_repeats: int = 3
  vae_protocol: dict = dataclasses.field(default_factory=dict)  # vae.VAEConfig fields changed
  vae_generation_s: float = 40.0
  opt_shape: dict = dataclasses.field(default_factory=dict)  # OPTConfig fields; {}: OPT-125m
  lm_prompts: int = 64
  lm_prompt_len: int = 64
  lm_new_tokens: int = 64
  lm_beams: int = 5
  lm_gen_repeats: int = 2
  lm_train_batch: int = 128
  lm_train_steps: int = 5
  lm_protocol: dict = dataclasses.field(default_factory=dict)  # lm.LMConfig fields changed
  lm_protocol_steps: int = 3


# Toy sizes for a CPU: each program still compiles (most of the time), so the GMM search
# stops at its cap after the first size (tests/test_accelerator_benchmark.py searches with
# made-up byte counts instead), and the OPT is one layer of a small vocabulary.
SMOKE = Sizes(
    gmm_seeds=4, gmm_generations=2, gmm_chunk=2, sklearn_seeds=1, sklearn_generations=2,
    gmm_numpy_seeds=4, gmm_numpy_generations=2, numpy_vec_seeds=100, numpy_vec_generations=5,
    max_first_seeds=4, max_generations=2, max_memory_of_first=1.5, max_seeds_cap=4,
    gaussian_seeds=1000, gaussian_generations=20, gaussian_chunk=10, numpy_seeds=2,
    vae_batch=32, vae_steps=2, vae_seeds=2, vae_repeats=1,
    vae_protocol=dict(seeds=2, samples=256, epochs=1, batch=32, eval_images=64, test_images=64),
    opt_shape=dict(opt.TINY, num_hidden_layers=1, vocab_size=512, hidden_size=32,
                   word_embed_proj_dim=32, ffn_dim=64, num_attention_heads=2),
    lm_prompts=2, lm_prompt_len=8, lm_new_tokens=4, lm_gen_repeats=1, lm_train_batch=4,
    lm_train_steps=2, lm_protocol_steps=2,
    lm_protocol=dict(seeds=2, batch=4, eval_batch=2, gen_batch=2, block=8, new_tokens=4,
                     train_blocks=64, eval_blocks=16))

SMOKE_CACHE = os.path.join(tempfile.gettempdir(), 'collapse_jax_smoke_xla_cache')
DATA = data.directory()  # $COLLAPSE_JAX_DATA, else the user's cache

# WikiText-2 in 64-token blocks of the OPT tokenizer (each row tokenised with its BOS, as
# lm.inputs.load_data does): validation and test counted on the shared copies; train, which is not
# there, estimated as validation's count times the train/validation ratio of words in
# Merity et al.'s WikiText table (2,088,628 / 217,646).
VALID_BLOCKS, TEST_BLOCKS = 3922, 4494
TRAIN_BLOCKS = round(VALID_BLOCKS * 2_088_628 / 217_646)


# ----------------------------------------------------------------------------- the report


def _one_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0] if text else ""}'[:300]


def _number(value: float) -> str:
  if value != value or math.isinf(value):
    return str(value)
  if abs(value) >= 100:
    return f'{value:,.0f}'
  return f'{value:.1f}' if abs(value) >= 10 else f'{value:.3g}'


def _cell(text) -> str:
  return str(text).replace('|', '\\|').replace('\n', ' ')


class Report:
  """The parts' figures, rewritten to DIR/accelerator.{md,json} after each one."""

  def __init__(self, out: str, parts, smoke: bool, info: dict):
    self.out, self.smoke, self.info = out, smoke, info
    self.t0 = self.part_t0 = time.perf_counter()
    self.parts = {p: {'part': p, 'status': 'not run', 'seconds': None, 'error': None, 'rows': []}
                  for p in parts}

  def add(self, part: str, size: str, figure: str, value: float, unit: str = '', note: str = '',
          target: str = '', met: bool | None = None):
    """Records one figure; at smoke sizes a target is shown but not judged."""
    row = {'size': size, 'figure': figure, 'value': float(value), 'unit': unit, 'note': note,
           'target': target, 'met': None if self.smoke or not target else bool(met)}
    self.parts[part]['rows'].append(row)
    judged = '' if row['met'] is None else f' [{target}: {"met" if row["met"] else "NOT met"}]'
    print(f'[{part}] +{time.perf_counter() - self.part_t0:5.1f} s  {figure}: {_number(value)} '
          f'{unit}{judged}' + (f'  ({note})' if note else ''), flush=True)
    self.write()

  def status(self, part: str, status: str, seconds: float | None = None, error: str | None = None):
    if status == 'running':
      self.part_t0 = time.perf_counter()
    self.parts[part].update(status=status, seconds=seconds, error=error)
    self.write()

  def write(self, finished: bool = False):
    data = {**self.info, 'smoke': self.smoke, 'finished': finished,
            'wall_s': time.perf_counter() - self.t0, 'parts': list(self.parts.values())}
    files.write_text(os.path.join(self.out, 'accelerator.json'),
                     json.dumps(data, indent=1) + '\n')
    files.write_text(os.path.join(self.out, 'accelerator.md'), self.markdown(data))

  def markdown(self, data) -> str:
    v = data['versions']
    lines = [f'# {"Smoke run (toy sizes)" if self.smoke else "Accelerator benchmark"}', '',
             f'- command: `{data["command"]}`',
             f'- device: {data["device"]["kind"]} x {data["device"]["count"]} '
             f'({data["device"]["platform"]}; {data["device"]["memory_gib"]:.1f} GiB for JAX)',
             f'- versions: Python {v["python"]}, jax {v["jax"]}, jaxlib {v["jaxlib"]}, '
             f'torch {v["torch"]}, transformers {v["transformers"]}',
             f'- started {data["started"]}; '
             f'{"finished in" if data["finished"] else "running for"} {data["wall_s"]:.0f} s', '',
             '| part | size | figure | target | met? |', '|---|---|---|---|---|']
    for p in data['parts']:
      for r in p['rows']:
        met = {True: 'yes', False: '**no**', None: 'n/a (smoke)' if r['target'] else ''}[r['met']]
        figure = f'{r["figure"]}: {_number(r["value"])} {r["unit"]}'.rstrip()
        figure += f' ({r["note"]})' if r['note'] else ''
        lines.append('| ' + ' | '.join(_cell(c) for c in (p['part'], r['size'], figure,
                                                          r['target'], met)) + ' |')
      if p['status'] != 'ok':
        seconds = f' after {p["seconds"]:.1f} s' if p['seconds'] is not None else ''
        what = f'**failed**{seconds}: {p["error"]}' if p['status'] == 'failed' else p['status']
        lines.append(f'| {p["part"]} | | {_cell(what)} | | |')
    return '\n'.join(lines) + '\n'


def _versions() -> dict:
  out = {'python': platform.python_version()}
  for name in ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin', 'flax', 'optax',
               'orbax-checkpoint', 'torch', 'transformers', 'scikit-learn', 'numpy'):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      if name in ('jax', 'jaxlib', 'torch', 'transformers'):
        out[name] = 'absent'
  return out


def _info(parts) -> dict:
  device = jax.devices()[0]
  env = {k: v for k, v in os.environ.items() if k.startswith((  # what changes what is measured
      'XLA_', 'JAX_', 'COLLAPSE_JAX_', 'TF_CPP_', 'CUDA_VISIBLE_DEVICES', 'NVIDIA_TF32_OVERRIDE',
      'PYTORCH_', 'TORCH_', 'OMP_NUM_THREADS'))}
  return {'command': ' '.join(['python -m benchmarks.accelerator'] + sys.argv[1:]),
          'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
          'device': {'kind': device.device_kind, 'platform': device.platform,
                     'count': jax.device_count(), 'memory_gib': placement.device_memory() / 2**30},
          'versions': _versions(),
          'flags': {'out': FLAGS.out, 'parts': list(parts), 'smoke': FLAGS.smoke,
                    'jax_default_matmul_precision': str(jax.config.jax_default_matmul_precision),
                    'jax_compilation_cache_dir': jax.config.jax_compilation_cache_dir,
                    'jax_enable_x64': bool(jax.config.jax_enable_x64), 'env': env}}


# ----------------------------------------------------------------------------- the GMM


_GMM_PROGRAMS = {}  # (seeds, generations, chunk) -> (compile seconds, compiled): the latest only


def _gmm_programs(seeds: int, generations: int, chunk: int):
  """(compile seconds, driver.compile_sweep's result) of the paper's GMM sweep; the latest is
  kept, so a part asking for the size the previous one compiled (at smoke sizes) reuses it."""
  key = (seeds, generations, chunk)
  if key not in _GMM_PROGRAMS:
    _GMM_PROGRAMS.clear()
    cfg = gmm.GMMConfig(seeds=seeds, generations=generations).validate()
    _GMM_PROGRAMS[key] = timing.compile_seconds(gmm.family(cfg), cfg.sweep('replace'), chunk)
  return _GMM_PROGRAMS[key]


def _seeds(n: int) -> str:
  return f'{n:,} seed{"s" * (n != 1)}'


def _bytes(n: float) -> str:
  for unit in ('B', 'KiB', 'MiB', 'GiB'):
    if n < 1024 or unit == 'GiB':
      return f'{n:,.1f} {unit}'
    n /= 1024


def gmm_part(s: Sizes, add):
  cfg = gmm.GMMConfig(seeds=s.gmm_seeds, generations=s.gmm_generations).validate()
  size = f'{cfg.seeds:,} seeds x {cfg.generations:,} generations'
  compile_s, compiled = _gmm_programs(cfg.seeds, cfg.generations, s.gmm_chunk)
  first_s, run_s, done = timing.run_seconds(compiled, cfg.generations, s.gmm_chunk, s.gmm_budget_s)
  warm_s = first_s + (run_s - first_s) * cfg.generations / done
  how = f'compile {compile_s:.1f} s apart'
  if done < cfg.generations:
    how += (f'; extrapolated from {done:,} generations in {run_s:.1f} s, the run stopped by its '
            f'{s.gmm_budget_s:.0f} s budget')
  add(size, 'warm seconds', warm_s, 's', how, '< 60 s', warm_s < 60)
  rate = cfg.seeds * cfg.generations / warm_s
  add(size, 'generation-fits/s', rate, 'fits/s', f'{_bytes(compiled[-1])} a device needs')
  ref_size = f'{_seeds(s.sklearn_seeds)} x {s.sklearn_generations} generations'
  ref = gmm_throughput.scikit_learn(cfg, s.sklearn_seeds, s.sklearn_generations)
  add(ref_size, 'scikit-learn fits/s', ref, 'fits/s', 'GaussianMixture refitted in a Python loop')
  add(size, 'ratio to scikit-learn', rate / ref, 'x')
  vec = gmm_throughput.numpy_vectorised(cfg, s.gmm_numpy_seeds, s.gmm_numpy_generations)[0]
  add(f'{_seeds(s.gmm_numpy_seeds)} x {s.gmm_numpy_generations} generations',
      'NumPy vectorised fits/s', vec, 'fits/s', 'float32, all seeds at once, metrics included')
  add(size, 'ratio to NumPy vectorised', rate / vec, 'x')


def _largest_seeds(s: Sizes, log):
  """(largest seeds that fit, their compiled programs, the bytes of each size tried, the bytes
  searched against, the smallest size that did not fit or None, whether the budget stopped it)."""
  g, step, t0 = s.max_generations, 2 * jax.device_count(), time.perf_counter()
  need = {}

  def compiled_for(seeds: int):
    compile_s, compiled = _gmm_programs(seeds, g, g)
    need[seeds] = compiled[-1]
    log(f'{seeds:>12,} seeds: {_bytes(need[seeds])} a device (compile {compile_s:.1f} s)')
    return compiled

  first = s.max_first_seeds
  compiled = compiled_for(first)
  have = (int(s.max_memory_of_first * need[first]) if s.max_memory_of_first
          else placement.device_memory())
  best = (first, compiled) if need[first] <= have else (0, None)

  def fits(seeds: int) -> bool:
    nonlocal best
    compiled = compiled_for(seeds)
    if need[seeds] <= have and seeds > best[0]:
      best = (seeds, compiled)
    return need[seeds] <= have

  stopped = False

  def over() -> bool:
    nonlocal stopped
    stopped = time.perf_counter() - t0 > s.max_search_s
    return stopped

  lo, hi = (first, None) if best[0] else (0, first)
  while hi is None and not over():  # doubling, several at once where the bytes so far say so
    predicted = have * lo / need[lo]  # the fixed bytes counted per seed too: an underestimate
    seeds = lo * 2 ** max(1, int(math.log2(predicted / lo)))
    if seeds > s.max_seeds_cap:
      break
    lo, hi = (seeds, None) if fits(seeds) else (lo, seeds)
  while lo == 0 and hi > step and not over():  # the first did not fit: halving
    seeds = max(step, hi // 2 // step * step)
    lo, hi = (seeds, hi) if fits(seeds) else (0, seeds)
  for _ in range(s.max_bisections if hi else 0):
    mid = (lo + hi) // 2 // step * step
    if mid <= lo or hi - lo <= lo / 16 or over():
      break
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  if not best[0]:
    raise MemoryError(f'not even {hi:,} GMM seeds fit in {_bytes(have)}')
  return best[0], best[1], need, have, hi, stopped


def gmm_max_part(s: Sizes, add):
  g = s.max_generations
  seeds, compiled, need, have, hi, stopped = _largest_seeds(
      s, lambda line: print(f'[gmm_max]     {line}', flush=True))
  tried = ', '.join(f'{k:,}: {_bytes(v)}' for k, v in sorted(need.items()))
  which = ('a pretend device of ' if s.max_memory_of_first else '') + f'{_bytes(have)}'
  note = f'of {which}; bytes a device needs by seeds: {tried}'
  if stopped:
    note += f'; search stopped by its {s.max_search_s:.0f} s budget'
  elif hi is None:
    note += f'; the cap of {s.max_seeds_cap:,} seeds reached'
  add(f'{g} generations a run', 'largest seeds one device holds', seeds, 'seeds', note)
  first_s, run_s, done = timing.run_seconds(compiled, g, g)
  add(f'{seeds:,} seeds x {g} generations', 'generation-fits/s', seeds * g / run_s, 'fits/s',
      f'{run_s:.1f} s with generation 0; compile apart')


# ----------------------------------------------------------------------------- the Gaussian


def gaussian_part(s: Sizes, add):
  cfg = gaussian.GaussianConfig(seeds=s.gaussian_seeds, generations=s.gaussian_generations,
                                samples=(s.gaussian_samples,), regimes=('replace',)).validate()
  size = (f'{cfg.seeds:,} seeds x {cfg.generations:,} generations, M={s.gaussian_samples}, '
          f'replace, {cfg.estimator}')
  compile_s, compiled = timing.compile_seconds(
      gaussian.family(cfg), cfg.sweep('replace', s.gaussian_samples), s.gaussian_chunk)
  first_s, run_s, done = timing.run_seconds(compiled, cfg.generations, s.gaussian_chunk,
                                            s.gaussian_budget_s)
  warm_s = first_s + (run_s - first_s) * cfg.generations / done
  how = f'compile {compile_s:.1f} s apart; {_bytes(compiled[-1])} a device needs'
  if done < cfg.generations:
    how += f'; extrapolated from {done:,} generations in {run_s:.1f} s (budget)'
  add(size, 'warm seconds', warm_s, 's', how)
  rate = cfg.seeds * (cfg.generations + 1) / warm_s
  add(size, 'generation-fits/s', rate, 'fits/s')
  ref = gaussian_throughput.numpy_loop(s.numpy_seeds, cfg.generations, s.gaussian_samples)
  add(f'{s.numpy_seeds} seeds x {cfg.generations:,} generations', 'NumPy loop fits/s', ref,
      'fits/s', 'one seed at a time')
  add(size, 'ratio to NumPy', rate / ref, 'x')
  vec = gaussian_throughput.numpy_vectorised(s.numpy_vec_seeds, s.numpy_vec_generations,
                                             s.gaussian_samples)
  add(f'{_seeds(s.numpy_vec_seeds)} x {s.numpy_vec_generations:,} generations',
      'NumPy vectorised fits/s', vec, 'fits/s', 'float32 rows, all seeds at once')
  add(size, 'ratio to NumPy vectorised', rate / vec, 'x')


# ----------------------------------------------------------------------------- the VAE


def _mnist_or_random(cfg: vae.VAEConfig):
  """(data for vae.family, what it is): MNIST where collapse_jax.data.mnist finds it, else random
  uint8 images of its shape; the digit classifier's weights zeros (it costs the same)."""
  directory = cfg.mnist_dir or os.path.join(DATA, 'mnist')
  try:
    train_x, _ = mnist.load('train', directory)
    test_x, _ = mnist.load('test', directory)
    what = 'MNIST'
  except validation.ConfigError:
    rng = np.random.default_rng(0)
    train_x, test_x = (rng.integers(0, 256, (n, conv_vae.PIXELS), np.uint8) / np.float32(255)
                       for n in (60_000, 10_000))
    what = 'random uint8 images of MNIST\'s shape (MNIST not found)'
  classifier = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), jax.eval_shape(
      conv_vae.Classifier().init, jax.random.key(0), np.zeros((1, conv_vae.PIXELS)))['params'])
  return {'train': jnp.asarray(train_x, jnp.float32),
          'test': jnp.asarray(test_x[:cfg.test_images], jnp.float32),
          'classifier': classifier}, what


def _vae_state(cfg: vae.TrainConfig, seeds: int | None):
  """(params, opt_state) for `seeds` stacked (None: one), made on the host: weights ~ N(0, 0.05^2)
  and Adam's zeros. A step costs the same from any weights, and compiling vae.init for each
  shape would cost more than the steps timed at smoke sizes."""
  model, tx = conv_vae.VAE(cfg.latent), cfg.optimizer()
  params, opt_state = jax.eval_shape(lambda k: (lambda p: (p, tx.init(p)))(vae.init(model, k)),
                                     jax.random.key(0))
  rng, lead = np.random.default_rng(0), () if seeds is None else (seeds,)
  return jax.device_put((  # on the device before the timing starts
      jax.tree.map(lambda x: 0.05 * rng.standard_normal(lead + x.shape, x.dtype), params),
      jax.tree.map(lambda x: np.zeros(lead + x.shape, x.dtype), opt_state)))


def vae_part(s: Sizes, add):
  tcfg = vae.TrainConfig(batch=s.vae_batch)
  x_KxBxD = jax.random.uniform(jax.random.key(1), (s.vae_steps, tcfg.batch, conv_vae.PIXELS))
  size = f'batch {tcfg.batch}, {s.vae_steps} steps in a fori_loop, median of {s.vae_repeats}'
  step_s = {}
  for seeds in (None, s.vae_seeds):
    compile_s, seconds = vae_throughput.ours(tcfg, x_KxBxD, seeds, _vae_state(tcfg, seeds))
    step_s[seeds] = float(np.median([seconds() for _ in range(s.vae_repeats)])) / s.vae_steps
    label = 'one seed' if seeds is None else f'{seeds} seeds vmapped'
    add(size, f'train step, {label}', step_s[seeds] * 1e3, 'ms', f'compile {compile_s:.1f} s apart')
  ratio = step_s[s.vae_seeds] / step_s[None]
  add(size, f'{s.vae_seeds} seeds\' step / one seed\'s', ratio, 'x', '', '<= 1.25x', ratio <= 1.25)

  # -- a synthetic generation of the official protocol, as many epochs as the budget allows
  cfg = vae.VAEConfig(**{**s.vae_protocol, 'generations': 1}).validate()
  data, what = _mnist_or_random(cfg)
  epoch_steps = -(-cfg.samples // cfg.batch)
  per_epoch = epoch_steps * step_s[s.vae_seeds] * cfg.seeds / s.vae_seeds * cfg.batch / tcfg.batch
  epochs = int(min(cfg.epochs, max(1, s.vae_generation_s // (1.25 * per_epoch))))
  compile_s, run_s = _vae_generation_seconds(dataclasses.replace(cfg, epochs=epochs), data)
  size = (f'{cfg.seeds} seeds, {cfg.samples:,} images an epoch, batch {cfg.batch}, '
          f'{"fresh batches" if cfg.fresh_batches else "fixed samples"}; {what}')
  note = (f'{epochs} of {cfg.epochs} epochs timed, from a stand-in generation 0 (zero weights: '
          f'the same work); compile {compile_s:.1f} s apart')
  if epochs < cfg.epochs:
    note += (f'; {run_s:.1f} s times {cfg.epochs / epochs:g} (sampling and evaluation scaled too: '
             f'an upper bound; budget {s.vae_generation_s:.0f} s)')
  add(size, f'generation 1 ({cfg.epochs} epoch{"s" * (cfg.epochs > 1)})',
      run_s * cfg.epochs / epochs, 's', note)


def _vae_generation_seconds(cfg: vae.VAEConfig, data):
  """(compile seconds, run seconds) of generation 1 of every seed through the driver's compiled
  program, from a stand-in generation 0 (generation 0 is the same work on real images, and
  compiling its program too would double the cost)."""
  fam = vae.family(cfg, data)
  sweep = cfg.sweep('replace')
  (seed_B, fraction_B), per_device = placement.placed_runs(sweep)
  width = placement.default_width(protocol.concrete(fam), per_device)
  first, advance = driver.programs(fam, sweep, 1, width)
  const_B, carry_B, _ = jax.eval_shape(first, seed_B, fraction_B)

  def stand_in(tree, name=''):
    """The seeds and fractions; zeros for the rest, generation 0's models included: a VAE's
    work does not depend on its weights."""
    if isinstance(tree, dict):
      return {k: stand_in(v, k) for k, v in tree.items()}
    if name in ('seed', 'fraction'):
      return seed_B if name == 'seed' else fraction_B
    return jax.tree.map(lambda x: jax.device_put(np.zeros(x.shape, x.dtype), seed_B.sharding), tree)

  const_B, carry_B = stand_in(const_B), stand_in(carry_B)
  t0 = time.perf_counter()
  run, _ = advance.compiled(const_B, carry_B, jnp.int32(1))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(run(const_B, carry_B, jnp.int32(1)))
  return compile_s, time.perf_counter() - t0


# ----------------------------------------------------------------------------- the language model


def _torch_device():
  import torch  # noqa: PLC0415 (a benchmark-only dependency)
  if torch.cuda.is_available():
    return 'cuda'
  torch.set_num_threads(os.cpu_count() or 1)
  return 'cpu'


def lm_part(s: Sizes, add):
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415

  device = _torch_device()
  shape = 'OPT-125m' if not s.opt_shape else f'a toy OPT ({s.opt_shape["num_hidden_layers"]} layer)'
  precision = (f'JAX matmul precision {jax.config.jax_default_matmul_precision or "default"}, '
               f'torch float32 matmul precision {torch.get_float32_matmul_precision()}')
  rng = np.random.default_rng(1)
  with tempfile.TemporaryDirectory() as directory:
    model = opt_throughput.reference_model(directory, device, s.opt_shape)
    config, params = opt_weights.load(directory)

    # -- fine-tuning steps against PyTorch's eager loop (first: they warm both runtimes up)
    ids_KxBxL = rng.integers(3, config.vocab_size, (s.lm_train_steps, s.lm_train_batch, 64))
    ids_KxBxL = ids_KxBxL.astype(np.int32)
    tokens = ids_KxBxL.size
    size = f'{shape}, AdamW, {s.lm_train_batch} x 64 tokens a step, {s.lm_train_steps} steps'
    compile_s, run_s, _ = opt_throughput.ours_train(config, params, ids_KxBxL, 1)
    rate = tokens / run_s
    add(size, 'fine-tuning, collapse-jax', rate, 'tokens/s',
        f'{run_s / s.lm_train_steps:.3f} s a step; compile {compile_s:.1f} s apart; {precision}')
    ref_s, _ = opt_throughput.torch_train(model, ids_KxBxL, 1, device)
    add(size, 'fine-tuning, transformers', tokens / ref_s, 'tokens/s',
        f'{ref_s / s.lm_train_steps:.3f} s a step, eager, after a warm-up step')
    add(size, 'fine-tuning ratio', rate * ref_s / tokens, 'x')
    del model
    # the saved weights again, as the train loop changed the model's
    model = transformers.OPTForCausalLM.from_pretrained(directory).to(device)

  # -- beam search against transformers' generate, the same weights
  prompt_BxT = rng.integers(3, config.vocab_size, (s.lm_prompts, s.lm_prompt_len)).astype(np.int32)
  mask_BxT = np.ones_like(prompt_BxT)
  search = dict(new_tokens=s.lm_new_tokens, beams=s.lm_beams, repetition_penalty=1.0)
  size = (f'{shape}, {s.lm_prompts} prompts x {s.lm_prompt_len} + {s.lm_new_tokens} new tokens, '
          f'{s.lm_beams} beams')
  compile_s, call_s, ours_BxN = opt_throughput.ours_generate(
      config, params, prompt_BxT, mask_BxT, 0, s.lm_gen_repeats, **search)
  rate = s.lm_prompts * s.lm_new_tokens / call_s
  add(size, 'beam search, collapse-jax', rate, 'new tokens/s',
      f'{call_s:.2f} s a call, mean of {s.lm_gen_repeats}; compile {compile_s:.1f} s apart')
  ref_s, theirs_BxN = opt_throughput.torch_generate(
      model, prompt_BxT, mask_BxT, min(4, s.lm_new_tokens), s.lm_gen_repeats, device, **search)
  ref = s.lm_prompts * s.lm_new_tokens / ref_s
  add(size, 'beam search, transformers', ref, 'new tokens/s',
      f'{ref_s:.2f} s a call, mean of {s.lm_gen_repeats} after a warm-up call')
  add(size, 'beam search ratio', rate / ref, 'x', '', '>= 5x', rate / ref >= 5)
  rows = int((ours_BxN == theirs_BxN).all(axis=1).sum())
  add(size, 'rows token for token equal', rows, f'of {len(ours_BxN)}')
  del model
  if device == 'cuda':
    torch.cuda.empty_cache()
  _lm_generation(s, add, config, params, shape)


def _lm_generation(s: Sizes, add, config, params, shape: str):
  """One generation of the experiment, from a few timed calls of each kind times their counts."""
  cfg = lm.LMConfig(**s.lm_protocol).validate()
  together = experiment.seeds_at_once(cfg)
  rounds = -(-cfg.seeds // together)
  rng = np.random.default_rng(2)
  ids = lambda rows: rng.integers(  # noqa: E731
      3, config.vocab_size, (rows, cfg.block)).astype(np.int32)
  params_S = jax.jit(lambda tree: jax.tree.map(  # one program, not one per shape
      lambda x: jnp.broadcast_to(x, (together, *x.shape)), tree))(params)

  # the three kinds of call a generation makes, each on `together` seeds at once
  steps = np.stack([ids(cfg.batch) for _ in range(s.lm_protocol_steps)])
  compile_s, run_s, _ = opt_throughput.ours_train(config, params, steps, 1, together)
  step_s = run_s / s.lm_protocol_steps

  def twice(call):
    """(first call's seconds less the second's: compiling, the second's)."""
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    warm = time.perf_counter() - t0
    return cold - warm, warm

  keys = jax.random.split(jax.random.key(0), together)
  prompts = placement.place(ids(cfg.gen_batch), 'data')
  gen_compile_s, gen_s = twice(lambda: decoding.continue_prompts(cfg, config, params_S, prompts, keys))
  blocks = ids(cfg.eval_batch)
  nll_compile_s, nll_s = twice(lambda: training.block_nll(config, params_S, blocks, cfg.eval_batch))

  # -- what one generation makes of each (lm.generations.run_seeds: fine_tune, regenerate, measure)
  train = cfg.train_blocks or TRAIN_BLOCKS
  test = cfg.eval_blocks or TEST_BLOCKS
  valid = min(VALID_BLOCKS, test)
  n_steps = cfg.epochs * (train // cfg.batch)
  calls = lambda blocks, batch: -(-blocks // batch)  # noqa: E731
  n_gen = calls(train, cfg.gen_batch)
  n_nll = (cfg.epochs * calls(valid, cfg.eval_batch) + calls(test, cfg.eval_batch)
           + 2 * calls(train, cfg.eval_batch))
  total = rounds * (n_steps * step_s + n_gen * gen_s + n_nll * nll_s)
  size = (f'{shape}, {cfg.seeds} seeds ({together} at once), {cfg.epochs} epochs of '
          f'{train:,} blocks{"" if cfg.train_blocks else " (estimated)"}, batch {cfg.batch}; '
          f'{cfg.beams} beams, {cfg.new_tokens} new tokens, penalty {cfg.repetition_penalty:g}')
  add(size, f'train step, {_seeds(together)}', step_s, 's', f'compile {compile_s:.1f} s apart; '
      "benchmarks.opt_throughput's AdamW step (the preset's adds weight decay, elementwise)")
  add(size, f'beam search of {cfg.gen_batch} prompts, {_seeds(together)}', gen_s, 's',
      f'compile {gen_compile_s:.1f} s apart')
  add(size, f'perplexity of {cfg.eval_batch} blocks, {_seeds(together)}', nll_s, 's',
      f'compile {nll_compile_s:.1f} s apart')
  add(size, 'one paper generation, extrapolated', total, 's',
      f'{rounds} round(s) x ({n_steps:,} train steps + {n_gen:,} beam-search calls + {n_nll:,} '
      'perplexity calls) at the times above; compiling, checkpoints and data loading excluded; '
      f'the experiment runs {cfg.generations + 1} such generations')


# ----------------------------------------------------------------------------- main


RUNNERS = {'gmm': gmm_part, 'gmm_max': gmm_max_part, 'gaussian': gaussian_part, 'vae': vae_part,
           'lm': lm_part}


def main(argv):
  del argv
  try:
    parts = [p.strip() for p in FLAGS.parts if p.strip()]
    unknown = [p for p in parts if p not in RUNNERS]
    if unknown or not parts:
      raise validation.ConfigError('parts', f'must name some of {", ".join(PARTS)}; '
                                   f'got {", ".join(unknown) or "none"}')
    out = validation.writable_dir('out', FLAGS.out)
  except validation.ConfigError as e:
    cli.fail(e)
  sizes = SMOKE if FLAGS.smoke else Sizes()
  if FLAGS.smoke and not jax.config.jax_compilation_cache_dir:
    # Nearly all of a smoke run is compiling on the CPU: a second run reads the programs back.
    jax.config.update('jax_compilation_cache_dir', SMOKE_CACHE)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  report = Report(out, parts, FLAGS.smoke, _info(parts))
  if jax.config.jax_compilation_cache_dir:
    print(f'XLA compilation cache: {jax.config.jax_compilation_cache_dir} (a program compiled '
          'before is read back: its compile seconds say so little)', flush=True)
  print(f'device: {report.info["device"]["kind"]} x {jax.device_count()}; '
        f'results in {out}/accelerator.md and .json', flush=True)
  for part in parts:
    print(f'[{part}] start', flush=True)
    report.status(part, 'running')
    t0 = time.perf_counter()
    try:
      RUNNERS[part](sizes, lambda *a, part=part, **k: report.add(part, *a, **k))
      report.status(part, 'ok', time.perf_counter() - t0)
      print(f'[{part}] done in {time.perf_counter() - t0:.1f} s', flush=True)
    except Exception as e:  # noqa: BLE001 (any failure, out of memory included: record, go on)
      traceback.print_exc()
      report.status(part, 'failed', time.perf_counter() - t0, _one_line(e))
      print(f'[{part}] FAILED after {time.perf_counter() - t0:.1f} s: {_one_line(e)}', flush=True)
    gc.collect()
  report.write(finished=True)
  with open(os.path.join(out, 'accelerator.md')) as f:
    print(f.read(), flush=True)
  if any(p['status'] == 'failed' for p in report.parts.values()):
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
