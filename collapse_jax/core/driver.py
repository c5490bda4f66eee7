"""The generation driver: one mechanism for every recursive-training experiment.

A model family gives pure functions for one run (draw real data, fit, sample,
evaluate). The driver builds a generation from them and a regime, runs a batch
of seeds x real-data fractions with `vmap` in one compiled program sharded over
all devices, runs generations with `lax.scan` in chunks, and checkpoints with
Orbax between chunks. Keys come from `fold_in(run_key, generation)`, so a
resumed run draws exactly the numbers an uninterrupted one draws.

What a family gives the driver is in protocol (Family, Sweep); where the runs go and the
memory they need, in placement; checkpoints sealed with their digests, in checkpoints.

Shapes in names: B runs in the batch, N samples, P pool rows, D dimensions.
"""

import contextlib
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from jax.sharding import NamedSharding, PartitionSpec

from collapse_jax.core import checkpoints, knobs, placement, protocol, regimes


# ---------------------------------------------------------------- one run

def _keys(seed):
  data_key, ref_key, run_key = jax.random.split(jax.random.key(seed), 3)
  return data_key, ref_key, run_key


def _law(family: protocol.Family, const, params, g):
  """The law generation g's model samples from: itself, or biased by the run's sampling knobs
  (their value at g, where a knob is a schedule)."""
  chosen = knobs.sampling(const.get('knobs', {}), g)
  return family.biased(params, chosen) if chosen else params


def _first_generation(family: protocol.Family, sweep: protocol.Sweep, seed, value):
  """Generation 0 of one run: fit the original data. Returns const, carry, metrics. `value`:
  the regime's parameter, or (it, {knob: value}) where the sweep sets knobs."""
  data_key, ref_key, run_key = _keys(seed)
  _, fit_key, sample_key = jax.random.split(jax.random.fold_in(run_key, 0), 3)
  n = sweep.samples
  value, knob_values = value if isinstance(value, tuple) else (value, None)
  x0_NxD = family.draw_real(data_key, n)
  params, fit_metrics = family.fit(x0_NxD, jnp.ones(n), fit_key)
  const = {'seed': seed, 'fraction': value, 'x0': x0_NxD}
  if knob_values:
    const['knobs'] = knob_values
  synth_NxD = family.sample(_law(family, const, params, 0), sample_key, n)
  const['ref'] = ref = family.reference(params, ref_key)
  if sweep.score == 'gen0':
    const['model0'] = params
  if _draws_candidates(family, sweep) or family.refitting(sweep.regime):
    carry = {'model': params}
  elif protocol.running(family, sweep):  # the summary is all a generation reads
    carry = {}
  else:
    carry = {'last': synth_NxD}
  rows = protocol.pool_rows(family, sweep, n)
  if protocol.running(family, sweep):
    ones = jnp.ones(n)
    carry['summary'] = family.summary.combine(family.summary.of(x0_NxD, ones),
                                              family.summary.of(synth_NxD, ones))
  if rows:
    pool_PxD = jnp.zeros((rows, x0_NxD.shape[-1]), x0_NxD.dtype)
    carry['pool'] = pool_PxD.at[:n].set(x0_NxD).at[n:2 * n].set(synth_NxD)
  metrics = {**fit_metrics, **family.evaluate(params, synth_NxD, ref)}
  return const, carry, {**metrics, **_score_metrics(family, sweep, const, params, synth_NxD,
                                                    x0_NxD, jnp.ones(n), {}, fit_key)}


def _draws_candidates(family: protocol.Family, sweep: protocol.Sweep) -> bool:
  """Whether a generation draws its synthetic training data from the previous model itself
  (more or fewer rows than it evaluates, or to score them) rather than reusing those samples."""
  reg = regimes.get(sweep.regime)
  return not reg.keeps_pool and (reg.scored or sweep.candidate_rows() != sweep.samples)


def _score_metrics(family, sweep, const, params, synth_NxD, x_RxD, w_R, policy_metrics, key,
                   previous=None):
  """The mean score of the training data and of the model's samples, where the run has a
  score; pass_rate, the share of candidates kept (1 where nothing is filtered)."""
  if sweep.score is None:
    return {}
  score = regimes.scorer(family, sweep.score, sweep.noise, const.get('knobs'))
  model0 = const.get('model0', params)
  k1, k2, k3 = jax.random.split(jax.random.fold_in(key, 1), 3)
  if x_RxD is None:  # refitted on draws of its own: as many fresh draws of the same model
    x_RxD, w_R = family.sample(previous, k3, sweep.samples), jnp.ones(sweep.samples)
  s_R = score(params, model0, x_RxD, k2)
  s_N = score(params, model0, synth_NxD, k1)
  return {'sample_score': s_N.at + jnp.mean(s_N.gap_N),
          'train_score': s_R.at + jnp.sum(jnp.where(w_R > 0, w_R * s_R.gap_N, 0.0)) / jnp.sum(w_R),
          'pass_rate': jnp.float32(policy_metrics.get('pass_rate', 1.0))}


def _generation(family: protocol.Family, sweep: protocol.Sweep, const, carry, g):
  """Generation g >= 1 of one run: build the training set, fit, sample, measure."""
  _, _, run_key = _keys(const['seed'])
  train_key, fit_key, sample_key = jax.random.split(jax.random.fold_in(run_key, g), 3)
  n = sweep.samples
  reg = regimes.get(sweep.regime)
  x_RxD, w_R, policy_metrics = None, None, {}
  run_knobs = const.get('knobs', {})
  real_weight = knobs.value(run_knobs, 'real_weight', g) if 'real_weight' in run_knobs else None
  previous = carry.get('model')
  if previous is not None:
    previous = _law(family, const, previous, g - 1)
  if _draws_candidates(family, sweep):
    draw_key, score_key, train_key = jax.random.split(train_key, 3)
    last_CxD = family.sample(previous, draw_key, sweep.candidate_rows())
    scores_C = None
    if reg.scored:
      scores_C = regimes.scorer(family, sweep.score, sweep.noise, run_knobs)(
          carry['model'], const.get('model0'), last_CxD, score_key).gap_N
    x_RxD, w_R, policy_metrics = regimes.apply(
        reg, regimes.Pools(const['x0'], last_CxD, carry.get('pool'), family.draw_real,
                           real_weight), g, train_key, const['fraction'], scores_C)
    params, fit_metrics = family.fit(x_RxD, w_R, fit_key)
  elif family.refitting(sweep.regime):
    params, fit_metrics = family.refit(previous, fit_key, n)
  elif protocol.running(family, sweep):
    params, fit_metrics = family.summary.fit(carry['summary'], fit_key)
  else:
    x_RxD, w_R, policy_metrics = regimes.apply(
        reg, regimes.Pools(const['x0'], carry['last'], carry.get('pool'), family.draw_real,
                           real_weight), g, train_key, const['fraction'], None)
    params, fit_metrics = family.fit(x_RxD, w_R, fit_key)
  carry = dict(carry)
  if 'model' in carry:
    carry['model'] = params
  needs_rows = sweep.score is not None or bool({'last', 'pool'} & set(carry))
  law = _law(family, const, params, g)
  if family.sample_summary is not None and not needs_rows:
    stats = family.sample_summary(law, sample_key, n)  # no rows needed: their statistics
    if 'summary' in carry:
      carry['summary'] = family.summary.combine(carry['summary'], stats)
    return carry, {**fit_metrics, **family.evaluate(params, stats, const['ref'])}  # no score
  synth_NxD = family.sample(law, sample_key, n)
  if 'last' in carry:
    carry['last'] = synth_NxD
  if 'summary' in carry:
    carry['summary'] = family.summary.combine(carry['summary'],
                                              family.summary.of(synth_NxD, jnp.ones(n)))
  if 'pool' in carry:
    carry['pool'] = jax.lax.dynamic_update_slice_in_dim(carry['pool'], synth_NxD, (g + 1) * n, 0)
  metrics = {**fit_metrics, **family.evaluate(params, synth_NxD, const['ref'])}
  return carry, {**metrics, **_score_metrics(family, sweep, const, params, synth_NxD, x_RxD, w_R,
                                             policy_metrics, fit_key, previous)}


# ---------------------------------------------------------------- compiled programs

def programs(family: protocol.Family | protocol.WithData, sweep: protocol.Sweep, chunk: int,
             width: int, devices=None):
  """The two compiled programs of a sweep: generation 0, and `chunk` generations.

  Each device advances its own runs independently (shard_map), `width` runs
  vectorised together (lax.map over vmapped groups). A run's fit stops when that
  run converges: a wide group waits for its slowest member, which pays on an
  accelerator and not on a CPU, where one run already fills the vector units.
  The groups never depend on the device count, so neither do the results.
  `devices`: compile for these compile-only devices (collapse_jax.core.targets) instead of
  this process's; `.compiled` then gives the executable and its bytes, and nothing runs.
  """
  runs, replicated = PartitionSpec('runs'), PartitionSpec()
  runs_mesh = placement.mesh(devices=devices)
  make, data = protocol.unbind(family)

  def per_device(one_run, in_specs, donate=()):
    """one_run(*per_run_args, *shared_args) over this device's runs, in groups of width."""
    mapped = sum(spec == runs for spec in in_specs)

    def local(*args):
      shared = args[mapped:]
      return jax.lax.map(lambda a: one_run(*a, *shared), args[:mapped], batch_size=width)
    return jax.jit(jax.shard_map(local, mesh=runs_mesh, in_specs=in_specs, out_specs=runs,
                                 check_vma=False), donate_argnums=donate)

  def first_run(seed, fraction, data):
    return _first_generation(make(data), sweep, seed, fraction)

  def chunk_run(const, carry, g0, data):
    """Generations g0 .. g0 + chunk - 1 of one run; those past the last are skipped."""
    bound = make(data)

    def body(carry, g):
      step = lambda: _generation(bound, sweep, const, carry, g)
      shapes = jax.eval_shape(step)[1]
      skip = lambda: (carry, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
      return jax.lax.cond(g <= sweep.generations, step, skip)
    return jax.lax.scan(body, carry, g0 + jnp.arange(chunk))

  first = per_device(first_run, (runs, runs, replicated))
  # g0 is traced and shared by all runs, so one program serves every chunk.
  advance = per_device(chunk_run, (runs, runs, replicated, replicated), donate=1)
  run_first = lambda seed_B, fraction_B: first(seed_B, fraction_B, data)  # noqa: E731
  run_advance = lambda const_B, carry_B, g0: _swap(advance(const_B, carry_B, g0, data))  # noqa: E731
  # Ahead of time: the same programs compiled for given arguments, with their bytes per device.
  held = data if devices is None else jax.tree.map(  # a compile-only target holds shapes only
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                     sharding=NamedSharding(runs_mesh, replicated)), data)
  # A compile-only device is not this process's: kernels that ask which GPU they are lowered
  # for (Pallas) learn it from the mesh's abstract device.
  target = None if devices is None else runs_mesh.abstract_mesh
  run_first.compiled = lambda *args: _ahead(first, held, args, lambda out: out, target)
  run_advance.compiled = lambda *args: _ahead(advance, held, args, _swap, target)
  return run_first, run_advance


def _ahead(jitted, data, args, finish, target=None):
  """(the compiled program as a function of args, the bytes a device needs to run it); the
  function's `executable` is XLA's, for its memory and cost analyses and its HLO. target:
  the abstract mesh of compile-only devices, lowered under."""
  with contextlib.nullcontext() if target is None else jax.sharding.use_abstract_mesh(target):
    lowered = jitted.lower(*args, data)
  exe = lowered.compile()
  call = lambda *a: finish(exe(*a, data))  # noqa: E731
  call.executable = exe
  return call, placement.needed_bytes(exe)


def _swap(out):
  """Per-run metrics B x chunk -> chunk x B, as the host loop stores them."""
  carry_B, metrics_BxC = out
  return carry_B, jax.tree.map(lambda v: jnp.swapaxes(v, 0, 1), metrics_BxC)


# ---------------------------------------------------------------- the host loop

def _check_finite(metrics, g0, sweep, seed_B, fraction_B, below=()):
  """Raises on the first non-finite metric, naming generation, seed and parameter value;
  the metrics named in `below` may be -inf (the logarithm of a spread that reached 0)."""
  for name, v_CxB in metrics.items():
    if not np.issubdtype(v_CxB.dtype, np.floating):
      continue
    bad_CxB = ~np.isfinite(v_CxB) & ((v_CxB != -np.inf) if name in below else True)
    if np.any(bad_CxB):
      c, b = np.argwhere(bad_CxB)[0][:2]
      column = regimes.get(sweep.regime).column
      raise FloatingPointError(
          f'{name} is {v_CxB[c, b]} at generation {g0 + c} of seed {seed_B[b]} '
          f'(regime {sweep.regime}, {column.replace("_", " ")} {fraction_B[b]:g})')


def compile_sweep(family: protocol.Family | protocol.WithData, sweep: protocol.Sweep, chunk: int,
                  width: int | None = None, with_first: bool = True, devices=None):
  """A sweep's runs placed on the devices and its two programs compiled ahead of time:
  ((seed_B, fraction_B), runs per device, first, advance, the abstract (const_B, carry_B,
  metrics0) of generation 0 with the runs' sharding, the bytes a device needs).
  with_first=False compiles the chunk's program alone (a resumed run never runs generation
  0's); first is None then, and the bytes are the chunk's. With compile-only `devices` (a
  target, collapse_jax.core.targets) the programs are compiled for them and never run:
  first.executable and advance.executable hold XLA's executables, seed_B and fraction_B are
  shapes, and the bytes are the target's."""
  (seed_B, fraction_B), per_device = placement.placed_runs(sweep, devices)
  platform = None if devices is None else devices[0].platform
  first, advance = programs(
      family, sweep, chunk,
      min(width or placement.default_width(protocol.concrete(family), per_device, platform),
          per_device), devices)
  shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=seed_B.sharding),
                        jax.eval_shape(first, seed_B, fraction_B))
  g0 = jnp.int32(1) if devices is None else jax.ShapeDtypeStruct(
      (), jnp.int32, sharding=NamedSharding(seed_B.sharding.mesh, PartitionSpec()))
  first, need_first = first.compiled(seed_B, fraction_B) if with_first else (None, 0)
  advance, need_advance = advance.compiled(shapes[0], shapes[1], g0)
  return (seed_B, fraction_B), per_device, first, advance, shapes, max(need_first, need_advance)


def run(family: protocol.Family | protocol.WithData, sweep: protocol.Sweep, directory: str,
        checkpoint_every: int, progress: bool = True, width: int | None = None,
        settled: Callable[[dict[str, np.ndarray]], bool] | None = None
        ) -> dict[str, np.ndarray]:
  """Runs (or resumes, or reloads) a sweep; returns metrics, each (G+1) x B x ...

  Checkpoints land in `directory` every `checkpoint_every` generations. A sweep
  whose last checkpoint is its final generation is reloaded, not recomputed.
  `width` runs are vectorised together on each device (placement.default_width()).
  `settled(metrics_B)`, given the latest generation's metrics, says whether every
  run has reached a state that later generations repeat exactly (an absorbed
  chain); the sweep then stops at the end of that chunk and the remaining
  generations repeat its metrics.
  """
  b = len(sweep.runs()[0])
  manager = checkpoints.manager(directory)
  step = manager.latest_step()
  if step == sweep.generations:  # finished: read the metrics back, compile nothing
    saved = manager.restore(step, args=ocp.args.Composite(history=ocp.args.StandardRestore()))
    return {k: np.asarray(v)[:, :b] for k, v in saved.history.items()}

  chunk = min(checkpoint_every, sweep.generations)
  # Compiled before anything runs, so a batch too large for a device is refused up front;
  # a resumed run compiles only the chunk's program.
  (seed_B, fraction_B), per_device, first, advance, shapes, need = compile_sweep(
      family, sweep, chunk, width, step is None)
  const_B, carry_B, metrics0 = shapes
  shared = sum(x.nbytes for x in jax.tree.leaves(protocol.unbind(family)[1]))
  line = placement.check_memory(need, per_device, shared, b)
  if progress and placement.is_primary():
    tqdm.tqdm.write(f'{sweep.regime} M={sweep.samples}: {line}', file=sys.stderr)
  metrics = {k: np.zeros((sweep.generations + 1,) + v.shape, v.dtype) for k, v in metrics0.items()}

  value_B = fraction_B[0] if isinstance(fraction_B, tuple) else fraction_B  # knobs beside it
  labels = (sweep, placement.to_host(seed_B), placement.to_host(value_B),  # for error messages
            protocol.concrete(family).unbounded_below)
  if step is None:
    const_B, carry_B, metrics0 = first(seed_B, fraction_B)
    metrics0 = {k: placement.to_host(v)[None] for k, v in metrics0.items()}
    _check_finite(metrics0, 0, *labels)
    for k, v in metrics0.items():
      metrics[k][0] = v[0]
    step = 0
  else:  # resume: restore onto the same sharding
    saved = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore({'const': const_B, 'carry': carry_B}),
        history=ocp.args.StandardRestore(metrics)))
    const_B, carry_B = saved.state['const'], saved.state['carry']
    metrics = {k: np.asarray(v) for k, v in saved.history.items()}

  with tqdm.tqdm(total=sweep.generations, initial=step, desc=f'{sweep.regime} M={sweep.samples}',
                 unit='gen', disable=not progress or not placement.is_primary(),
                 dynamic_ncols=True) as bar:
    while step < sweep.generations:
      carry_B, chunk_metrics = advance(const_B, carry_B, jnp.int32(step + 1))
      done = min(chunk, sweep.generations - step)
      chunk_metrics = {k: placement.to_host(v)[:done] for k, v in chunk_metrics.items()}
      _check_finite(chunk_metrics, step + 1, *labels)
      for k, v in chunk_metrics.items():
        metrics[k][step + 1:step + 1 + done] = v
      step += done
      if settled is not None and step < sweep.generations and settled(
          {k: v[step] for k, v in metrics.items()}):
        for v in metrics.values():
          v[step + 1:] = v[step]
        bar.update(sweep.generations - step)
        step = sweep.generations
      checkpoints.save(manager, step, ocp.args.Composite(
          state=ocp.args.StandardSave({'const': const_B, 'carry': carry_B}),
          history=ocp.args.StandardSave(metrics)))
      bar.update(done)
  manager.wait_until_finished()
  return {k: v[:, :b] for k, v in metrics.items()}
