"""Knobs: settings swept beside a regime's parameter, every value a group of runs in the same
compiled program.

  temperature, top_k, top_p   how the model samples the data the next generation trains on
                              (sampling bias): the family's own law, tempered and truncated
  real_weight                 the share of the fit's weight the real rows carry against the
                              synthetic ones, in the regimes that mix them (default: pooled,
                              every row alike)
  verifier_shift, _scale      a biased verifier (--score=verifier): the truth moved by
                              verifier_shift in every coordinate and widened verifier_scale
                              times about its centre

A run reads its knobs from `const['knobs']` (name -> a traced scalar, or a G+1 vector: one
value a generation, a schedule). A knob left at its default is not in a sweep at all, so a
run that sets none compiles the programs it compiled before knobs existed.
"""

import dataclasses
import itertools
import math
from typing import Callable

import jax.numpy as jnp
import numpy as np

from collapse_jax.core.settings import setting


@dataclasses.dataclass(frozen=True)
class Knob:
  """A knob: `default` (NaN: off, the behaviour without it), the values allowed, and what it
  acts on: 'sampling' (every regime), 'weight' (regimes with real rows), 'verifier' (every
  regime, when the score is the verifier)."""
  name: str
  default: float
  valid: Callable[[float], bool]
  allowed: str
  acts_on: str


KNOBS = {
    'temperature': Knob('temperature', 1.0, lambda v: v > 0, 'positive', 'sampling'),
    'top_k': Knob('top_k', 0.0, lambda v: v >= 0 and v == int(v),
                  'a non-negative whole number (0: every outcome)', 'sampling'),
    'top_p': Knob('top_p', 1.0, lambda v: 0 < v <= 1, 'in (0, 1]', 'sampling'),
    'real_weight': Knob('real_weight', math.nan, lambda v: 0 <= v <= 1, 'in [0, 1]', 'weight'),
    'verifier_shift': Knob('verifier_shift', 0.0, math.isfinite, 'finite', 'verifier'),
    'verifier_scale': Knob('verifier_scale', 1.0, lambda v: 0 < v < math.inf, 'positive',
                           'verifier'),
}
SAMPLING = tuple(k for k, v in KNOBS.items() if v.acts_on == 'sampling')


def value(knobs: dict, name: str, g=None):
  """The run's value of a knob at generation g: its default where the sweep does not set it,
  the g-th entry of a schedule (a vector of one value a generation)."""
  if name not in knobs:
    return KNOBS[name].default
  v = knobs[name]
  return v if g is None or jnp.ndim(v) == 0 else v[g]


def sampling(knobs: dict, g=None) -> dict:
  """The sampling knobs the sweep sets, at generation g: what Family.biased takes."""
  return {k: value(knobs, k, g) for k in SAMPLING if k in knobs}


def with_temperature(params, knobs: dict) -> dict:
  """params marked with the sampling temperature (knobs: {'temperature': t}), for a family
  whose sampler scales noise of its own by it (a flow's initial noise, a VAE's latents, a
  regression's label noise): its Family.biased."""
  return {**params, 'temperature': knobs['temperature']}


def split_temperature(params: dict):
  """(params without the mark, its temperature or None) of params with_temperature may have
  marked."""
  if 'temperature' not in params:
    return params, None
  return {k: v for k, v in params.items() if k != 'temperature'}, params['temperature']


def grid(fractions, knobs) -> list[tuple[float, dict]]:
  """(regime value, {knob: value}) of every group of runs, the regime's value slowest."""
  names = [name for name, _ in knobs]
  return [(f, dict(zip(names, combo)))
          for f in fractions for combo in itertools.product(*(values for _, values in knobs))]


def per_run(fractions, knobs, seeds: int) -> dict[str, np.ndarray]:
  """Every knob's value of each run (seeds fastest, in the order of grid), as float32."""
  groups = grid(fractions, knobs)
  return {name: np.repeat(np.asarray([g[name] for _, g in groups], np.float32), seeds)
          for name, _ in knobs}


@dataclasses.dataclass(frozen=True)
class Options:
  """The knobs' settings, as fields of an experiment's config (a base class of it): the
  values swept of each; a knob at its default is not swept."""
  temperatures: tuple[float, ...] = setting(
      (1.0,), 'Comma-separated sampling temperatures, each a group of runs: the model '
      "samples its successor's data from its law tempered so (a Gaussian's spread times t, "
      'logits over t).', flag='temperature', recorded='changed')
  top_ks: tuple[int, ...] = setting(
      (0,), 'Comma-separated k, each a group of runs: the model samples among its k most '
      'likely outcomes (discrete families; 0: all).', flag='top_k', recorded='changed')
  top_ps: tuple[float, ...] = setting(
      (1.0,), 'Comma-separated p, each a group of runs: the model samples among its most '
      'likely outcomes holding probability p (discrete families; 1: all).', flag='top_p',
      recorded='changed')
  real_weights: tuple[float, ...] = setting(
      (), 'Comma-separated weights w in [0, 1], each a group of runs: in the regimes that mix '
      'real and synthetic rows (mix, fresh, augment, accumulate), the real rows carry a share '
      'w of the fit\'s weight and the synthetic ones 1 - w (default: pooled, every row alike).',
      flag='real_weight', recorded='changed')
  verifier_shifts: tuple[float, ...] = setting(
      (0.0,), 'Comma-separated shifts, each a group of runs: --score=verifier ranks by the '
      'truth moved this far in every coordinate (a biased verifier).', flag='verifier_shift',
      recorded='changed')
  verifier_scales: tuple[float, ...] = setting(
      (1.0,), 'Comma-separated scales, each a group of runs: --score=verifier ranks by the '
      'truth widened this many times about its centre.', flag='verifier_scale', recorded='changed')

  def knob_settings(self) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """(knob, values) of the knobs set away from their defaults, in KNOBS' order."""
    return tuple((k, tuple(float(v) for v in getattr(self, FIELDS[k]))) for k in KNOBS
                 if not at_default(k, getattr(self, FIELDS[k])))


def at_default(name: str, values) -> bool:
  """Whether a knob's values leave it off: its default alone (none, for real_weight)."""
  default = KNOBS[name].default
  return len(values) == 0 if math.isnan(default) else tuple(values) == (default,)


FIELDS = {f.metadata['flag']: f.name for f in dataclasses.fields(Options)}  # knob -> its field
