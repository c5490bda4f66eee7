"""What a language-model run writes and reads back: sealed arrays, JSON, CSV rows, and whether
a generation's measurements are all there and intact."""

import csv
import json
import os

import numpy as np

from collapse_jax.core import checkpoints, files


def save_npy(path: str, array):
  """Writes an array, then its digest (checkpoints.seal)."""
  files.write_file(path, lambda f: np.save(f, array), binary=True)
  checkpoints.seal(path)


def measured(gdirs, candidates: int) -> bool:
  """Whether every seed's generation has its metrics, and perplexities (and scores of
  `candidates` blocks, where there is a score) that match their digest."""
  def scored(d):
    path = os.path.join(d, 'scores.npy')
    return not candidates or (checkpoints.intact(path, 'measuring it again')
                              and len(np.load(path)) >= candidates)
  return all([os.path.exists(os.path.join(d, 'metrics.json'))
              and checkpoints.intact(os.path.join(d, 'generated_ppl.npy'), 'measuring it again')
              and scored(d) for d in gdirs])


def write_json(path: str, value):
  files.write_file(path, lambda f: json.dump(value, f, indent=1))


def write_rows(path: str, header, rows):
  files.write_file(path, lambda f: csv.writer(f).writerows([header, *rows]))
