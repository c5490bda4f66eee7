"""The language-model experiment: every setting's seeds through their generations, then the
tables, figures and summary of the whole run."""

import os

import jax
import numpy as np

from collapse_jax.core import checkpoints, files, placement, plots, regimes, results, validation
from collapse_jax.families.lm import generations, inputs, records
from collapse_jax.families.lm.config import LMConfig, folder
from collapse_jax.families.lm.measurement import METRICS, SCORE_METRICS

DECODED = {'beam': 'beam-search', 'greedy': 'greedy', 'sample': 'sampled'}  # for titles


def run(cfg: LMConfig, workdir: str, progress: bool = True, log=print):
  """Runs, resumes or reloads the experiment in `workdir`; returns its metrics table.

  Leaves there: config.json; <regime>[_<value>][_<knob>_<value>...]/seed_<s>/gen_<g>/ (a
  folder per group of runs: a regime, a value of its parameter and, where the run sweeps
  sampling knobs, one value of each) with the best weights (Orbax), the generated blocks,
  their perplexities under the generation-0 model (and their scores, for a run with one)
  and the metrics; metrics.csv (a row per regime x value of its parameter x knobs' values x
  seed x generation), generated_perplexity.csv (a row per generated block),
  continuations.csv, perplexity.png, histograms.png, tails.png and summary.txt.
  """
  cfg.validate()
  data = inputs.load_data(cfg)  # missing data or tokenizer fail here, before anything is written
  validation.check_config(workdir, cfg.record())
  log(f'{len(data["train"])} training blocks of {cfg.block} tokens, {len(data["valid"])} '
      f'validation, {len(data["test"])} test; {jax.device_count()} {jax.default_backend()} device(s)')

  # -- every group of runs (a regime, a value of its parameter, the knobs' values) x seed: a
  # host loop over generations
  sweeps, hist, texts, firsts = [], [], [], {}
  metric_names = METRICS + (SCORE_METRICS if cfg.active_score(cfg.regimes) else ())
  for regime in cfg.regimes:
    for value in cfg.values(regime):
      sweep = cfg.sweep(regime, value, len(data['train']))
      per_run = []  # each run's rows, in the order of sweep.runs()
      for _, knob_values in sweep.grid():
        name = folder(regime, value, knob_values)
        _share(workdir, name, firsts, tuple(knob_values.items()), cfg)
        per_seed = _run_group(cfg, regime, value, knob_values, data, os.path.join(workdir, name),
                              progress, log)
        real = value if regimes.get(regime).parameter == 'real_fraction' else 0.0
        head = (regime, real, *knob_values.values(), name)
        for seed, rows in zip(range(cfg.first_seed, cfg.first_seed + cfg.seeds), per_seed):
          for row in rows:
            g = row['generation']
            ppl = np.load(checkpoints.checked(os.path.join(
                workdir, name, f'seed_{seed}', f'gen_{g:02d}', 'generated_ppl.npy')))
            hist.append((*head, seed, g, ppl))
            texts.append((*head, seed, g, row['continuation']))
        per_run += per_seed
      metrics = {m: np.array([[rows[g][m] for rows in per_run] for g in range(cfg.generations + 1)],
                             np.float64) for m in metric_names}
      sweeps.append((sweep, metrics))

  # -- tables, figures, summary
  table = results.long_table(sweeps, first=metric_names)
  results.write_csv(table, os.path.join(workdir, 'metrics.csv'))
  # the knobs the run sets, then setting: the regime, its parameter's value and the knobs', as
  # the group's folder is named
  head = ('regime', 'real_fraction', *(k for k, _ in cfg.knob_settings()), 'setting', 'seed',
          'generation')
  records.write_rows(os.path.join(workdir, 'continuations.csv'), (*head, 'text'), texts)
  records.write_rows(os.path.join(workdir, 'generated_perplexity.csv'),
                   (*head, 'block', 'perplexity'),
                   [(*row, i, f'{p:.6g}') for *row, ppl in hist for i, p in enumerate(ppl)])
  curves = results.over_seeds(sweeps)
  plots.curves(curves, [('test_ppl', 'test perplexity', True),
                        ('generated_ppl_median', 'median perplexity of generated blocks\n'
                         'under the generation-0 model', True)],
               os.path.join(workdir, 'perplexity.png'),
               title=f'{cfg.model} fine-tuned on its own {DECODED[cfg.decoding]} text, '
                     f'{cfg.seeds} seed(s)')
  plots.curves(curves, [('distinct_tokens', 'distinct tokens generated', False),
                        ('rare_share', "share of the corpus's rarest 10% of tokens\nstill generated",
                         False),
                        ('repeated_4grams', 'repeated 4-grams within a block', False)],
               os.path.join(workdir, 'tails.png'), title='Tails of the generated text')
  plots.perplexity_histograms([row[-4:] for row in hist],
                              os.path.join(workdir, 'histograms.png'))
  text = results.summary(curves, ('test_ppl', 'generated_ppl_median', 'distinct_tokens',
                                  'rare_share', 'repeated_4grams'), generations=(1, 5))
  files.write_text(os.path.join(workdir, 'summary.txt'), text + '\n')
  log(text)
  return table


def seeds_at_once(cfg: LMConfig) -> int:
  """Seeds vmapped together: --parallel_seeds, else all of them, except one at a time on a CPU,
  where a step over 2 stacked OPT-125m takes 2.33x one's (benchmarks/RESULTS.md)."""
  if cfg.parallel_seeds:
    return min(cfg.parallel_seeds, cfg.seeds)
  return 1 if jax.default_backend() == 'cpu' else cfg.seeds


def _run_group(cfg: LMConfig, regime: str, value: float, knob_values: dict, data, directory: str,
               progress: bool, log) -> list:
  """One group's seeds through every generation, as many at once as fit: each seed's rows."""
  seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
  together, per_seed = seeds_at_once(cfg), []
  for i in range(0, cfg.seeds, together):
    try:
      per_seed += generations.run_seeds(cfg, regime, value, seeds[i:i + together], data,
                                        directory, progress, log, knob_values)
    except jax.errors.JaxRuntimeError as e:
      if 'RESOURCE_EXHAUSTED' not in str(e) or together == 1:
        raise
      raise validation.ConfigError(
          'parallel_seeds', f'{together} seeds at once ran out of device memory; rerun with '
          f'--parallel_seeds={together // 2}, which resumes where this run stopped') from None
  return per_seed


def _share(workdir: str, name: str, firsts: dict, knob_values: tuple, cfg: LMConfig):
  """Links generation 0 of the first group with the same knobs into group `name` (it trains
  on the original data with the seed's keys and decodes alike whatever the regime, so it is
  the same run), or, for the first group with other knobs, only its model."""
  origin = next(iter(firsts.values()), name)
  first = firsts.setdefault(knob_values, name)
  for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
    source, directory = (os.path.join(workdir, n, f'seed_{seed}') for n in (first, name))
    if name != first:
      _link(source, directory, 'gen_00')
    elif name != origin:
      _link(os.path.join(workdir, origin, f'seed_{seed}'), directory,
            os.path.join('gen_00', 'model'), os.path.join('gen_00', 'train.json'))


def _link(source: str, directory: str, *paths: str):
  """Links each of `paths` under `source` to the same path under `directory`."""
  for path in paths:
    link = os.path.join(directory, path)
    if placement.is_primary() and not os.path.lexists(link):
      os.makedirs(os.path.dirname(link), exist_ok=True)
      os.symlink(os.path.relpath(os.path.join(source, path), os.path.dirname(link)), link)
    placement.barrier(f'{link} shared')
