"""The language-model experiment: every setting's seeds through their generations, then the
tables, figures and summary of the whole run."""

import dataclasses
import json
import os

import jax
import numpy as np

from collapse_jax.core import checkpoints, files, placement, plots, regimes, results, validation
from collapse_jax.families.lm import generations, inputs, records
from collapse_jax.families.lm.config import LMConfig
from collapse_jax.families.lm.measurement import METRICS, SCORE_METRICS

DECODED = {'beam': 'beam-search', 'greedy': 'greedy', 'sample': 'sampled'}  # for titles


def run(cfg: LMConfig, workdir: str, progress: bool = True, log=print):
  """Runs, resumes or reloads the experiment in `workdir`; returns its metrics table.

  Leaves there: config.json; <regime>[_<value>]/seed_<s>/gen_<g>/ with the best
  weights (Orbax), the generated blocks, their perplexities under the generation-0
  model (and their scores, for a run with one) and the metrics; metrics.csv (a row per
  regime x value of its parameter x seed x generation), generated_perplexity.csv (a row per generated block),
  continuations.csv, perplexity.png, histograms.png, tails.png and summary.txt.
  """
  cfg.validate()
  data = inputs.load_data(cfg)  # missing data or tokenizer fail here, before anything is written
  # Where things are and how many seeds run at once, not what the run is.
  where = {'tokenizer', 'data_dir', 'parallel_seeds'}
  validation.check_config(workdir, {k: v for k, v in json.loads(json.dumps(
      dataclasses.asdict(cfg))).items() if k not in where})
  log(f'{len(data["train"])} training blocks of {cfg.block} tokens, {len(data["valid"])} '
      f'validation, {len(data["test"])} test; {jax.device_count()} {jax.default_backend()} device(s)')

  # -- every setting x seed: a host loop over generations
  sweeps, hist, texts, first_name = [], [], [], None
  metric_names = METRICS + (SCORE_METRICS if cfg.active_score(cfg.regimes) else ())
  for regime in cfg.regimes:
    reg = regimes.get(regime)
    for value in cfg.values(regime):
      name = regime if reg.quiet(value) else f'{regime}_{value:g}'
      real = value if reg.parameter == 'real_fraction' else 0.0
      first_name = first_name or name
      seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
      if name != first_name:
        for seed in seeds:
          _share_first_generation(os.path.join(workdir, first_name, f'seed_{seed}'),
                                  os.path.join(workdir, name, f'seed_{seed}'))
      together, per_seed = seeds_at_once(cfg), []
      for i in range(0, cfg.seeds, together):
        try:
          per_seed += generations.run_seeds(cfg, regime, value, seeds[i:i + together], data,
                                            os.path.join(workdir, name), progress, log)
        except jax.errors.JaxRuntimeError as e:
          if 'RESOURCE_EXHAUSTED' not in str(e) or together == 1:
            raise
          raise validation.ConfigError(
              'parallel_seeds', f'{together} seeds at once ran out of device memory; rerun with '
              f'--parallel_seeds={together // 2}, which resumes where this run stopped') from None
      for seed, rows in zip(seeds, per_seed):
        for row in rows:
          ppl = np.load(checkpoints.checked(os.path.join(
              workdir, name, f'seed_{seed}', f'gen_{row["generation"]:02d}', 'generated_ppl.npy')))
          hist.append((regime, real, name, seed, row['generation'], ppl))
          texts.append((regime, real, name, seed, row['generation'], row['continuation']))
      sweep = cfg.sweep(regime, value, len(data['train']))
      metrics = {m: np.array([[rows[g][m] for rows in per_seed] for g in range(cfg.generations + 1)],
                             np.float64) for m in metric_names}
      sweeps.append((sweep, metrics))

  # -- tables, figures, summary
  table = results.long_table(sweeps, first=metric_names)
  results.write_csv(table, os.path.join(workdir, 'metrics.csv'))
  # setting: the regime and its parameter's value, as the run's folder is named
  records.write_rows(os.path.join(workdir, 'continuations.csv'),
                   ('regime', 'real_fraction', 'setting', 'seed', 'generation', 'text'), texts)
  records.write_rows(os.path.join(workdir, 'generated_perplexity.csv'),
                   ('regime', 'real_fraction', 'setting', 'seed', 'generation', 'block', 'perplexity'),
                   [(*head, i, f'{p:.6g}') for *head, ppl in hist for i, p in enumerate(ppl)])
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
  plots.perplexity_histograms([(name, *rest) for _, _, name, *rest in hist],
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


def _share_first_generation(source: str, directory: str):
  """Links generation 0 of a finished setting into another: it trains on the original data
  with the seed's keys whatever the regime, so it is the same run."""
  link = os.path.join(directory, 'gen_00')
  if placement.is_primary() and not os.path.lexists(link):
    os.makedirs(directory, exist_ok=True)
    os.symlink(os.path.relpath(os.path.join(source, 'gen_00'), directory), link)
  placement.barrier(f'{link} shared')
