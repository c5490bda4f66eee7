"""Each family's generation programs compiled for accelerators on this CPU, without the device.

  python -m benchmarks.compiled --out=runs/compiled                   # GMM and Gaussian, 4 targets
  python -m benchmarks.compiled --out=/tmp/c --families=gmm --targets=v5e,h100 --seeds=4096
  python -m benchmarks.compiled --out=/tmp/c --families=vae,opt --targets=h100,v5e --max_compiles=3

Needs the `compile` extra (libtpu and the CUDA plugin; Python 3.12+). For each family and
target (collapse_jax.core.targets) it compiles the driver's chunk program (`advance`, the
one a run spends its time in) through driver.compile_sweep(devices=...) and reports:

  memory      bytes a device needs at --seeds (arguments + outputs + temporaries - aliased);
  largest     the most seeds one device holds: linear prediction from the sizes compiled so
              far, then bisection on compile-time memory against the target's usable memory
              (a TPU's compiler refuses a program over its HBM; a GPU's is checked here);
  per gen     flops and bytes of one generation at --seeds: XLA's cost analysis counts each
              loop body once, so the GMM's EM and k-means loops are added from standalone
              compiles of one iteration times the iterations a generation runs, measured on
              this CPU (--trip_seeds seeds x --trip_generations generations of the protocol);
  roofline    max(flops / peak, bytes / bandwidth) per generation, from the target's
              published figures (sources in collapse_jax/core/targets.py).

The VAE and OPT (--families=vae,opt; not in the default: each compile of OPT-125m takes
20-90 s here, both families about 25 minutes on 2 shared cores at --max_compiles=3) are
compiled as one step program, as a function of its batch, each at its experiment's size:

  VAE         vae.train_step of the protocol's 8 stacked seeds (vmapped), batch 256 each;
              the largest: the most stacked seeds a device holds. And the driver's
              generation program of those 8 seeds (`VAE generation`): its memory only.
  OPT-125m    opt.OPTConfig's defaults with random weights (nothing is downloaded), for each of
              --dtypes (opt.OPTConfig.dtype, the compute dtype: parameters and AdamW's state
              stay float32): the fine-tuning step (opt_train.make_train_step, AdamW, dropout on) on
              lm.LMConfig's batch of 128 blocks x 64 tokens, and opt_decode.beam_search (5 beams, 64
              new tokens) of its gen_batch of 64 prompts x 64 tokens; the largest: blocks or
              prompts. The layers run in scans, which the cost analysis counts once: each call's
              flops and bytes add the other layers from a standalone compile of one layer
              (forward and backward for the step, the prompt's forward for the search), and
              the search's other decode steps as (the program at 64 new tokens - at 1) x 62.
              The roofline of a bfloat16 case uses the target's bf16 (matrix) peak.

What this proves: the program compiles for the target and fits its memory. What it does not:
its time, which only a run on the device measures (kernel launches, latency and the
occupancy of small batches are not in a roofline). DIR/compiled.md and DIR/compiled.json
are rewritten after every figure.
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # compile-only targets; never look for a device

import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from collapse_jax.core import driver, placement, targets  # noqa: E402
from collapse_jax.families import gaussian, gmm, lm, vae  # noqa: E402
from collapse_jax.nets import conv_vae, opt, opt_decode, opt_train  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('out', None, 'Directory for compiled.md and compiled.json.')
flags.DEFINE_list('families', ['gmm', 'gaussian'], 'Families: gmm, gaussian, vae, opt.')
flags.DEFINE_list('targets', ['v5e', 'v6e', 'h100', 'h200'],
                  f'Targets: {", ".join(targets.TARGETS)}.')
flags.DEFINE_integer('seeds', 4096, 'Seeds of the GMM\'s and Gaussian\'s memory and cost figures '
                     '(the VAE and OPT use their experiments\' sizes).')
flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'OPT compute dtypes (parameters float32).')
flags.DEFINE_integer('chunk', 10, 'Generations in the compiled chunk program.')
flags.DEFINE_integer('max_seeds', 1 << 20, 'The search for the largest batch stops here.')
flags.DEFINE_integer('max_compiles', 5, 'Compiles the search for the largest batch may use.')
flags.DEFINE_integer('trip_seeds', 256, 'Seeds of the CPU run that measures loop trip counts.')
flags.DEFINE_integer('trip_generations', 20, 'Generations of that run.')
flags.DEFINE_bool('largest', True, 'Search for the largest batch (several compiles each).')


# ----------------------------------------------------------------------------- families


@dataclasses.dataclass(frozen=True)
class Case:
  """A family's sweep at any seed count, and its loops: name -> (one iteration's program as a
  function of the seeds, the iterations a generation's batch of that many seeds runs)."""
  name: str
  family: object
  sweep: object  # seeds -> protocol.Sweep
  step: int  # seed counts searched are multiples of this
  loops: dict = dataclasses.field(default_factory=dict)
  # A step case (VAE, OPT): not a driver sweep but one program as a function of its batch.
  program: object = None  # (size, devices) -> the executable; None: the driver's chunk program
  size: int = 0  # the batch of the memory and cost figures (0: --seeds)
  unit: str = 'seeds'  # what `size` counts
  per: str = 'generation'  # what one call of the program is
  work: tuple = ('fits', 1)  # (what it makes, how many a call makes per unit of size)
  extra: object = None  # (size, devices, exe) -> [(label, times, executable)]: loop bodies
  peak: str = 'f32_flops'  # the Target field of the roofline's arithmetic peak
  memory_only: bool = False  # its memory at `size` alone: no cost figures, no search


def gmm_case(trips) -> Case:
  cfg = gmm.GMMConfig().validate()
  sweep = lambda s: dataclasses.replace(cfg.sweep('replace'), seeds=s)  # noqa: E731
  return Case('gmm', gmm.family(cfg), sweep, 1024, gmm_loops(cfg, trips))


def _batched(fn, shapes, seeds: int, devices):
  """jax.vmap(fn) compiled for `devices` on `seeds` runs of arguments of these shapes."""
  mesh = placement.mesh(devices=devices)
  sharding = NamedSharding(mesh, PartitionSpec('runs'))
  args = jax.tree.map(lambda a: jax.ShapeDtypeStruct((seeds,) + a.shape, a.dtype,
                                                     sharding=sharding), shapes)
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # the GPU a Pallas kernel is for
    lowered = jax.jit(jax.vmap(fn)).lower(*args)
  return lowered.compile()


def expected(work, trips_R, seeds: int, draws: int = 16) -> float:
  """Mean of work(iterations of `seeds` runs), the runs drawn from the measured trips_R."""
  rng = np.random.default_rng(0)
  return float(np.mean([work(rng.choice(trips_R, seeds)) for _ in range(draws)]))


def gmm_loops(cfg: gmm.GMMConfig, trips) -> dict:
  """The GMM's two loops: (one iteration's program, run-iterations a generation computes per
  run, those the program's cost analysis counts once per run). Both run in rounds (what
  gmm.round_work counts) with an accelerator's fused steps; iterations drawn from those
  measured on this CPU. The one-iteration programs read the whole feature array where the
  fused steps read only its D coordinate rows: their bytes are an upper bound. EM's step is
  the one gmm.em picks for the target: the Triton kernel on an NVIDIA GPU, given the
  coordinate rows (as EM's loop holds them), the fused step elsewhere."""
  d, k, n = 2, cfg.components, cfg.samples
  f = 1 + d + d * (d + 1) // 2
  mix = gmm.Mixture(jnp.zeros(k), jnp.zeros((k, d)), jnp.zeros((k, d, d)))
  f_FxN, w_N, centres_KxD = jnp.zeros((f, n)), jnp.zeros(n), jnp.zeros((k, d))

  def em_program(seeds, devices):
    if devices[0].platform == 'gpu':
      one = lambda m, x, w: gmm.em_step_triton(m, x, w, cfg.reg_covar)  # noqa: E731
      return _batched(one, (mix, f_FxN[1:1 + d], w_N), seeds, devices)
    one = lambda m, f, w: gmm.em_step_fused(m, f, w, cfg.reg_covar)  # noqa: E731
    return _batched(one, (mix, f_FxN, w_N), seeds, devices)
  em = (em_program,
        lambda seeds: expected(gmm.round_work, trips['em_iters'], seeds) / seeds,
        lambda seeds: sum(gmm.round_sizes(seeds)) / seeds)
  km = (lambda seeds, devices: _batched(gmm.lloyd_step_fused, (centres_KxD, f_FxN, w_N), seeds,
                                        devices),
        lambda seeds: expected(gmm.round_work, trips['kmeans_iters'], seeds) / seeds,
        lambda seeds: sum(gmm.round_sizes(seeds)) / seeds)
  return {'EM': em, 'k-means': km}


def gaussian_case(trips) -> Case:
  del trips  # a closed-form fit: no loop but the generations'
  cfg = gaussian.GaussianConfig(samples=(100,), regimes=('replace',)).validate()
  sweep = lambda s: dataclasses.replace(cfg.sweep('replace', 100), seeds=s)  # noqa: E731
  return Case('gaussian', gaussian.family(cfg), sweep, 1 << 14)


def _on(tree, devices):
  """The shapes of `tree` (arrays or shapes) placed on the target's one device."""
  sharding = NamedSharding(placement.mesh(devices=devices), PartitionSpec())
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=sharding),
                      tree)


def _key(*lead):
  return jax.eval_shape(lambda: jax.random.split(jax.random.key(0), lead) if lead
                        else jax.random.key(0))


def vae_step(seeds: int, devices):
  """vae.train_step of `seeds` stacked runs (vmapped, the state donated, each its own batch of
  the protocol's 256 images), as the driver's generation program runs it every step."""
  cfg = vae.VAEConfig().validate().train
  model, tx = conv_vae.VAE(cfg.latent), cfg.optimizer()
  state = jax.eval_shape(jax.vmap(lambda k: (lambda p: (p, tx.init(p)))(vae.init(model, k))),
                         _key(seeds))
  x_SxBxD = jax.ShapeDtypeStruct((seeds, cfg.batch, conv_vae.PIXELS), jnp.float32)
  step = jax.jit(jax.vmap(functools.partial(vae.train_step, model, tx)), donate_argnums=(0, 1))
  return step.lower(*_on((*state, x_SxBxD, _key(seeds)), devices)).compile()


def vae_data(cfg: vae.VAEConfig) -> dict:
  """The shapes of what vae.family reads: MNIST's 60,000 training and the test images, and
  the digit classifier's parameters."""
  classifier = jax.eval_shape(conv_vae.Classifier().init, jax.random.key(0),
                              jnp.zeros((1, conv_vae.PIXELS)))['params']
  images = lambda n: jax.ShapeDtypeStruct((n, conv_vae.PIXELS), jnp.float32)  # noqa: E731
  return {'train': images(60_000), 'test': images(cfg.test_images), 'classifier': classifier}


def vae_case(trips, seeds: int = 0) -> list[Case]:
  """The VAE's train step of the protocol's 8 stacked seeds (or `seeds`), and (at the
  protocol's size only) the driver's generation program: 30 epochs of fresh batches, the
  samples and the evaluation; its loops run thousands of steps, so no cost figures."""
  del trips
  cfg = vae.VAEConfig().validate()
  step = Case('VAE train step', None, None, 8, program=vae_step, size=seeds or cfg.seeds,
              unit='seeds', per='step', work=('images', cfg.batch))
  if seeds:
    return [step]
  sweep = lambda s: dataclasses.replace(cfg.sweep('replace'), seeds=s)  # noqa: E731
  return [step, Case('VAE generation', vae.family(cfg, vae_data(cfg)), sweep, 8, size=cfg.seeds,
                     memory_only=True)]


BLOCK = 64  # tokens of a fine-tuning block and of a prompt (lm.LMConfig's block)


def opt_params(config: opt.OPTConfig):
  return jax.eval_shape(lambda k: opt.init(config, k), jax.random.key(0))


def opt_train_step(config: opt.OPTConfig, batch: int, devices):
  """opt_train.make_train_step (AdamW, dropout on, the state donated) on batch x 64 tokens."""
  tx = opt_train.optimizer(opt_train.TrainConfig(), 1000)
  params = opt_params(config)
  ids_BxL = jax.ShapeDtypeStruct((batch, BLOCK), jnp.int32)
  args = (params, jax.eval_shape(tx.init, params), ids_BxL, _key())
  return opt_train.make_train_step(config, tx).lower(*_on(args, devices)).compile()


def _layer(config: opt.OPTConfig, batch: int, deterministic: bool, cache_length: int = 0):
  """(opt.Layer, its parameters, x_BxSxE, allowed_BxSxK, its cache) on batch x 64 tokens."""
  layer = opt.Layer(config, deterministic)
  x_BxSxE = jax.ShapeDtypeStruct((batch, BLOCK, config.hidden_size), config.dtype)
  allowed = jax.ShapeDtypeStruct((batch, BLOCK, cache_length or BLOCK), jnp.bool_)
  h, d = config.num_attention_heads, config.head_dim
  cache = None if not cache_length else (
      jax.ShapeDtypeStruct((batch, h, d, cache_length), config.dtype),
      jax.ShapeDtypeStruct((batch, h, cache_length, d), config.dtype))
  params = jax.eval_shape(lambda k, x, a, c: layer.init({'params': k, 'dropout': k}, x, c, a, 0),
                          _key(), x_BxSxE, allowed, cache)['params']
  return layer, params, x_BxSxE, allowed, cache


def opt_layer_train(config: opt.OPTConfig, batch: int, devices):
  """One decoder layer forward and backward (dropout on): the body of the train step's two
  scans over layers, which its cost analysis counts once each."""
  layer, params, x_BxSxE, allowed, _ = _layer(config, batch, False)

  def forward_backward(p, x, allowed, key):
    def forward(p, x):
      return layer.apply({'params': p}, x, None, allowed, 0, rngs={'dropout': key})[0]
    y, back = jax.vjp(forward, p, x)
    return back(y)
  args = _on((params, x_BxSxE, allowed, _key()), devices)
  return jax.jit(forward_backward).lower(*args).compile()


def opt_search(config: opt.OPTConfig, new_tokens: int, prompts: int, devices):
  """opt_decode.beam_search: 5 beams, `prompts` prompts of 64 tokens, `new_tokens` new tokens."""
  prompt_BxT = jax.ShapeDtypeStruct((prompts, BLOCK), jnp.int32)
  params, prompt_BxT, mask_BxT = _on((opt_params(config), prompt_BxT, prompt_BxT), devices)
  return opt_decode.beam_search.lower(config, params, prompt_BxT, mask_BxT, new_tokens,
                                      beams=lm.LMConfig().beams).compile()


def opt_layer_prefill(config: opt.OPTConfig, prompts: int, devices):
  """One decoder layer on the prompts into its cache: the body of the prompt's scan over
  layers, which the search's cost analysis counts once."""
  layer, params, x_BxSxE, allowed, cache = _layer(config, prompts, True, BLOCK)
  run = lambda p, x, a, c: layer.apply({'params': p}, x, c, a, 0)  # noqa: E731
  return jax.jit(run).lower(*_on((params, x_BxSxE, allowed, cache), devices)).compile()


def opt_cases(dtypes, shape: dict | None = None, lm_cfg: lm.LMConfig | None = None) -> list[Case]:
  """OPT-125m's shape (opt.OPTConfig's defaults, or `shape`'s fields; random weights: nothing
  downloaded): the fine-tuning step at lm.LMConfig's batch and the beam search of its
  gen_batch prompts, for each compute dtype (opt.OPTConfig.dtype; parameters stay float32)."""
  cfg, cases, name = lm_cfg or lm.LMConfig(), [], 'a small OPT' if shape else 'OPT-125m'
  n = cfg.new_tokens
  for dtype in dtypes:
    config = opt.OPTConfig(**{**(shape or {}), 'dtype': dtype})
    layers = config.num_hidden_layers
    peak = 'f32_flops' if dtype == 'float32' else 'bf16_flops'

    def train_extra(b, devices, exe, c=config):
      return [(f'layer forward and backward x {layers - 1} more layers', layers - 1,
               opt_layer_train(c, b, devices))]

    def search_extra(b, devices, exe, c=config):
      """The decode scan's body, counted once in the program: the program at n new tokens
      less at 1 (no scan), times the n - 2 steps not yet counted; and the prompt's layers."""
      one = opt_search(c, 1, b, devices)
      return [(f'decode step x {n - 2} more (program at {n} new tokens)', n - 2, exe),
              (f'less the program at 1 new token, x {n - 2}', -(n - 2), one),
              (f'prompt layer x {layers - 1} more layers', layers - 1,
               opt_layer_prefill(c, b, devices))]
    cases += [
        Case(f'{name} fine-tuning {dtype}', None, None, 8, size=cfg.batch, unit='blocks',
             program=functools.partial(opt_train_step, config), per='step',
             work=('tokens', BLOCK), extra=train_extra, peak=peak),
        Case(f'{name} beam search {dtype}', None, None, 8, size=cfg.gen_batch, unit='prompts',
             program=lambda b, d, c=config: opt_search(c, n, b, d), per='call',
             work=('new tokens', n), extra=search_extra, peak=peak)]
  return cases


CASES = {'gmm': gmm_case, 'gaussian': gaussian_case, 'vae': vae_case,
         'opt': lambda trips: opt_cases(FLAGS.dtypes)}


def trip_counts(seeds: int, generations: int) -> dict[str, np.ndarray]:
  """Per-run EM and k-means iterations of the paper's GMM protocol, run on this CPU."""
  cfg = gmm.GMMConfig(seeds=seeds, generations=generations).validate()
  with tempfile.TemporaryDirectory() as tmp:
    m = driver.run(gmm.family(cfg), cfg.sweep('replace'), tmp, generations, progress=False)
  return {k: np.asarray(m[k][1:]).ravel() for k in ('em_iters', 'kmeans_iters')}


# ----------------------------------------------------------------------------- compiling


def cost(exe) -> dict[str, float]:
  """flops and bytes accessed of a compiled program, each loop body counted once: XLA's own
  analysis, or (a compile-only GPU executable has none) the HLO cost analysis of its module."""
  ca = exe.cost_analysis()
  if isinstance(ca, list):
    ca = ca[0]
  if not ca:
    from jax._src import xla_bridge  # noqa: PLC0415
    from jax._src.lib import _jax  # noqa: PLC0415
    module = exe.runtime_executable().hlo_modules()[0]
    ca = _jax.hlo_module_cost_analysis(xla_bridge.get_backend('cpu'), module)
  return {'flops': float(ca.get('flops', 0.0)), 'xla_bytes': float(ca.get('bytes accessed', 0.0)),
          'bytes': kernel_bytes(exe.as_text())}


_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4,
                's32': 4, 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8}
_NOT_KERNELS = {'parameter', 'constant', 'tuple', 'get-tuple-element', 'bitcast', 'while',
                'conditional', 'call', 'after-all', 'partition-id', 'replica-id', 'iota',
                'opt-barrier', 'copy-start', 'copy-done'}


def _shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape (an array or a tuple of them), layouts and tiles ignored."""
  total = 0
  for dtype, dims in re.findall(r'\b([a-z]+\d*)\[([0-9,]*)\]', shape):
    total += _DTYPE_BYTES.get(dtype, 4) * int(np.prod([int(x) for x in dims.split(',') if x]))
  return total


def kernel_bytes(hlo: str) -> float:
  """Bytes an optimised HLO module moves if each kernel (a fusion or an unfused op) reads
  each of its operands once and writes its result, every loop body counted once.

  XLA's own 'bytes accessed' counts a fused operand once per use inside the fusion (the
  fused EM step uses each feature row a dozen times, from registers), which overstates
  what a fused kernel reads several-fold; this is the one-read-per-kernel model. An operand
  a fusion only slices counts as the slices it reads."""
  comps, name, fused = {}, None, set()
  for line in hlo.splitlines():
    head = re.match(r'^(?:ENTRY )?%(\S+) \(', line)
    if head:
      name, comps[head.group(1)] = head.group(1), []
    elif name and line.strip() and line.strip() != '}':
      comps[name].append(line)
    fused.update(re.findall(r'(?:calls|to_apply)=%([\w.-]+)', line))
  instr = r'\s*(?:ROOT )?%(\S+) = (.*?) ([a-z][\w-]*)\((.*?)\)(?:, |$)'
  sliced = {}  # fused computation -> {parameter number: bytes of the slices read of it}
  for comp in fused & set(comps):
    parsed = [m.groups() for m in map(lambda l: re.match(instr, l), comps[comp]) if m]
    params = {out: int(args) for out, _, op, args in parsed if op == 'parameter'}
    for p_name, number in params.items():
      users = [(op, shape) for _, shape, op, args in parsed
               if p_name in re.findall(r'%([\w.-]+)', args)]
      if users and all(op == 'slice' for op, _ in users):
        sliced.setdefault(comp, {})[number] = sum(_shape_bytes(sh) for _, sh in users)
  total = 0.0
  for comp, lines in comps.items():
    if comp in fused:
      continue
    shapes = {}
    for line in lines:
      m = re.match(instr, line)
      if not m:
        continue
      out, shape, op, operands = m.groups()
      shapes[out] = _shape_bytes(shape)
      if op in _NOT_KERNELS:
        continue
      names = list(dict.fromkeys(re.findall(r'%([\w.-]+)', operands)))
      calls = re.search(r'calls=%([\w.-]+)', line)
      partial = sliced.get(calls.group(1), {}) if calls else {}
      total += shapes[out] + sum(partial.get(i, shapes.get(n, 0)) for i, n in enumerate(names))
  return total


def compile_advance(case: Case, target: str, seeds: int, chunk: int):
  """(bytes a device needs or None where the compiler refused it, the executable, seconds,
  the refusal's first line)."""
  t0 = time.perf_counter()
  try:
    if case.program is not None:
      exe = case.program(seeds, targets.devices(target))
      need = placement.needed_bytes(exe)
      return need, exe, time.perf_counter() - t0, ''
    _, _, _, advance, _, need = driver.compile_sweep(
        case.family, case.sweep(seeds), chunk, with_first=False, devices=targets.devices(target))
  except Exception as e:  # noqa: BLE001  a TPU compiler refuses a program over its HBM
    text = str(e)
    if 'RESOURCE_EXHAUSTED' not in text and 'memory' not in text.lower():
      raise
    return None, None, time.perf_counter() - t0, text.strip().splitlines()[0][:300]
  return need, advance.executable, time.perf_counter() - t0, ''


def fits(need, target: str) -> bool:
  t = targets.get(target)
  return need is not None and need <= t.memory * t.usable


def largest(case: Case, target: str, known: dict, log, max_seeds: int, max_compiles: int,
            chunk: int):
  """(largest seeds found to fit, smallest found not to, compiles used): sizes in multiples of
  case.step, each compiled with `chunk` generations (`known`: sizes compiled already);
  memory is about linear in seeds, so the next size is the line through the two largest
  fitting sizes, then bisection."""
  def need(s):
    if s not in known:
      known[s] = compile_advance(case, target, s, chunk)
      n, _, secs, why = known[s]
      log(f'  {case.name} {target} {s:,} {case.unit}: '
          + (f'{n / 2**30:.2f} GiB' if n is not None else f'refused ({why[:120]})')
          + f' ({secs:.0f} s)')
    return known[s][0]

  t = targets.get(target)
  have, step, used = t.memory * t.usable, case.step, 0
  ok = sorted(s for s, v in known.items() if fits(v[0], target))
  bad = sorted(s for s, v in known.items() if not fits(v[0], target))
  lo, hi = (ok[-1] if ok else 0), (bad[0] if bad else None)
  while used < max_compiles:
    if hi is not None and hi - lo <= max(step, lo // 16):
      break
    if lo == 0:
      guess = max(step, (hi or 2 * step) // 2 // step * step)
    elif hi is None:
      small = [s for s in ok if s < lo]
      per = (need(lo) - need(small[-1])) / (lo - small[-1]) if small else need(lo) / lo
      guess = lo + int((have - need(lo)) / max(per, 1)) // step * step
      guess = min(max(guess, lo + step), 16 * lo, max_seeds)
    else:
      guess = (lo + hi) // 2 // step * step
    if guess <= lo or (hi is not None and guess >= hi):
      break
    used += 1
    if fits(need(guess), target):
      lo, ok = guess, sorted(ok + [guess])
    else:
      hi = guess
    if lo >= max_seeds:
      break
  return lo, hi, used


def roofline(c: dict, target: str, peak: str = 'f32_flops') -> dict[str, float]:
  t = targets.get(target)
  flops_s, bytes_s = c['flops'] / getattr(t, peak), c['bytes'] / t.bandwidth
  return {'flops_s': flops_s, 'bytes_s': bytes_s, 'seconds': max(flops_s, bytes_s)}


def per_generation(case: Case, target: str, exe, seeds: int, log) -> dict:
  """One generation's flops and bytes at `seeds`: the chunk program's (loop bodies once) plus,
  for each loop, (its iterations - 1) x one iteration's."""
  total = cost(exe)
  parts = {'program, loop bodies once': dict(total)}
  for name, (program, iterations, counted) in case.loops.items():
    one = cost(program(seeds, targets.devices(target)))  # one iteration of every run
    n, once = iterations(seeds), counted(seeds)
    parts[f'{name}: {n:.1f} iterations a run ({once:.2f} counted above) x '
          f'{one["bytes"] / seeds:,.0f} B and {one["flops"] / seeds:,.0f} flop a run'] = {
        'iterations': n, 'counted': once, **one}
    for k in ('flops', 'bytes', 'xla_bytes'):
      total[k] += (n - once) * one[k]
  log(f'  {case.name} {target} {seeds:,} seeds: {total["bytes"] / 1e9:.3f} GB, '
      f'{total["flops"] / 1e9:.2f} GFLOP a generation')
  return {'total': total, 'parts': parts}


def per_step(case: Case, target: str, exe, size: int, log) -> dict:
  """One call's flops and bytes at `size`: the program's (loop bodies once) plus each extra
  (label, times, executable) of case.extra times its cost."""
  total = cost(exe)
  parts = {'program, loop bodies once': dict(total)}
  for label, times, extra in (case.extra(size, targets.devices(target), exe) if case.extra else ()):
    one = cost(extra)
    parts[label] = {'times': times, **one}
    for k in ('flops', 'bytes', 'xla_bytes'):
      total[k] += times * one[k]
  log(f'  {case.name} {target} {size:,} {case.unit}: {total["bytes"] / 1e9:.3f} GB, '
      f'{total["flops"] / 1e9:.2f} GFLOP a {case.per}')
  return {'total': total, 'parts': parts}


# ----------------------------------------------------------------------------- the report


def _memory_and_largest(r) -> tuple[str, str]:
  """A row's memory cell (or the compiler's refusal) and its largest-batch cell."""
  mem = f'{r["need"] / 2**30:.2f} GiB' if r.get('need') is not None else (
      f'refused: {r.get("refused", "")[:80]}')
  big = r.get('largest')
  big = '-' if big is None else (f'{big:,}' + (f' (< {r["over"]:,})' if r.get('over') else
                                               ' (search capped)'))
  return mem, big


def markdown(rows) -> str:
  lines = ['| family | target | seeds | memory a device | largest seeds a device | GB a generation '
           '| GFLOP a generation | roofline ms a generation (bytes, flops) | fits/s at roofline |',
           '|---|---|---|---|---|---|---|---|---|']
  sweeps = [r for r in rows if 'per' not in r]
  lines = lines if sweeps else []
  for r in sweeps:
    mem, big = _memory_and_largest(r)
    g = r.get('generation')
    if g:
      rf = g['roofline']
      cells = [f'{g["total"]["bytes"] / 1e9:.3f}', f'{g["total"]["flops"] / 1e9:.2f}',
               f'{rf["seconds"] * 1e3:.3f} ({rf["bytes_s"] * 1e3:.3f}, {rf["flops_s"] * 1e3:.3f})',
               f'{r["seeds"] / rf["seconds"]:,.0f}']
    else:
      cells = ['-'] * 4
    lines.append(f'| {r["family"]} | {r["target"]} | {r["seeds"]:,} | {mem} | {big} | '
                 + ' | '.join(cells) + ' |')
  def added(v):  # a loop's iterations beyond those its program counts; the program itself
    return v.get('iterations', 1) - v.get('counted', 0)
  parts = [f'- {r["family"]} {r["target"]}: ' + '; '.join(
      f'{k} -> {added(v) * v["bytes"] / 1e9:.3f} GB, {added(v) * v["flops"] / 1e9:.2f} GFLOP'
      for k, v in r['generation']['parts'].items()) for r in rows if r.get('generation')]
  lines += ['', 'Parts of each estimate:', ''] + parts + steps_markdown(rows)
  return '\n'.join(lines) + '\n'


def steps_markdown(rows) -> list[str]:
  """The step cases' table (VAE, OPT): a row per program and target."""
  rows = [r for r in rows if 'per' in r]
  if not rows:
    return []
  lines = ['', '| program | target | size | memory a device | largest a device | GB a call '
           '| GFLOP a call | roofline ms a call (bytes, flops) | made/s at roofline |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    mem, big = _memory_and_largest(r)
    g = r.get('generation')
    cells = ['-'] * 4
    if g:
      rf, (what, each) = g['roofline'], r['work']
      cells = [f'{g["total"]["bytes"] / 1e9:.3f}', f'{g["total"]["flops"] / 1e9:.1f}',
               f'{rf["seconds"] * 1e3:.2f} ({rf["bytes_s"] * 1e3:.2f}, {rf["flops_s"] * 1e3:.2f})',
               f'{r["seeds"] * each / rf["seconds"]:,.0f} {what}']
    lines.append(f'| {r["family"]} ({r["per"]}) | {r["target"]} | {r["seeds"]:,} {r["unit"]} '
                 f'| {mem} | {big} | ' + ' | '.join(cells) + ' |')
  return lines


def write(out: str, rows, info):
  os.makedirs(out, exist_ok=True)
  for name, text in (('compiled.md', markdown(rows)),
                     ('compiled.json', json.dumps({'info': info, 'rows': rows}, indent=1))):
    path = os.path.join(out, name)
    with open(path + '.tmp', 'w') as f:
      f.write(text)
    os.replace(path + '.tmp', path)


def main(argv):
  del argv
  if not FLAGS.out:
    raise app.UsageError('--out is required')
  logging.set_verbosity(logging.WARNING)  # the CPU run's checkpoint chatter
  log = lambda line: print(line, flush=True)  # noqa: E731
  for t in FLAGS.targets:
    why = targets.available(t)
    if why:
      raise app.UsageError(f'cannot compile for {t}: {why}')
  info = {'jax': jax.__version__, 'seeds': FLAGS.seeds, 'chunk': FLAGS.chunk}
  trips = None
  if 'gmm' in FLAGS.families:
    log(f'trip counts: the GMM protocol on this CPU, {FLAGS.trip_seeds} seeds x '
        f'{FLAGS.trip_generations} generations')
    trips = trip_counts(FLAGS.trip_seeds, FLAGS.trip_generations)
    info['trips'] = {k: {'median': float(np.median(v)), 'mean': float(np.mean(v)),
                         'p99.9': float(np.quantile(v, 0.999)), 'max': int(np.max(v)),
                         'n': int(v.size)} for k, v in trips.items()}
    log(f'  {info["trips"]}')
  rows = []
  cases = []
  for fam in FLAGS.families:
    made = CASES[fam](trips)
    cases += made if isinstance(made, list) else [made]
  for case in cases:
    size = case.size or FLAGS.seeds
    for t in FLAGS.targets:
      log(f'{case.name} on {t}')
      row = {'family': case.name, 'target': t, 'seeds': size}
      if case.program is not None:
        row.update(per=case.per, unit=case.unit, work=case.work)
      need, exe, secs, why = compile_advance(case, t, size, FLAGS.chunk)
      row.update(need=need, compile_s=secs, refused=why)
      log(f'  {case.name} {t} {size:,} {case.unit}'
          + (f', chunk {FLAGS.chunk}' if case.program is None else '') + ': '
          + (f'{need / 2**30:.2f} GiB' if need is not None else f'refused ({why[:200]})')
          + f' ({secs:.0f} s)')
      rows.append(row)
      if exe is not None and not case.memory_only:
        gen = (per_generation if case.program is None else per_step)(case, t, exe, size, log)
        gen['roofline'] = roofline(gen['total'], t, case.peak)
        row['generation'] = gen
      write(FLAGS.out, rows, info)
      if FLAGS.largest and not case.memory_only:
        known = {size: (need, exe, secs, why)}
        row['largest'], row['over'], _ = largest(case, t, known, log, FLAGS.max_seeds,
                                                 FLAGS.max_compiles, FLAGS.chunk)
        write(FLAGS.out, rows, info)
  print(markdown(rows))


if __name__ == '__main__':
  app.run(main)
