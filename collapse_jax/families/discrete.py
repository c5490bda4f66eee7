"""A categorical distribution re-estimated by counting M of its own samples.

Generation 0 counts M samples of the true distribution p over K outcomes;
generation g >= 1 counts M samples of generation g - 1's estimate. Under
`replace` this is a Wright-Fisher chain: every outcome's frequency is a
martingale, an outcome that reaches zero never returns, and the chain is
absorbed in a single outcome with probability 1 (the paper's Markov-chain
argument, Nature 2024, Section 3.1). Outcomes are stored as float32 indices,
one column, so the driver's regimes apply unchanged.

With the sampling knobs (--temperature, --top_k, --top_p) each generation samples its
successor's data from its estimate tempered and truncated (`biased`), as a language model
samples with a temperature and top-k or nucleus truncation.
"""

import dataclasses
import functools
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.core import (experiment, knobs, placement, plots, protocol, results,
                               validation)
from collapse_jax.core.settings import setting


# ---------------------------------------------------------------- fit and sample

def summarise(x_Nx1, w_N, outcomes: int):
  """Weighted counts of each outcome: the sufficient statistics."""
  return jnp.zeros(outcomes).at[x_Nx1[:, 0].astype(jnp.int32)].add(w_N)


def sample(counts_K, key, n):
  """n outcomes drawn with probability proportional to counts_K (inverse CDF).

  An outcome with zero count is never drawn: u * total < total, and the search
  returns the first outcome whose cumulative count exceeds it.
  """
  cum_K = jnp.cumsum(counts_K)
  u_N = jax.random.uniform(key, (n,)) * cum_K[-1]
  idx_N = jnp.searchsorted(cum_K, u_N, side='right', method='compare_all')
  last = counts_K.shape[0] - 1 - jnp.argmax(counts_K[::-1] > 0)  # should u * total round up
  return jnp.minimum(idx_N, last).astype(jnp.float32)[:, None]


# ---------------------------------------------------------------- sampling bias

def ranks(counts_K):
  """Each outcome's rank by count, 0 the most likely; equal counts rank by index, the lower
  first (a stable sort), so top_k and top_p cut ties the same way every time."""
  order_K = jnp.argsort(-counts_K, stable=True)
  return jnp.zeros(counts_K.shape[0], jnp.int32).at[order_K].set(jnp.arange(counts_K.shape[0]))


def tempered(counts_K, t):
  """Weights of the law q^(1/t) (logits over t), q = counts_K / sum: zero stays zero for
  every t; at t = 1 the counts themselves, so the draws are those of the untempered law.
  In float32 an outcome with (q / max q)^(1/t) below about 1e-38 gets weight 0."""
  alive_K = counts_K > 0
  logit_K = jnp.where(alive_K, jnp.log(jnp.where(alive_K, counts_K, 1.0)), -jnp.inf) / t
  w_K = jnp.where(alive_K, jnp.exp(logit_K - jnp.max(logit_K)), 0.0)
  return jnp.where(t == 1, counts_K, w_K)


def biased(counts_K, chosen):
  """The law the fit samples its successor's data from, as weights (what `sample` takes):
  tempered at chosen['temperature'] (`tempered`), then kept on its top_k most likely outcomes
  (0: all), then on the fewest most likely of those holding at least top_p of their mass
  (their mass renormalised after top_k); only the knobs in `chosen` act.
  Ranks follow the fit's counts, ties to the lower index (`ranks`); k arrives as a traced
  float, so the cut is by rank, not lax.top_k. An outcome of count 0 keeps weight 0."""
  w_K = tempered(counts_K, chosen['temperature']) if 'temperature' in chosen else counts_K
  rank_K = ranks(counts_K)
  if 'top_k' in chosen:
    k = chosen['top_k']
    w_K = jnp.where((k == 0) | (rank_K < k), w_K, 0.0)
  if 'top_p' in chosen:
    by_rank_K = jnp.zeros_like(w_K).at[rank_K].set(w_K)
    cum_K = jnp.cumsum(by_rank_K)
    before_K = jnp.concatenate([jnp.zeros(1), cum_K[:-1]])[rank_K]  # of the more likely ones
    top_p = chosen['top_p']
    w_K = jnp.where((top_p >= 1) | (before_K < top_p * cum_K[-1]), w_K, 0.0)
  return w_K


# ---------------------------------------------------------------- metrics

def tail_outcomes(p_K: np.ndarray, tail: float) -> np.ndarray:
  """The least likely outcomes whose total original probability is at most `tail`."""
  order = np.argsort(p_K, kind='stable')
  mask = np.zeros(len(p_K), bool)
  mask[order[np.cumsum(p_K[order]) <= tail + 1e-12]] = True
  return mask


def evaluate(counts_K, p_K, tail_K, with_tv=False):
  """Diversity of one estimate, and what it lost of the original distribution; with_tv: also
  its total-variation distance from it (runs with sampling knobs)."""
  q_K = counts_K / jnp.sum(counts_K)
  alive_K = counts_K > 0
  gone_K = (p_K > 0) & ~alive_K
  support = jnp.sum(alive_K)
  entropy = -jnp.sum(jnp.where(alive_K, q_K * jnp.log2(jnp.where(alive_K, q_K, 1.0)), 0.0))
  return {'entropy_bits': jnp.where(support > 1, entropy, 0.0),  # not -0.0 once absorbed
          'support': support, 'zeroed': jnp.sum(gone_K),
          'gini_simpson': 1.0 - jnp.sum(q_K**2),
          'tail_mass': jnp.sum(jnp.where(tail_K, q_K, 0.0)),
          'tail_mass_lost': jnp.sum(jnp.where(tail_K & gone_K, p_K, 0.0)),
          'mass_lost': jnp.sum(jnp.where(gone_K, p_K, 0.0)),
          'max_prob': jnp.max(q_K), 'top_outcome': jnp.argmax(q_K).astype(jnp.int32),
          'absorbed': support == 1, 'alive': alive_K,
          **({'tv': 0.5 * jnp.sum(jnp.abs(q_K - p_K))} if with_tv else {})}


# ---------------------------------------------------------------- closed forms

def gini_simpson_theory(p_K, samples: int, generations: int) -> np.ndarray:
  """E[1 - sum_i q_n(i)^2] = (1 - sum_i p_i^2) (1 - 1/M)^n after n = g + 1 counts.

  A count of M samples keeps each frequency's mean and adds its binomial
  variance: E[q_n(i)^2 | q_{n-1}] = q_{n-1}(i)^2 (1 - 1/M) + q_{n-1}(i) / M, the
  Wright-Fisher decay of heterozygosity. Generation 0 is the first count (n = 1).
  """
  n_G = np.arange(1, generations + 2)
  return (1 - np.sum(np.asarray(p_K, np.float64) ** 2)) * (1 - 1 / samples) ** n_G


def loss_time_theory(p, samples: int):
  """Expected generations to the loss of an outcome of probability p, given that it
  is lost: -2 M p ln p / (1 - p) (Wright-Fisher diffusion; Kimura and Ohta 1969).
  For an outcome of count c = M p this is about 2 c ln(M / c): of the order of c
  generations (Suresh et al. 2025)."""
  p = np.asarray(p, np.float64)
  return -2 * samples * p * np.log(p) / (1 - p)


def curated_law(q_K, rewards_K, scale: float, k: int | None) -> np.ndarray:
  """The law of one curated row: the pick among k draws from q, each chosen with probability
  proportional to exp(scale * reward) (a Bradley-Terry choice; Ferbach et al. 2024,
  "Self-consuming generative models with curated data provably optimize human
  preferences"). Row i: k q_i E[w_i / (w_i + sum of the other k - 1 draws' w)], w = e^{scale r},
  summed exactly over the other draws' counts; k None is the limit k -> infinity, the tilt
  q e^{scale r} / Z. With M large a curated chain follows q_{t+1} = curated_law(q_t): the
  tilt gives q_t proportional to p e^{t scale r}."""
  q_K, w_K = np.asarray(q_K, np.float64), np.exp(scale * np.asarray(rewards_K, np.float64))
  if k is None:
    return q_K * w_K / np.sum(q_K * w_K)
  share_K = np.zeros_like(q_K)
  for counts in _compositions(k - 1, len(q_K)):
    c_K = np.asarray(counts)
    ways = math.factorial(k - 1) / np.prod([math.factorial(c) for c in counts])
    share_K += ways * np.prod(q_K ** c_K) * w_K / (w_K + np.sum(c_K * w_K))
  return k * q_K * share_K


def tempered_law(p_K, t: float, generations: int) -> np.ndarray:
  """p_g proportional to p^(1/t^g), g = 0..G (rows): the law of generation g's fit as M grows,
  under `replace` with every generation's data sampled at temperature t.

  Generation 0 is fitted to M samples of the truth p itself; generation g >= 1 to M samples of
  generation g - 1's fit tempered once (generation 1's data, the first synthetic data, too).
  A count of M samples has the law it samples as its mean, within O(1/sqrt M), and temperings
  compose, (p^(1/t))^(1/t) = p^(1/t^2): so g temperings stand between generation g and p.
  Outcomes with p = 0 stay at 0.
  """
  p_K = np.asarray(p_K, np.float64)
  alive_K = p_K > 0
  d_K = np.log(np.where(alive_K, p_K, 1.0)) - np.log(p_K.max())  # 0 at the most likely
  with np.errstate(over='ignore', invalid='ignore'):  # t^-g overflows for t < 1, g large
    e_G = float(t) ** -np.arange(generations + 1.0)
    logit_GxK = np.where(d_K == 0, 0.0, d_K * e_G[:, None])  # the most likely stay at 0
  w_GxK = np.where(alive_K, np.exp(logit_GxK), 0.0)
  return w_GxK / w_GxK.sum(1, keepdims=True)


def cut_mass(p_K, k: int) -> float:
  """The truth's mass outside its k most likely outcomes (k = 0: none cut).

  A law q on k outcomes S has TV(q, p) >= p(outside S) >= cut_mass(p, k), so every fit whose
  data were sampled with top_k = k is at least this far from the truth, in every seed. As M
  grows the first truncated generation (generation 1 under `replace`) sits on the floor: its
  fit tends to p on its top k renormalised, whose TV from p is the cut mass exactly.
  """
  return float(np.sort(np.asarray(p_K, np.float64))[::-1][int(k):].sum()) if k else 0.0


def biased_law(q_K, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """`biased` on a probability vector, in float64 on the host (the closed forms' version)."""
  q_K = np.asarray(q_K, np.float64)
  w_K = tempered_law(q_K, temperature, 1)[1]
  order_K = np.argsort(-q_K, kind='stable')  # ties to the lower index, as `ranks`
  rank_K = np.empty(len(q_K), int)
  rank_K[order_K] = np.arange(len(q_K))
  if top_k:
    w_K = np.where(rank_K < top_k, w_K, 0.0)
  if top_p < 1:
    by_rank_K = w_K[order_K]
    before_K = np.concatenate([[0.0], np.cumsum(by_rank_K)[:-1]])[rank_K]
    w_K = np.where(before_K < top_p * by_rank_K.sum(), w_K, 0.0)
  return w_K / w_K.sum()


def large_m_law(p_K, generations: int, temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0) -> np.ndarray:
  """q_0 = p, q_g = biased_law(q_{g-1}), g = 0..G (rows): the law of generation g's fit as M
  grows under `replace` with the sampling knobs (tempered_law at a temperature alone)."""
  q_GxK = [np.asarray(p_K, np.float64) / np.sum(p_K)]
  for _ in range(generations):
    q_GxK.append(biased_law(q_GxK[-1], temperature, top_k, top_p))
  return np.stack(q_GxK)


def follows_law(regime: str, value: float) -> bool:
  """Whether a group trains every generation on M samples of its predecessor's law alone."""
  return regime == 'replace' or (regime in validation.FRACTION_REGIMES and value == 0)


def trains_on_law(regime: str, value: float) -> bool:
  """Whether every generation after the first trains on draws of its predecessor's law alone
  (some of them, under verify and curate): its support is within that law's."""
  return follows_law(regime, value) or regime in ('verify', 'curate')


def sampling_theory(p_K, regime: str, value: float, knob_values: dict,
                    generations: int) -> dict[str, np.ndarray]:
  """curves.csv's closed forms of a group of runs with sampling knobs (knob -> its value):
  tv_floor_theory, the cut mass from generation 1 on (where top_k is set and the group trains
  on its predecessor's law alone); tv_large_m_theory and entropy_bits_large_m_theory, the
  large-M law's distance from the truth and entropy (under `replace`): the limits of
  tv_mean and entropy_bits_mean as M grows. NaN where none holds."""
  nan = np.full(generations + 1, np.nan)
  t, k, top_p = (knobs.value(knob_values, name) for name in knobs.SAMPLING)
  floor = nan.copy()
  if k and trains_on_law(regime, value):
    floor[1:] = cut_mass(p_K, k)
  out = {'tv_floor_theory': floor, 'tv_large_m_theory': nan,
         'entropy_bits_large_m_theory': nan}
  if follows_law(regime, value):
    q_GxK = large_m_law(p_K, generations, t, int(k), top_p)
    p_K = np.asarray(p_K, np.float64)
    out['tv_large_m_theory'] = 0.5 * np.abs(q_GxK - p_K / p_K.sum()).sum(1)
    out['entropy_bits_large_m_theory'] = -np.sum(
        np.where(q_GxK > 0, q_GxK * np.log2(np.where(q_GxK > 0, q_GxK, 1.0)), 0.0), 1) + 0.0
  return out


def _compositions(n: int, parts: int):
  """Every tuple of `parts` non-negative integers summing to n."""
  if parts == 1:
    yield (n,)
    return
  for first in range(n + 1):
    for rest in _compositions(n - first, parts - 1):
      yield (first, *rest)


# ---------------------------------------------------------------- the experiment

@dataclasses.dataclass(frozen=True)
class DiscreteConfig(experiment.SweepConfig):
  """The discrete experiment: a Zipf law over `outcomes` outcomes by default, or
  the probabilities `probs`, re-estimated from M samples until every seed is
  absorbed in one outcome or `generations` is reached."""
  generations: int = 5000
  samples: tuple[int, ...] = setting((100,), 'Comma-separated sample sizes M: each generation '
                                     'counts M samples.')
  probs: tuple[float, ...] = setting(
      (), 'Comma-separated probabilities of the true distribution (weights are fine: divided by '
      'their sum, with a note when it is not 1); empty: a Zipf law over --outcomes.')
  outcomes: int = setting(20, 'Outcomes K of the Zipf law.')
  zipf_exponent: float = setting(1.0, 'p_i proportional to i^-exponent.')
  tail: float = setting(0.1, 'The tail: the least likely outcomes holding at most this much of '
                        'the original probability.')
  rewards: tuple[float, ...] = setting(
      (), '--score=reward: the reward of each outcome (empty: i / (K - 1) for outcome i, the '
      'rarer the higher under a Zipf law).')
  per_seed_csv: bool = experiment.per_seed_csv()

  def true_probs(self) -> np.ndarray:
    if self.probs:
      p = np.asarray(self.probs, np.float64)
      return p / p.sum()
    p = np.arange(1, self.outcomes + 1, dtype=np.float64) ** -self.zipf_exponent
    return p / p.sum()

  def reward_per_outcome(self) -> np.ndarray:
    k = len(self.true_probs())
    return np.asarray(self.rewards or np.arange(k) / (k - 1), np.float32)

  def validate(self) -> 'DiscreteConfig':
    self.validate_sweep()
    p = np.asarray(self.probs, np.float64)
    if self.probs and (len(p) < 2 or not np.all(np.isfinite(p)) or p.min() < 0
                       or not 0 < sum(self.probs) < np.inf):
      raise validation.ConfigError('probs', 'needs two or more finite, non-negative probabilities '
                                   f'with a positive sum, got {list(self.probs)}')
    checks = [('outcomes', self.outcomes >= 2, 'must be at least 2'),
              ('zipf_exponent', self.zipf_exponent >= 0, 'must be non-negative'),
              ('tail', 0 < self.tail < 1, 'must be between 0 and 1')]
    validation.check_fields(self, checks)
    if self.rewards and (len(self.rewards) != len(self.true_probs())
                         or not np.all(np.isfinite(self.rewards))):
      raise validation.ConfigError('rewards', f'needs {len(self.true_probs())} finite values, one '
                                   f'per outcome, got {list(self.rewards)}')
    validation.validate_options(self, family(self))
    k = len(self.true_probs())
    if max(self.top_ks) > k:
      raise validation.ConfigError('top_k', f'{max(self.top_ks):g} is more than the {k} '
                                   'outcomes; pass at most that (0: every outcome)')
    return self

  def biases(self) -> bool:
    """Whether the run sets a sampling knob: its metrics then hold `tv`."""
    return any(name in knobs.SAMPLING for name, _ in self.knob_settings())


SMALL = dict(seeds=200, generations=1000, samples=(50,), outcomes=10, checkpoint_every=100)
# Sampling bias on the small chain under replace and under fresh with 20% real data, every
# temperature x top_k (x top_p, for nucleus) a group of 200 runs in the regime's one program:
#   python -m experiments.discrete --preset=sampling     (under a minute of CPU time)
# Under replace t < 1 and top_k speed absorption (median generation 10 at t = 0.8, 39 at
# top_k 2, against 71.5) and t > 1 stalls it (0.5% of seeds absorbed by 1000 at t = 1.25);
# --preset=nucleus: top_p 0.8 brings it to 17.
SAMPLING = dict(SMALL, regimes=('replace', 'fresh'), real_fractions=(0.2,),
                temperatures=(0.8, 0.9, 1.0, 1.1, 1.25), top_ks=(0, 5, 2))
NUCLEUS = dict(SAMPLING, temperatures=(0.8, 1.0, 1.25), top_ks=(0,), top_ps=(1.0, 0.95, 0.8, 0.5))
PRESETS = {'paper': {}, 'small': SMALL, 'sampling': SAMPLING, 'nucleus': NUCLEUS}


def family(cfg: DiscreteConfig) -> protocol.Family:
  """The categorical chain as a driver family; counts are its sufficient statistics."""
  p = cfg.true_probs()
  k = len(p)
  p_K, tail_K = jnp.asarray(p, jnp.float32), jnp.asarray(tail_outcomes(p, cfg.tail))
  fit_counts = lambda counts_K, key: (counts_K, {})
  reward_K = jnp.asarray(cfg.reward_per_outcome())
  at = lambda v_K, x_Nx1: v_K[x_Nx1[:, 0].astype(jnp.int32)]  # noqa: E731
  return protocol.Family(
      log_density=lambda counts_K, x_Nx1: at(_log_floor(counts_K / jnp.sum(counts_K)), x_Nx1),
      true_log_density=lambda x_Nx1: at(_log_floor(p_K), x_Nx1),
      reward=lambda x_Nx1: at(reward_K, x_Nx1),
      draw_real=lambda key, n: sample(p_K, key, n),
      fit=lambda x_Nx1, w_N, key: fit_counts(summarise(x_Nx1, w_N, k), key),
      sample=sample,
      reference=lambda counts0, key: {},
      evaluate=lambda counts_K, synth, ref: evaluate(counts_K, p_K, tail_K, cfg.biases()),
      summary=protocol.Summary(lambda x, w: summarise(x, w, k), jnp.add, fit_counts),
      biased=biased, sampling_knobs=knobs.SAMPLING)


def _log_floor(q_K):
  """log q, with outcomes of probability 0 at log 1e-30: a score, not -inf, so that
  means over rows stay finite."""
  return jnp.log(jnp.maximum(q_K, 1e-30))


def absorbing(cfg: DiscreteConfig, regime: str) -> bool:
  """Whether an absorbed run stays absorbed: it trains on its own samples only."""
  return regime in ('replace', 'verify', 'curate') or (regime in validation.FRACTION_REGIMES
                                                       and max(cfg.real_fractions) == 0)


def absorption(metrics):
  """Per run: the generation from which it stays absorbed (-1: not absorbed at
  the end), and the outcome it is absorbed in (-1: none)."""
  absorbed_GxB = metrics['absorbed']
  # row j says whether generation j - 1 was not absorbed; row 0 stands before generation 0
  not_G1xB = np.concatenate([np.ones_like(absorbed_GxB[:1]), ~absorbed_GxB])
  when_B = not_G1xB.shape[0] - 1 - np.argmax(not_G1xB[::-1], axis=0)
  stays_B = absorbed_GxB[-1]
  return np.where(stays_B, when_B, -1), np.where(stays_B, metrics['top_outcome'][-1], -1)


def extinction(alive_GxBxK):
  """Per run and outcome: the first generation with a zero count (-1: never)."""
  dead = ~alive_GxBxK
  return np.where(dead.any(0), np.argmax(dead, axis=0), -1)


SUMMARY_COLUMNS = ('entropy_bits', 'support', 'tail_mass', 'tail_mass_lost')


def set_aside(cfg: DiscreteConfig, sweep, metrics):
  """A sweep cut at the generation where its last seed was absorbed, and its per-seed and
  per-outcome tables: absorption and extinction."""
  p, m = cfg.true_probs(), sweep.samples
  tail = tail_outcomes(p, cfg.tail)
  shown = results.parameter_columns([s for s, _ in cfg.sweeps()])
  when_B, where_B = absorption(metrics)
  last = int(when_B.max()) if absorbing(cfg, sweep.regime) and np.all(when_B >= 0) else sweep.generations
  sweep = dataclasses.replace(sweep, generations=max(last, 1))
  extinct_BxK = extinction(metrics.pop('alive'))
  metrics = {k: v[:sweep.generations + 1] for k, v in metrics.items()}
  seed_B, fraction_B = sweep.runs()
  per_seed = {'regime': np.full(len(seed_B), sweep.regime), 'samples': np.full(len(seed_B), m),
              **results.setting_columns(sweep, fraction_B, shown, sweep.knob_runs()),
              'value': fraction_B, 'seed': seed_B, 'absorbed_outcome': where_B,
              'absorption_generation': when_B}
  per_outcome = []
  for fraction, knob_values in sweep.grid():
    cols_B = results.group_rows(sweep, fraction, knob_values)
    knob_K = {k: np.full(len(p), v, np.float32) for k, v in knob_values.items()}
    ext_SxK = extinct_BxK[cols_B]
    lost_SxK = ext_SxK >= 0
    mean_loss = np.where(lost_SxK, ext_SxK, 0).sum(0) / np.maximum(lost_SxK.sum(0), 1)
    per_outcome.append({
        'regime': np.full(len(p), sweep.regime), 'samples': np.full(len(p), m),
        **results.setting_columns(sweep, np.full(len(p), fraction, np.float32), shown, knob_K),
        'outcome': np.arange(len(p)),
        'probability': p, 'tail': tail,
        'absorbed_frequency': np.bincount(where_B[cols_B][where_B[cols_B] >= 0],
                                          minlength=len(p)) / cols_B.sum(),
        'lost_frequency': lost_SxK.mean(0),
        'lost_at_generation_0': (ext_SxK == 0).mean(0),
        'lost_at_generation_0_theory': (1 - p) ** m,
        'mean_loss_generation': np.where(lost_SxK.any(0), mean_loss, np.nan),
        'mean_loss_generation_theory': loss_time_theory(p, m) - 1 if unbiased(knob_values)
                                       else np.full(len(p), np.nan)})
  return sweep, metrics, (per_seed, per_outcome)


def unbiased(knob_values: dict) -> bool:
  """Whether a group's sampling knobs (knob -> value) are at their defaults: the model samples
  its own law, as the unbiased chain's closed forms assume."""
  return all(knobs.value(knob_values, k) == knobs.KNOBS[k].default
             for k in knobs.SAMPLING)


def figures(cfg: DiscreteConfig, out: experiment.Outcome) -> None:
  """outcomes.csv and absorption.csv; chain.png, diversity.png, absorption.png, tradeoff.png."""
  outcomes = results.stacked([t for _, per_outcome in out.kept for t in per_outcome])
  results.write_csv(outcomes, out.path('outcomes.csv'))
  results.write_csv({k: v for k, v in results.stacked([t for t, _ in out.kept]).items()
                     if k != 'value'}, out.path('absorption.csv'))
  title = f'{len(cfg.true_probs())} outcomes re-estimated from their own samples, {cfg.seeds} seeds'
  plots.curves(out.curves, [('entropy_bits', 'entropy (bits)', False),
                            ('zeroed', 'outcomes with zero probability', False),
                            ('tail_mass', f'mass on the original {cfg.tail:.0%} tail', False)],
               out.path('chain.png'), title)
  plots.theory_panels(out.curves, [('gini_simpson_mean', 'mean 1 - sum q^2')],
                      out.path('diversity.png'), title)
  plots.absorption(outcomes, out.path('absorption.png'), title)
  plots.scores_against(out.curves, ('entropy_bits', 'entropy (bits)'), out.path('tradeoff.png'),
                       title)


def summary(out: experiment.Outcome) -> str:
  """The statistics over seeds, and the share of seeds absorbed and when."""
  columns = SUMMARY_COLUMNS + (('tv',) if 'tv_mean' in out.curves else ())
  text = results.summary(out.curves, columns, generations=(1, 10, 100, 1000))
  absorbed = [f'{plots.run_label(r, m, f, with_samples=True, knob_values=kv)}: '
              f'{np.mean(w >= 0):.1%} of seeds absorbed'
              + (f', median at generation {np.median(w[w >= 0]):g}' if np.any(w >= 0) else '')
              for r, m, f, kv, w in _absorption_lines([t for t, _ in out.kept])]
  return text + '\n' + '\n'.join(absorbed)


def run(cfg: DiscreteConfig, workdir: str, progress: bool = True, log=print):
  """Runs, resumes or reloads the discrete experiment in `workdir`; returns the curves.

  Leaves there: config.json, checkpoints/<regime>/M<samples>/, curves.csv (one
  row per generation x regime x M x real fraction (x the knobs' values, where set),
  statistics over seeds), outcomes.csv (per outcome: original probability, absorption
  frequency, extinction times), absorption.csv (per seed), metrics.csv with
  --per_seed_csv, chain.png, diversity.png, absorption.png, tradeoff.png and summary.txt.
  Tables stop at the generation where the last seed was absorbed. With sampling knobs the
  metrics add tv (the distance from the truth) and curves.csv the closed forms of
  sampling_theory.
  """
  if cfg.probs and abs(sum(cfg.probs) - 1) > 1e-6 and placement.is_primary():
    cfg.validate()  # flags wrong in other ways are refused before the note
    print(f'note: --probs sum to {sum(cfg.probs):.6g}, not 1; each is divided by that sum',
          file=sys.stderr)
  p = cfg.true_probs()

  def closed_form(sweep, fraction):
    g1 = sweep.generations + 1
    chosen = sweep.group_knobs()
    theory = (gini_simpson_theory(p, sweep.samples, sweep.generations)
              if absorbing(cfg, sweep.regime) and unbiased(chosen) else np.full(g1, np.nan))
    return {'gini_simpson_mean_theory': theory, **(
        sampling_theory(p, sweep.regime, fraction, chosen, sweep.generations)
        if cfg.biases() else {})}

  def settled(sweep):
    return (lambda mb: bool(np.all(mb['absorbed']))) if absorbing(cfg, sweep.regime) else None

  exp = experiment.Experiment(
      'discrete', lambda: family(cfg), SUMMARY_COLUMNS, generations=(1, 10, 100, 1000),
      closed_form=closed_form, curves_csv=True, settled=settled,
      set_aside=functools.partial(set_aside, cfg), figures=functools.partial(figures, cfg),
      text=summary)
  return experiment.run_experiment(exp, cfg, workdir, progress, log).curves


def _absorption_lines(per_seed):
  """(regime, samples, value, knobs, absorption generations) of each group of runs."""
  for t in per_seed:
    names = [k for k in knobs.KNOBS if k in t and np.all(np.isfinite(t[k]))]  # the sweep's
    for group in sorted(set(zip(t['value'], *(t[k] for k in names)))):
      rows = np.all([t[k] == v for k, v in zip(('value', *names), group)], axis=0)
      yield (t['regime'][0], int(t['samples'][0]), float(group[0]),
             tuple((k, float(v)) for k, v in zip(names, group[1:])),
             t['absorption_generation'][rows])
