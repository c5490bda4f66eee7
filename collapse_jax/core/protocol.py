"""What a model family gives the driver (Family, Summary, WithData) and what one regime's batch
of runs is (Sweep): the types every family and the driver share.

Shapes in names: B runs in the batch, N samples, P pool rows, D dimensions.
"""

import dataclasses
from typing import Any, Callable

import numpy as np

from collapse_jax.core import knobs, regimes


@dataclasses.dataclass(frozen=True)
class Summary:
  """Sufficient statistics of a family whose fit depends on data only through them.

  of(x_NxD, w_N) -> stats           the statistics of weighted data
  combine(stats, stats) -> stats    those of the two data sets together
  fit(stats, key) -> (params, metrics)   the fit they determine

  With these, `accumulate` keeps a running summary instead of every sample:
  constant memory and work per generation instead of a pool that grows.
  """
  of: Callable[..., Any]
  combine: Callable[..., Any]
  fit: Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class Family:
  """What a model family gives the driver; each function is for one run.

  draw_real(key, n) -> x_NxD        samples of the true distribution
  fit(x_NxD, w_N, key) -> (params, metrics)   train on weighted data
  sample(params, key, n) -> x_NxD   the model's own samples
  reference(params0, key) -> ref    what later generations are measured against
  evaluate(params, x_NxD, ref) -> metrics     x_NxD: the model's samples
  summary: sufficient statistics, when the fit has them (see Summary)
  log_density(params, x_NxD) -> l_N   optional: the model's log density (the scores
    self and gen0 of verify and curate)
  true_log_density(x_NxD) -> l_N      optional: the truth's (the scores truth, noisy)
  reward(x_NxD) -> r_N                optional: the family's reward (the score reward)
    These three may return scores.Relative (the score of a point near the rows plus each
    row's difference from it), which keeps the candidates' ranking exact when the model
    is far narrower than the scorer; plain values rank at float32's resolution of the
    values themselves.
  refit(params, key, n) -> (params, metrics)  optional: under `replace`, the next
    generation fitted to n samples of the model `params` that it draws itself, in
    place of `fit` on stored samples: for fits better conditioned in the model's
    own coordinates (its samples are mu + L z: refit from z), or that draw fresh
    samples for every batch
  sample_summary(params, key, n) -> stats   optional: the statistics (as summary.of's) of
    n samples of the model, drawn exactly from their law without the samples. Where a
    generation needs no rows of the model's samples (no stored samples, no scores), the
    driver calls it in their place: `evaluate` then receives these statistics as its
    x_NxD, and a running summary (accumulate) adds them
  biased(params, knobs) -> params   optional: the law the model samples its successor's data
    from under the sampling knobs `knobs` ({name: traced value} of knobs.SAMPLING that the
    run sets): its temperature, and top_k / top_p where outcomes are discrete. The driver
    passes what it returns to sample, refit and sample_summary; evaluate, log_density and
    the carry keep the fit itself
  sampling_knobs: the sampling knobs `biased` takes
  verifier(x_NxD, shift, scale) -> l_N   optional: the log density of a distribution of the
    truth's family moved by `shift` in every coordinate and widened `scale` times about the
    truth's centre (the score verifier: a biased verifier); may return scores.Relative
  unbounded_below: metrics that may be -inf (logarithms of a spread that collapsed to 0
    in float32, as a fit to its own filtered samples can); any other non-finite metric
    stops the run as a bug
  one_at_a_time_on_cpu: on a CPU, run a device's runs one after another rather
    than vectorised (default_width): for fits that iterate to a per-run
    convergence test (EM), or whose vectorised form costs more than a loop
  """
  draw_real: Callable[..., Any]
  fit: Callable[..., Any]
  sample: Callable[..., Any]
  reference: Callable[..., Any]
  evaluate: Callable[..., Any]
  summary: Summary | None = None
  refit: Callable[..., Any] | None = None
  one_at_a_time_on_cpu: bool = False
  log_density: Callable[..., Any] | None = None
  true_log_density: Callable[..., Any] | None = None
  reward: Callable[..., Any] | None = None
  sample_summary: Callable[..., Any] | None = None
  biased: Callable[..., Any] | None = None
  sampling_knobs: tuple[str, ...] = ()
  verifier: Callable[..., Any] | None = None
  unbounded_below: tuple[str, ...] = ()

  def running(self, regime: str, values=(1.0,)) -> bool:
    """Whether this regime keeps a running summary in place of a pool: all data, equal
    weights (`values`: the sweep's values of its parameter, age decays of 1)."""
    reg = regimes.get(regime)
    return (reg.shortcut == 'summary' and self.summary is not None
            and all(v == reg.default for v in values))

  def refitting(self, regime: str) -> bool:
    """Whether this regime refits on the previous model itself rather than its stored samples."""
    return regimes.get(regime).shortcut == 'refit' and self.refit is not None


@dataclasses.dataclass(frozen=True)
class WithData:
  """A family whose functions read large arrays that every run shares (a dataset).

  make(data) -> Family. The driver passes `data` to its compiled programs as an
  argument, replicated on every device: closed over, the arrays would be baked
  into each program as constants, slow to compile and held twice.
  """
  make: Callable[[Any], Family]
  data: Any


def unbind(family):
  """(make, data) of a family with or without shared data."""
  if isinstance(family, WithData):
    return family.make, family.data
  return (lambda _: family), None


def concrete(family) -> Family:
  """The Family itself, its functions bound to the shared data outside any trace."""
  make, data = unbind(family)
  return make(data)


@dataclasses.dataclass(frozen=True)
class Sweep:
  """One regime's batch of runs: seeds x values of the regime's parameter, G generations.

  real_fractions: the values of mix's and fresh's parameter; settings: (parameter,
  values) pairs of the other regimes' (keep_fraction, reward_scale, ...); score:
  what verify and curate rank by (regimes.SCORES), with `noise` for 'noisy';
  candidates: K of curate; knobs: (knob, values) of the knobs swept beside the regime's
  parameter (knobs.KNOBS), each value a group of runs.
  """
  regime: str
  seeds: int
  generations: int
  samples: int
  real_fractions: tuple[float, ...] = (0.0,)
  first_seed: int = 0
  settings: tuple[tuple[str, tuple[float, ...]], ...] = ()
  score: str | None = None
  noise: float = 0.0
  candidates: int = regimes.CANDIDATES
  knobs: tuple[tuple[str, tuple[float, ...]], ...] = ()

  @property
  def fractions(self) -> tuple[float, ...]:
    """The values of the regime's parameter, one per group of runs (real fractions, ...)."""
    reg = regimes.get(self.regime)
    if reg.parameter is None:
      return (0.0,)
    if reg.parameter == 'real_fraction':
      return self.real_fractions
    return tuple(dict(self.settings).get(reg.parameter, (reg.default,)))

  def candidate_rows(self) -> int:
    """Rows of the previous model's samples a generation draws."""
    return regimes.get(self.regime).candidates(self.samples, self.fractions, self.candidates)

  def grid(self) -> list[tuple[float, dict]]:
    """(parameter value, {knob: value}) of each group of runs, in the runs' order."""
    return knobs.grid(self.fractions, self.knobs)

  def runs(self) -> tuple[np.ndarray, np.ndarray]:
    """Seed and parameter value (real fraction, ...) of every run, value-major (then the
    knobs' values, knobs.grid), B each."""
    groups = self.grid()
    seed_B = np.tile(np.arange(self.seeds) + self.first_seed, len(groups))
    fraction_B = np.repeat(np.asarray([f for f, _ in groups], np.float32), self.seeds)
    return seed_B.astype(np.int32), fraction_B

  def knob_runs(self) -> dict[str, np.ndarray]:
    """Each swept knob's value of every run, B each, in the order of runs()."""
    return knobs.per_run(self.fractions, self.knobs, self.seeds)

  def group_knobs(self) -> dict[str, float]:
    """{knob: value} of a sweep of one group of runs (results.one_group: what closed forms
    are handed); knobs.value reads a knob it leaves out at its default."""
    return {k: v for k, (v,) in self.knobs}


# ---------------------------------------------------------------- the pool
# The regimes' policies (regimes.py) draw on the previous generation's samples and,
# for the regimes that keep it, a pool holding in blocks of N rows the original data
# and every generation's samples.

def running(family: Family, sweep: Sweep) -> bool:
  """Whether the sweep keeps a running summary: a scored sweep keeps its data to score it."""
  return (family.running(sweep.regime, sweep.fractions) and sweep.score is None
          and 'real_weight' not in dict(sweep.knobs))


def pool_rows(family: Family, sweep: Sweep, n: int) -> int:
  """Rows of the pool: the original data and every generation's samples."""
  if not regimes.get(sweep.regime).keeps_pool or running(family, sweep):
    return 0
  return (sweep.generations + 2) * n
