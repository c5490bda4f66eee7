"""One setting of the language-model experiment (a regime and one value of its parameter): a
group of seeds through every generation, trained and decoded together.

A generation is four steps, each resumable from what is on disk: its model (restored where
every seed's is saved intact, else fine-tuned and saved), its generated blocks (regenerate:
only the missing batches), its measurements (where any seed's are missing or damaged), and
reading back what every process then shares (metrics, and the scores a regime ranks by).
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from collapse_jax.core import checkpoints, placement
from collapse_jax.families.lm import arrays, decoding, inputs, measurement, records, training
from collapse_jax.families.lm.config import LMConfig


@dataclasses.dataclass(frozen=True)
class _Setting:
  """What every generation of a group of seeds shares."""
  cfg: LMConfig
  regime: str
  value: float
  seeds: list
  data: dict
  directory: str
  progress: bool
  log: object
  config: object  # the network's OPTConfig
  pretrained: object  # params_S, replicated: where each generation starts (or the first)
  one_seed: object  # a target to restore a seed's model onto
  keys: list  # a key per seed
  candidates: int  # blocks each generation generates
  prompts: np.ndarray  # prompt c continued by block c
  ckptr: ocp.StandardCheckpointer
  knobs: dict  # the sampling knobs' values the group sets (knobs.SAMPLING), traced when decoding

  @property
  def label(self) -> str:
    return f'seed {self.seeds[0]}' + (f'-{self.seeds[-1]}' if len(self.seeds) > 1 else '')

  @property
  def scored(self) -> bool:
    return self.cfg.active_score(self.cfg.regimes) is not None

  @property
  def train_dir(self) -> str:
    """Where generations keep their epochs' states while they train."""
    return os.path.join(self.directory, f'train_seeds_{self.seeds[0]}-{self.seeds[-1]}')


@dataclasses.dataclass
class _Generation:
  """Generation g of every seed of a setting: its folders, its keys and, once drawn, its
  training blocks (ids_SxNxL) with the share of candidates kept (pass_rate_S)."""
  g: int
  dirs: list
  data_keys: tuple
  train_keys: tuple
  gen_keys: tuple
  train_dir: str
  blocks: tuple | None = None

  @property
  def model_dirs(self) -> list:
    return [os.path.abspath(os.path.join(d, 'model')) for d in self.dirs]

  @property
  def metrics_paths(self) -> list:
    return [os.path.join(d, 'metrics.json') for d in self.dirs]


@dataclasses.dataclass
class _History:
  """Each seed's generations so far: generated[s][k] and scores[s][k] were made by generation k
  (scores where the run has a score); rows[s][k] is its metrics."""
  generated: list
  scores: list
  rows: list


def run_seeds(cfg: LMConfig, regime: str, value: float, seeds, data, directory: str,
              progress: bool = True, log=print, knob_values=None):
  """All generations of `seeds` under a regime and its parameter's value (and the sampling
  knobs' `knob_values`, {name: value}), trained and decoded together, seed s's in
  directory/seed_<s>; returns each seed's metrics (a list per seed of a dict per
  generation)."""
  setting = _setting(cfg, regime, value, seeds, data, directory, progress, log, knob_values or {})
  history = _History(*([[] for _ in seeds] for _ in range(3)))
  params, params0 = setting.pretrained, None
  for g in range(cfg.generations + 1):
    gen = _generation(setting, g)
    measured = records.measured(gen.dirs, setting.candidates if setting.scored else 0)
    if not measured or g == 0 or cfg.from_previous:  # this generation's model is needed
      params = _model(setting, gen, history, params)
    shutil.rmtree(gen.train_dir, ignore_errors=True)  # done with
    if g == 0:
      params0 = params
    new_SxCxT = _generate(setting, gen, params)
    for generated, new in zip(history.generated, new_SxCxT):
      generated.append(new)
    if not measured:
      _measure(setting, gen, history, params, params0, new_SxCxT)
    # process 0 has written what the others read
    placement.barrier(f'{directory} {setting.label} generation {g}')
    _read_back(setting, gen, history)
  if placement.is_primary():
    shutil.rmtree(setting.train_dir, ignore_errors=True)  # empty: every generation has trained
  return history.rows


def _setting(cfg: LMConfig, regime: str, value: float, seeds, data, directory: str, progress: bool,
             log, knob_values: dict) -> _Setting:
  config, pretrained = inputs.start_model(cfg, seeds)
  pretrained = arrays.replicated(pretrained)
  one_seed = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=x.sharding),
                          pretrained)
  blocks = len(data['train'])
  candidates = inputs.candidate_blocks(cfg, regime, value, blocks)
  return _Setting(cfg, regime, value, seeds, data, directory, progress, log, config, pretrained,
                  one_seed, [jax.random.key(seed) for seed in seeds], candidates,
                  data['train'][np.arange(candidates) % blocks], ocp.StandardCheckpointer(),
                  knob_values)


def _generation(setting: _Setting, g: int) -> _Generation:
  """Generation g's folders and keys: keys are folded from (seed, generation)."""
  dirs = [os.path.join(setting.directory, f'seed_{seed}', f'gen_{g:02d}') for seed in setting.seeds]
  data_keys, train_keys, gen_keys = zip(*(jax.random.split(jax.random.fold_in(k, g), 3)
                                          for k in setting.keys))
  return _Generation(g, dirs, data_keys, train_keys, gen_keys,
                     os.path.join(setting.train_dir, f'gen_{g:02d}'))


def _training_blocks(setting: _Setting, gen: _Generation, history: _History):
  """(ids_SxNxL, pass_rate_S): generation g's training blocks, for fine-tuning and for
  measuring the model on them, drawn once."""
  if gen.blocks is None:
    sets = [inputs.training_set(setting.cfg, setting.regime, setting.value, gen.g, key,
                                setting.data, generated, scores if setting.scored else None)
            for key, generated, scores in zip(gen.data_keys, history.generated, history.scores)]
    gen.blocks = np.stack([ids for ids, _ in sets]), [rate for _, rate in sets]
  return gen.blocks


def _model(setting: _Setting, gen: _Generation, history: _History, params):
  """Generation g's params_S: restored where every seed's model is saved intact, else
  fine-tuned from the previous generation's (params, with from_previous) or the pretrained."""
  intact = [checkpoints.intact(m, 'training it again') for m in gen.model_dirs]
  if all(intact):
    return arrays.replicated(arrays.stack(
        [setting.ckptr.restore(m, setting.one_seed) for m in gen.model_dirs]))
  start = params if setting.cfg.from_previous else setting.pretrained
  return _train(setting, gen, history, start, [not ok for ok in intact])


def _train(setting: _Setting, gen: _Generation, history: _History, start, missing):
  """Fine-tunes every seed from `start` and saves the model and the validation losses of
  the seeds whose model is missing."""
  cfg = setting.cfg
  ids_SxNxL, _ = _training_blocks(setting, gen, history)
  params, losses_SxE = training.fine_tune(cfg, setting.config, start, ids_SxNxL,
                                          setting.data['valid'], gen.train_keys, gen.train_dir,
                                          f'{setting.label} gen {gen.g} train', setting.progress)
  for s, (gdir, model_dir) in enumerate(zip(gen.dirs, gen.model_dirs)):
    if missing[s]:
      os.makedirs(gdir, exist_ok=True)
      records.write_json(os.path.join(gdir, 'train.json'),
                       {'valid_nll': losses_SxE[s].tolist(), 'blocks': ids_SxNxL.shape[1]})
      # atomic: a killed save leaves no model; force: a damaged one is replaced
      setting.ckptr.save(model_dir, arrays.seed(params, s), force=True)
      setting.ckptr.wait_until_finished()
      checkpoints.seal(model_dir)
  return params


def _generate(setting: _Setting, gen: _Generation, params):
  """new_SxCxT: every seed's continuation of every prompt (regenerate: only what is missing)."""
  return decoding.regenerate(setting.cfg, setting.config, params, setting.prompts,
                             jnp.stack(gen.gen_keys), [os.path.join(d, 'generated') for d in gen.dirs],
                             f'{setting.label} gen {gen.g} generate', setting.progress,
                             setting.knobs)


def _measure(setting: _Setting, gen: _Generation, history: _History, params, params0, new_SxCxT):
  """Measures every seed's model and generated blocks and writes them beside its model."""
  cfg, data = setting.cfg, setting.data
  ids_SxNxL, pass_rate_S = _training_blocks(setting, gen, history)  # a resumed run draws them
  metrics, gen_ppl_SxN, scores_SxC = measurement.measure(cfg, setting.config, params, params0, data,
                                                         ids_SxNxL, new_SxCxT, pass_rate_S)
  for s, gdir in enumerate(gen.dirs):
    with open(os.path.join(gdir, 'train.json')) as f:
      losses = np.asarray(json.load(f)['valid_nll'])
    metrics[s].update(valid_ppl=float(np.exp(np.nanmin(losses))),
                      best_epoch=int(np.nanargmin(losses)) + 1,
                      continuation=decoding.continuation(cfg, setting.config,
                                                         arrays.seed(params, s), data['tokenizer'],
                                                         setting.knobs))
    records.save_npy(os.path.join(gdir, 'generated_ppl.npy'), gen_ppl_SxN[s].astype(np.float32))
    if setting.scored:
      records.save_npy(os.path.join(gdir, 'scores.npy'), scores_SxC[s].astype(np.float32))
    records.write_json(gen.metrics_paths[s], metrics[s])


def _read_back(setting: _Setting, gen: _Generation, history: _History):
  """Adds generation g's scores (which the next generation's regime ranks by) and metrics, as
  saved, to every seed's history."""
  if setting.scored:
    for scores, gdir in zip(history.scores, gen.dirs):
      scores.append(np.load(checkpoints.checked(os.path.join(gdir, 'scores.npy')))[:setting.candidates])
  for seed, path, rows in zip(setting.seeds, gen.metrics_paths, history.rows):
    with open(path) as f:
      metrics = json.load(f)
    rows.append({'generation': gen.g, **metrics})
    knobs = ''.join(f' {k} {v:g}' for k, v in setting.knobs.items())
    setting.log(f'{setting.regime} {setting.value:g}{knobs} seed {seed} gen {gen.g}: test ppl '
                f'{metrics["test_ppl"]:.1f}, generated ppl (gen-0 model) median '
                f'{metrics["generated_ppl_median"]:.1f}')
