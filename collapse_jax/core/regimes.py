"""Regimes: how each generation's training data is made, as small pure policies.

A regime's policy is a pure function of one run:

  policy(pools, g, key, value, scores) -> (x_RxD, w_R) or (x_RxD, w_R, metrics)

`pools` holds what the driver keeps (Pools below), g >= 1 is the generation being
trained, `value` the run's setting of the regime's swept parameter (a traced
scalar: every value of the list flag runs in the same compiled program), and
`scores` the scores of the previous model's candidate samples, for regimes that
rank them, shifted by a common constant (the score of a point near the candidates,
scores.Relative): so they keep their order however far the model has collapsed below
the scorer's scale. The rows R and the candidates C are fixed per sweep; rows a run
does not use get weight 0. The policies below are composed from four parts: the
synthetic data's source (the last generation, or every generation so far), the
real data it brings (none, a fraction resampled or fresh, all of it), a
selection of synthetic candidates (all, a subsample, the best-scored, chosen by
reward) and weights over generations. A new regime is a few lines:

  def half_real(pools, g, key, value, scores):
    return with_real(pools.last[:pools.n], resampled(pools, key), 0.5), jnp.ones(pools.n)

  REGIMES['half-real'] = Regime('half-real', half_real)
"""

import dataclasses
import functools
import math
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from collapse_jax.core import knobs as _knobs
from collapse_jax.core import sampling
from collapse_jax.core.settings import setting
from collapse_jax.core.scores import relative

SCORES = ('truth', 'self', 'gen0', 'noisy', 'reward', 'verifier')
CANDIDATES = 4  # default K of curate


class Pools(NamedTuple):
  """What a policy may draw on in one run.

  x0: N x D, the original data.  last: C x D, the previous generation's model's
  samples (C >= N; the first N are the ones a non-selecting regime trains on).
  pool: P x D, the original data and every generation's samples in blocks of N,
  or None when the regime does not keep it.  draw_real(key, n): fresh real data.  real_weight: the real rows' share of the fit's
  weight (knobs.KNOBS), or None: pooled, every row alike; apply() reweights the rows.
  """
  x0: Any
  last: Any
  pool: Any
  draw_real: Callable[..., Any]
  real_weight: Any = None

  @property
  def n(self) -> int:
    return self.x0.shape[0]


@dataclasses.dataclass(frozen=True)
class Regime:
  """A policy and what the driver must know to feed it.

  parameter: the flag whose list of values is swept per run ('real_fraction', ...),
    or None; `default` its value when the regime has none; `valid(v)` says whether a
    value is allowed, `allowed` says what is, for the error message.
  keeps_pool: the driver keeps every generation's samples (`pools.pool`).
  candidates(n, values, k): rows of the previous model's samples drawn each generation
    (`pools.last`), given the sweep's values of the parameter and --candidates k.
  scored: the policy ranks candidates; the driver scores them first.
  quiet_default: the parameter was added to a paper regime; tables show its column only
    when it is swept away from its default.
  real_rows(n, value): how many of the policy's leading rows are real data (a traced count),
    for the regimes that mix real and synthetic rows (--real_weight); None for the others.
  shortcut: the policy is one a family may run without stored samples:
    'refit' (train on the last model's own samples: Family.refit), 'summary'
    (all data, equal weights: Family.summary); None otherwise.
  """
  name: str
  policy: Callable[..., Any]
  parameter: str | None = None
  default: float = 0.0
  valid: Callable[[float], bool] = lambda v: True
  allowed: str = ''
  keeps_pool: bool = False
  candidates: Callable[[int, tuple, int], int] = lambda n, values, k: n
  scored: bool = False
  shortcut: str | None = None
  quiet_default: bool = False
  real_rows: Callable[[int, Any], Any] | None = None

  @property
  def column(self) -> str:
    """The table column that tells this regime's runs apart."""
    return self.parameter or 'real_fraction'

  def quiet(self, value) -> bool:
    """Whether runs at this parameter value need no label (a column, a folder suffix): the
    regime takes no parameter, or a paper regime's added one is at its default."""
    return self.parameter is None or (self.quiet_default and value == self.default)


# ---------------------------------------------------------------- the parts

def filled(pools: Pools, g):
  """Rows of the pool that hold data at generation g: the original and g generations' samples."""
  return jnp.arange(pools.pool.shape[0]) < (g + 1) * pools.n


def resampled(pools: Pools, key):
  """The original data in a random order."""
  return pools.x0[jax.random.permutation(key, pools.n)]


def with_real(synth_NxD, real_NxD, fraction):
  """The first round(fraction * N) rows real, the rest synthetic."""
  is_real_N = jnp.arange(synth_NxD.shape[0]) < jnp.round(fraction * synth_NxD.shape[0])
  return jnp.where(is_real_N[:, None], real_NxD, synth_NxD)


def by_age(pools: Pools, g, decay):
  """Weights of the pool's rows: decay^age for the data generation k trained on (block k)
  at generation g, age g - k; 0 for empty rows."""
  block_P = jnp.arange(pools.pool.shape[0]) // pools.n
  return jnp.where(filled(pools, g), decay ** jnp.maximum(g - block_P, 0).astype(jnp.float32), 0.0)


def best_scored(x_CxD, scores_C, n, used):
  """The n best-scored of the first `used` candidates (a traced count)."""
  live_C = jnp.arange(x_CxD.shape[0]) < used
  return x_CxD[jax.lax.top_k(jnp.where(live_C, scores_C, -jnp.inf), n)[1]]


def chosen_by_reward(x_CxD, scores_C, n, key, scale):
  """n rows, each the pick among its K = C / n candidates with probability proportional
  to exp(scale * score): the Bradley-Terry choice of curation."""
  k = x_CxD.shape[0] // n
  logits_NxK = scale * scores_C[:n * k].reshape(n, k)
  p_NxK = jax.nn.softmax(jnp.where(jnp.isfinite(logits_NxK), logits_NxK, -1e30), axis=1)
  # one uniform a row against the row's CDF: a K-th of the random numbers of a Gumbel
  # argmax (jax.random.categorical), which on a CPU cost more than the candidates' scores
  pick_N = jax.vmap(functools.partial(sampling.invert_cdf, method='compare_all'))(
      jnp.cumsum(p_NxK, axis=1), jax.random.uniform(key, (n,)))
  return x_CxD[:n * k].reshape(n, k, -1)[jnp.arange(n), pick_N]


# ---------------------------------------------------------------- the policies

def replace(pools, g, key, value, scores):
  return pools.last[:pools.n], jnp.ones(pools.n)


def accumulate(pools, g, key, decay, scores):
  return pools.pool, by_age(pools, g, decay)


def accumulate_subsample(pools, g, key, value, scores):
  """N rows uniformly without replacement from the filled blocks."""
  score_P = jnp.where(filled(pools, g), jax.random.uniform(key, (pools.pool.shape[0],)), -1.0)
  return pools.pool[jax.lax.top_k(score_P, pools.n)[1]], jnp.ones(pools.n)


def mix(pools, g, key, fraction, scores):
  return with_real(pools.last[:pools.n], resampled(pools, key), fraction), jnp.ones(pools.n)


def fresh(pools, g, key, fraction, scores):
  return with_real(pools.last[:pools.n], pools.draw_real(key, pools.n), fraction), jnp.ones(pools.n)


def verify(pools, g, key, keep_fraction, scores):
  """Draw N / keep_fraction candidates, keep the N best-scored (a verifier's filter)."""
  n = pools.n
  used = jnp.ceil(n / keep_fraction - 1e-6 * n)
  return best_scored(pools.last, scores, n, used), jnp.ones(n), {'pass_rate': n / used}


def curate(pools, g, key, scale, scores):
  """Each row chosen among K candidates with probability proportional to exp(scale * score)."""
  return chosen_by_reward(pools.last, scores, pools.n, key, scale), jnp.ones(pools.n)


def augment(pools, g, key, ratio, scores):
  """All original data plus ratio * N of the latest model's samples."""
  c = pools.last.shape[0]
  synth_C = (jnp.arange(c) < jnp.round(ratio * pools.n)).astype(jnp.float32)
  return jnp.concatenate([pools.x0, pools.last]), jnp.concatenate([jnp.ones(pools.n), synth_C])


def real_weighted(w_R, real_rows, share):
  """The rows' weights rescaled so the first `real_rows` carry `share` of the total and the
  rest 1 - share, the total kept; as they were where either part has no weight."""
  is_real_R = jnp.arange(w_R.shape[0]) < real_rows
  total = jnp.sum(w_R)
  real = jnp.sum(jnp.where(is_real_R, w_R, 0.0))
  both = (real > 0) & (total - real > 0)
  factor_R = jnp.where(is_real_R, share / jnp.where(both, real, 1.0),
                       (1 - share) / jnp.where(both, total - real, 1.0)) * total
  return jnp.where(both, w_R * factor_R, w_R)


def _fraction(v):
  return 0.0 <= v <= 1.0


REGIMES = {
    'replace': Regime('replace', replace, shortcut='refit'),
    'accumulate': Regime('accumulate', accumulate, 'age_decay', 1.0, lambda v: 0.0 < v <= 1.0,
                         'in (0, 1]', keeps_pool=True, shortcut='summary', quiet_default=True,
                         real_rows=lambda n, value: n),
    'accumulate-subsample': Regime('accumulate-subsample', accumulate_subsample, keeps_pool=True),
    'mix': Regime('mix', mix, 'real_fraction', 0.0, _fraction, 'in [0, 1]',
                  real_rows=lambda n, fraction: jnp.round(fraction * n)),
    'fresh': Regime('fresh', fresh, 'real_fraction', 0.0, _fraction, 'in [0, 1]',
                    real_rows=lambda n, fraction: jnp.round(fraction * n)),
    'verify': Regime('verify', verify, 'keep_fraction', 0.5, lambda v: 0.0 < v <= 1.0, 'in (0, 1]',
                     candidates=lambda n, values, k: math.ceil(n / min(values) - 1e-6 * n),
                     scored=True),
    'curate': Regime('curate', curate, 'reward_scale', 1.0, lambda v: v >= 0.0, 'non-negative',
                     candidates=lambda n, values, k: k * n, scored=True),
    'augment': Regime('augment', augment, 'synthetic_ratio', 0.5, lambda v: v >= 0.0,
                      'non-negative',
                      candidates=lambda n, values, k: max(1, math.ceil(n * max(values) - 1e-6 * n)),
                      real_rows=lambda n, value: n),
}
PARAMETERS = tuple(dict.fromkeys(r.parameter for r in REGIMES.values() if r.parameter))


def get(name: str) -> Regime:
  return REGIMES[name]


def scorer(family, score: str, noise: float = 0.0, knobs=None):
  """score(model, model0, x_CxD, key) -> scores.Relative: what verify and curate rank
  candidates by, as differences from the score of a point near them (so the ranking keeps
  the model's resolution however far it has collapsed below the scorer's scale).

  truth: the true log density (a perfect verifier); self: the log density of the
  model that drew them (self-filtering); gen0: generation 0's; noisy: the truth
  plus N(0, noise^2) per candidate (a fallible verifier); reward: the family's reward;
  verifier: a biased verifier, the truth moved by the run's verifier_shift and widened by
  its verifier_scale (`knobs`, knobs.KNOBS; Family.verifier).
  A family's score functions return plain values or scores.Relative.
  """
  if score == 'truth':
    fn = lambda model, model0, x, key: family.true_log_density(x)
  elif score == 'noisy':
    def fn(model, model0, x, key):
      truth = relative(family.true_log_density(x))
      return truth._replace(gap_N=truth.gap_N + noise * jax.random.normal(key, x.shape[:1]))
  elif score == 'self':
    fn = lambda model, model0, x, key: family.log_density(model, x)
  elif score == 'gen0':
    fn = lambda model, model0, x, key: family.log_density(model0, x)
  elif score == 'reward':
    fn = lambda model, model0, x, key: family.reward(x)
  elif score == 'verifier':
    shift = _knobs.value(knobs or {}, 'verifier_shift')
    scale = _knobs.value(knobs or {}, 'verifier_scale')
    fn = lambda model, model0, x, key: family.verifier(x, shift, scale)
  else:
    raise ValueError(score)
  return lambda model, model0, x, key: relative(fn(model, model0, x, key))


def apply(regime: Regime, pools: Pools, g, key, value, scores):
  """(rows, weights, metrics) of a regime's policy, whether or not it reports metrics; the
  real rows given their share of the weight where the run sets one (pools.real_weight)."""
  out = regime.policy(pools, g, key, value, scores)
  x_RxD, w_R, metrics = out if len(out) == 3 else (*out, {})
  if pools.real_weight is not None and regime.real_rows is not None:
    w_R = real_weighted(w_R, regime.real_rows(pools.n, value), pools.real_weight)
  return x_RxD, w_R, metrics


def available_scores(family) -> tuple[str, ...]:
  """The scores a family can give; `family` may also name them (a tuple of SCORES), for a
  family run outside the driver, such as the language model's host loop."""
  if isinstance(family, tuple):
    return tuple(s for s in SCORES if s in family)
  has = {'truth': family.true_log_density, 'noisy': family.true_log_density,
         'self': family.log_density, 'gen0': family.log_density, 'reward': family.reward,
         'verifier': family.verifier}
  return tuple(s for s in SCORES if has[s] is not None)


def _swept(regime: str, help_: str):
  """An Options field: the values swept of `regime`'s parameter, its flag the parameter's name."""
  return setting((REGIMES[regime].default,), f'Comma-separated values, each a group of runs; '
                 f'{regime}: {help_}', flag=REGIMES[regime].parameter)


@dataclasses.dataclass(frozen=True)
class Options(_knobs.Options):
  """The regimes' settings and the knobs', as fields of an experiment's config (a base class
  of it).

  keep_fractions, reward_scales, synthetic_ratios, age_decays: the values swept of
  verify's, curate's, augment's and accumulate's parameter; score: what verify and
  curate rank by (None: DEFAULT_SCORE where a regime ranks, no scores otherwise; given
  with any regime, every run reports the scores of its data); candidates: K of curate;
  verifier_noise: the standard deviation of the 'noisy' score's noise. A family without
  a true density sets DEFAULT_SCORE to one it has.
  """
  DEFAULT_SCORE: ClassVar[str] = 'truth'
  keep_fractions: tuple[float, ...] = _swept('verify', 'the share of candidates kept (draws '
                                             'samples / keep_fraction, keeps the best-scored).')
  reward_scales: tuple[float, ...] = _swept('curate', 'each row chosen among --candidates with '
                                            'probability proportional to exp(reward_scale * '
                                            'score).')
  synthetic_ratios: tuple[float, ...] = _swept('augment', 'all original data plus this many '
                                               'times as many samples of the latest model.')
  age_decays: tuple[float, ...] = _swept('accumulate', "each generation's data weighted by "
                                         'age_decay^age.')
  score: str | None = setting(
      None, lambda cls: 'What verify and curate rank candidates by: the true density, the '
      "model's own, generation 0's, the truth plus N(0, verifier_noise^2), the family's "
      'reward, or a biased verifier (the truth moved by --verifier_shift and widened by '
      f'--verifier_scale; default: {cls.DEFAULT_SCORE}, verifier where those are set). Given with any regime, every run reports the '
      'mean score of its training data and samples.', choices=SCORES)
  candidates: int = setting(CANDIDATES, 'curate: candidates K per kept row.')
  verifier_noise: float = setting(1.0, '--score=noisy: the standard deviation of the noise '
                                  'added to the true log density.')

  def settings(self) -> tuple[tuple[str, tuple[float, ...]], ...]:
    return (('keep_fraction', tuple(self.keep_fractions)),
            ('reward_scale', tuple(self.reward_scales)),
            ('synthetic_ratio', tuple(self.synthetic_ratios)),
            ('age_decay', tuple(self.age_decays)))

  def active_score(self, names) -> str | None:
    """The score the runs use: as given, else DEFAULT_SCORE where a regime ranks, else none."""
    if self.score is not None:
      return self.score
    if any(name.startswith('verifier_') for name, _ in self.knob_settings()):
      return 'verifier'
    return self.DEFAULT_SCORE if any(REGIMES[r].scored for r in names if r in REGIMES) else None

  def knobs_for(self, regime: str, names) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """The knobs a run of `regime` sweeps (among the regimes `names`): the sampling ones,
    real_weight where the regime has real rows, the verifier's where the score is it."""
    acts = {'sampling': True, 'weight': REGIMES[regime].real_rows is not None,
            'verifier': self.active_score(names) == 'verifier'}
    return tuple((k, v) for k, v in self.knob_settings() if acts[_knobs.KNOBS[k].acts_on])

  def sweep_fields(self, names) -> dict:
    """protocol.Sweep's regime fields for a run of the regimes `names`."""
    return {'settings': self.settings(), 'score': self.active_score(names),
            'noise': self.verifier_noise, 'candidates': self.candidates}

