"""A Gaussian kernel density estimator refitted on its own samples, on 2-D targets.

Generation 0's KDE stores the N original samples; generation g >= 1's stores the
N samples drawn from generation g - 1's KDE (under `replace`; the other regimes
store their training set). A KDE is its stored points p_r with weights w_r (rows
of weight 0 are padding) and a bandwidth h: density sum_r w_r N(x; p_r, h^2 I),
sampled by picking a point by weight and adding N(0, h^2 I). The bandwidth is
fixed, or re-chosen every generation from the training data by Scott's or
Silverman's rule.

Metrics per generation: heldout_nll, the mean negative log density of H real samples
drawn once per seed (in `reference`, from the seed's reference key, so every
generation of a seed is scored on the same set); spread, the trace of the KDE's
covariance; mmd2, the unbiased squared MMD between the generation's N samples and
that held-out set (Gaussian kernel of length `mmd_scale`); bandwidth; effective_n
(Kish's, of the training weights); truth_ll, the true log density of the samples
averaged, for the targets that have one in closed form.

The spread S_g = B_g + d h^2 (B_g the stored points' weighted biased variance summed
over the d dimensions) follows, under `replace` with N points, r = (N - 1) / N and
n = g + 1 fits from a truth of total variance V_0:

  fixed h:  E S_g = r E S_{g-1} + d h^2,  E S_0 = r V_0 + d h^2, so
            E S_g = r^n V_0 + d h^2 N (1 - r^n),
  because N draws from a distribution of covariance trace S have biased sample
  variance r S in expectation. Per dimension this is V_0 / d + n h^2 while n << N
  (a random walk's spread), and it settles at N d h^2, where the shrinking by r
  balances the kernel's h^2;
  a rule:   h^2 = f^2 tr(C) / d with C the unbiased covariance, tr C = B / r, so
            E S_g = (r + f^2) E S_{g-1} and E S_g = (r + f^2)^n V_0,
  geometric growth by 1 - 1/N + f^2 a generation (f^2 = N^(-1/3) in 2-D).
Both are exact in expectation: the spread is linear in the stored points' scatter.
"""

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from collapse_jax.core import (experiment, knobs, placement, plots, protocol, regimes, results,
                               sampling, scores, validation)
from collapse_jax.core.settings import setting

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

DIMS = 2
RULES = ('fixed', 'scott', 'silverman')
MIN_BANDWIDTH = 1e-12  # a rule's bandwidth on data collapsed to one point, in float32's range


# ---------------------------------------------------------------- targets
# A target is a noiseless 2-D shape plus N(0, noise^2 I): its samples are
# centre(key, n) + noise z. Its density is exact where the shape's convolution with
# the noise has a closed form (blobs: a Gaussian mixture; circles: a Bessel function);
# the moons' half circles and the swiss roll's spiral have none, and their 'truth'
# score is refused.

@dataclasses.dataclass(frozen=True)
class Target:
  """centre(key, n) -> c_NxD: the noiseless points; mean_D, variance: the mean and the
  total variance (trace) of the noiseless points; log_density(x_NxD, noise) -> l_N or
  None; noise: the default noise's standard deviation; scores(x_NxD, noise): log_density
  as scores.Relative; moved(x_NxD, noise, shift, scale): the same of the target moved by
  shift in every coordinate and widened scale times about its mean (a biased verifier's)."""
  name: str
  centre: Callable
  mean: tuple[float, float]
  variance: float
  log_density: Callable | None
  noise: float
  scores: Callable | None = None  # log_density as scores.Relative, for verify and curate
  moved: Callable | None = None  # a biased verifier's log density, as scores.Relative


BLOB_CENTRES = ((-1.0, 0.0), (1.0, 0.0), (0.0, 1.5))
CIRCLE_RADII = (1.0, 0.5)  # scikit-learn's make_circles(factor=0.5)
SWISS_TURNS = (1.5 * math.pi, 4.5 * math.pi)  # scikit-learn's make_swiss_roll, (x, z) / 10
SWISS_SCALE = 0.1


def _blobs(key, n):
  return jnp.asarray(BLOB_CENTRES)[jax.random.randint(key, (n,), 0, len(BLOB_CENTRES))]


def _moons(key, n):
  """scikit-learn's make_moons with t ~ U[0, pi]: the upper arc or the lower one, 1/2 each."""
  side_key, t_key = jax.random.split(key)
  t_N = jnp.pi * jax.random.uniform(t_key, (n,))
  upper_NxD = jnp.stack([jnp.cos(t_N), jnp.sin(t_N)], 1)
  lower_NxD = jnp.stack([1 - jnp.cos(t_N), 0.5 - jnp.sin(t_N)], 1)
  return jnp.where(jax.random.bernoulli(side_key, 0.5, (n, 1)), upper_NxD, lower_NxD)


def _circles(key, n):
  side_key, t_key = jax.random.split(key)
  radius_N = jnp.asarray(CIRCLE_RADII)[jax.random.randint(side_key, (n,), 0, 2)]
  t_N = 2 * jnp.pi * jax.random.uniform(t_key, (n,))
  return radius_N[:, None] * jnp.stack([jnp.cos(t_N), jnp.sin(t_N)], 1)


def _swiss_roll(key, n):
  lo, hi = SWISS_TURNS
  t_N = lo + (hi - lo) * jax.random.uniform(key, (n,))
  return SWISS_SCALE * t_N[:, None] * jnp.stack([jnp.cos(t_N), jnp.sin(t_N)], 1)


def blobs_log_density(x_NxD, noise):
  """log (1/K) sum_k N(x; c_k, noise^2 I)."""
  sq_NxK = sampling.squared_distances(x_NxD, jnp.asarray(BLOB_CENTRES))
  return (_logsumexp(-sq_NxK / (2 * noise**2)) - math.log(len(BLOB_CENTRES))
          - jnp.log(2 * jnp.pi * noise**2))


def circles_log_density(x_NxD, noise, per_circle: bool = False, radii=CIRCLE_RADII):
  """log (1/2) sum_c p_c(x): a circle of radius a blurred by N(0, s^2 I) has density
  p(x) = (1 / 2 pi s^2) exp(-(rho^2 + a^2) / 2 s^2) I_0(rho a / s^2), rho = |x|
  (the angular integral of the Gaussian is the Bessel function's integral form,
  Abramowitz and Stegun 9.6.16); with I_0(z) = i0e(z) e^z the exponent is -(rho - a)^2 / 2 s^2."""
  rho_N = jnp.sqrt(jnp.sum(x_NxD**2, 1))
  a_C = jnp.asarray(radii)
  z_NxC = rho_N[:, None] * a_C / noise**2
  log_NxC = (-(rho_N[:, None] - a_C) ** 2 / (2 * noise**2) + jnp.log(jax.scipy.special.i0e(z_NxC))
             - jnp.log(2 * jnp.pi * noise**2) - math.log(len(radii)))
  return log_NxC if per_circle else _logsumexp(log_NxC)


def blobs_scores(x_NxD, noise):
  """blobs_log_density as scores.Relative (exact ranking of candidates however close)."""
  k = len(BLOB_CENTRES)
  return scores.isotropic_mixture(x_NxD, jnp.asarray(BLOB_CENTRES), jnp.full(k, -math.log(k)),
                                  noise)


def blobs_moved(x_NxD, noise, shift, scale):
  """blobs_scores of the blobs moved by shift and widened scale times about their mean: the
  centres c + scale (c_k - c) + shift, the noise times scale."""
  centres_KxD = jnp.asarray(BLOB_CENTRES)
  c_D = jnp.mean(centres_KxD, 0)
  k = len(BLOB_CENTRES)
  return scores.isotropic_mixture(x_NxD, c_D + scale * (centres_KxD - c_D) + shift,
                                  jnp.full(k, -math.log(k)), scale * noise)


def circles_moved(x_NxD, noise, shift, scale):
  """circles_scores of the circles moved by shift and widened scale times about their centre,
  the origin: radii and noise times scale, centred at (shift, shift)."""
  return circles_scores(x_NxD, scale * noise, scale * jnp.asarray(CIRCLE_RADII),
                        jnp.full(DIMS, shift, jnp.float32))


def _log_i0_slope(z_N):
  """d/dz log i0e(z) = I1(z) / I0(z) - 1: the ratio of float32 i1e and i0e where z < 20, and
  its asymptotic series above, whose error there is below 1e-6 of it (the ratio's
  rounding grows to 1e-4 by z = 400)."""
  special = jax.scipy.special
  small_N = jnp.minimum(z_N, 20.0)
  w_N = 1 / jnp.maximum(z_N, 20.0)
  series_N = -w_N * (0.5 + w_N * (1 / 8 + w_N * (1 / 8 + w_N * (25 / 128 + w_N * 13 / 32))))
  return jnp.where(z_N < 20, special.i1e(small_N) / special.i0e(small_N) - 1, series_N)


def _log_i0e_gap(zc, dz_N):
  """log i0e(zc + dz) - log i0e(zc): dz times the slope at the midpoint where |dz| < 0.01
  max(1, zc) (the plain difference rounds there; the midpoint rule errs by dz^3 / 24 times
  the third derivative, about -1 / z^3 for large z), plainly elsewhere."""
  special = jax.scipy.special
  plain_N = jnp.log(special.i0e(zc + dz_N)) - jnp.log(special.i0e(zc))
  near_N = jnp.abs(dz_N) < 0.01 * jnp.maximum(1.0, zc)
  return jnp.where(near_N, dz_N * _log_i0_slope(zc + 0.5 * dz_N), plain_N)


def circles_scores(x_NxD, noise, radii=CIRCLE_RADII, origin_D=None):
  """circles_log_density as scores.Relative: each circle's term at the candidates' mean c
  and its exact gap, through rho - rho_c = (x - c) . (x + c) / (rho + rho_c). radii and
  origin_D (default: the origin) place the circles elsewhere (a biased verifier's)."""
  c_D = scores.centre(x_NxD)
  y_NxD, yc_D = (x_NxD, c_D) if origin_D is None else (x_NxD - origin_D, c_D - origin_D)
  a_C = jnp.asarray(radii)
  rho_N, rho_c = jnp.sqrt(jnp.sum(y_NxD**2, 1)), jnp.sqrt(jnp.sum(yc_D**2))
  both_N = rho_N + rho_c
  drho_N = jnp.sum((x_NxD - c_D) * (y_NxD + yc_D), 1) / jnp.where(both_N > 0, both_N, 1.0)
  # -(rho - a)^2 / 2 s^2 + log i0e(rho a / s^2), relative to rho_c, for each circle
  quad_NxC = -drho_N[:, None] * ((rho_N[:, None] - a_C) + (rho_c - a_C)) / (2 * noise**2)
  bessel_NxC = jax.vmap(lambda a: _log_i0e_gap(rho_c * a / noise**2, drho_N * a / noise**2),
                        out_axes=1)(a_C)
  at_C = circles_log_density(yc_D[None], noise, per_circle=True, radii=radii)[0]
  return scores.mixture_gap(at_C, -2 * (quad_NxC + bessel_NxC))


def _swiss_moments():
  """Mean and total variance of SWISS_SCALE t (cos t, sin t), t ~ U[lo, hi]: E t cos t and
  E t sin t from the antiderivatives t sin t + cos t and sin t - t cos t; E t^2 = (lo^2 +
  lo hi + hi^2) / 3."""
  lo, hi = SWISS_TURNS
  mean = (SWISS_SCALE * ((hi * math.sin(hi) + math.cos(hi)) - (lo * math.sin(lo) + math.cos(lo)))
          / (hi - lo),
          SWISS_SCALE * ((math.sin(hi) - hi * math.cos(hi)) - (math.sin(lo) - lo * math.cos(lo)))
          / (hi - lo))
  second = SWISS_SCALE**2 * (lo**2 + lo * hi + hi**2) / 3
  return mean, second - mean[0] ** 2 - mean[1] ** 2


def _moons_moments():
  """Upper arc (cos t, sin t), lower (1 - cos t, 1/2 - sin t), t ~ U[0, pi]: E sin t = 2/pi,
  E cos t = 0, E cos^2 = E sin^2 = 1/2; E|x|^2 = (1 + 9/4 - 2/pi) / 2, mean (1/2, 1/4)."""
  return (0.5, 0.25), 1.625 - 1 / math.pi - 0.3125


TARGETS = {
    'blobs': Target('blobs', _blobs, (0.0, 0.5), 3.5 / 3, blobs_log_density, 0.25, blobs_scores,
                    blobs_moved),
    'moons': Target('moons', _moons, *_moons_moments(), None, 0.1),
    'circles': Target('circles', _circles, (0.0, 0.0), sum(a * a for a in CIRCLE_RADII) / 2,
                      circles_log_density, 0.05, circles_scores, circles_moved),
    'swiss_roll': Target('swiss_roll', _swiss_roll, *_swiss_moments(), None, 0.05),
}


def draw_target(target: Target, key, n, noise):
  centre_key, noise_key = jax.random.split(key)
  return target.centre(centre_key, n) + noise * jax.random.normal(noise_key, (n, DIMS))


def target_variance(target: Target, noise: float) -> float:
  """V_0: the trace of the target's covariance, the noiseless shape's plus d noise^2."""
  return target.variance + DIMS * noise**2


# ---------------------------------------------------------------- the KDE
# params: {'points': p_RxD, 'weights': w_R (summing to 1; 0 for padding), 'bandwidth': h}.
# R is fixed per sweep: the most rows the sweep's fit sees (fit_rows).

def _logsumexp(a_NxM):
  """log sum_m exp(a_nm), rows with -inf entries allowed (padding), each with a finite one."""
  top_N = jnp.max(a_NxM, axis=1)
  return top_N + jnp.log(jnp.sum(jnp.exp(a_NxM - top_N[:, None]), axis=1))


def effective_n(w_R):
  """Kish's effective sample size (sum w)^2 / sum w^2 (scipy's gaussian_kde's neff)."""
  return jnp.sum(w_R) ** 2 / jnp.sum(w_R**2)


def rule_factor(n_eff, dims: int, rule: str):
  """The bandwidth's factor over the data's scale, the normal reference rules: Scott's
  n^(-1/(d+4)) and Silverman's (n (d + 2) / 4)^(-1/(d+4)) (Scott 1992, Silverman 1986, as
  scipy.stats.gaussian_kde and scikit-learn's KernelDensity define them); equal in 2-D."""
  if rule == 'scott':
    return n_eff ** (-1.0 / (dims + 4))
  if rule == 'silverman':
    return (n_eff * (dims + 2) / 4.0) ** (-1.0 / (dims + 4))
  raise ValueError(rule)


def weighted_moments(x_RxD, w_R):
  """(mean_D, biased covariance's diagonal var_D) of weighted rows; rows of weight 0 never
  count, whatever they hold."""
  live_R = w_R > 0
  w_R = jnp.where(live_R, w_R, 0.0) / jnp.sum(jnp.where(live_R, w_R, 0.0))
  x_RxD = jnp.where(live_R[:, None], x_RxD, 0.0)
  mean_D = w_R @ x_RxD
  return mean_D, w_R @ (x_RxD - mean_D) ** 2


def rule_bandwidth(x_RxD, w_R, rule: str):
  """h = f(n_eff) sqrt(tr C / d), C the weighted unbiased covariance (numpy's and scipy's,
  the divisor 1 - sum w^2 for weights summing to 1): the isotropic kernel whose variance
  per dimension is f^2 times the data's average, as scipy's gaussian_kde when C is
  isotropic. Floored at MIN_BANDWIDTH (data collapsed onto one point)."""
  w_R = jnp.where(w_R > 0, w_R, 0.0) / jnp.sum(jnp.where(w_R > 0, w_R, 0.0))
  _, var_D = weighted_moments(x_RxD, w_R)
  unbiased = jnp.sum(var_D) / jnp.maximum(1.0 - jnp.sum(w_R**2), 1e-30)
  h = rule_factor(effective_n(w_R), x_RxD.shape[1], rule) * jnp.sqrt(unbiased / x_RxD.shape[1])
  return jnp.maximum(h, MIN_BANDWIDTH)


def fit(x_RxD, w_R, rule: str, bandwidth: float, rows: int):
  """The KDE of weighted rows, padded to `rows` rows of weight 0; rows of weight 0 given
  are padding too and are zeroed."""
  if x_RxD.shape[0] > rows:
    raise ValueError(f'the fit got {x_RxD.shape[0]} rows but the KDE stores {rows}: build the '
                     'family with rows=fit_rows(cfg, sweep)')
  live_R = w_R > 0
  w_R = jnp.where(live_R, w_R, 0.0)
  h = jnp.float32(bandwidth) if rule == 'fixed' else rule_bandwidth(x_RxD, w_R, rule)
  pad = rows - x_RxD.shape[0]
  points_RxD = jnp.pad(jnp.where(live_R[:, None], x_RxD, 0.0), ((0, pad), (0, 0)))
  weights_R = jnp.pad(w_R / jnp.sum(w_R), (0, pad))
  return ({'points': points_RxD, 'weights': weights_R, 'bandwidth': h},
          {'effective_n': effective_n(w_R)})


def sample(params, key, n):
  """n samples: a stored point picked by weight, plus N(0, h^2 I)."""
  pick_key, noise_key = jax.random.split(key)
  i_N = sampling.invert_cdf(jnp.cumsum(params['weights']), jax.random.uniform(pick_key, (n,)))
  return (params['points'][i_N]
          + params['bandwidth'] * jax.random.normal(noise_key, (n, params['points'].shape[1])))


def tempered(params, knobs):
  """The law the KDE samples at temperature t (knobs: {'temperature': t}): its bandwidth
  times t, the stored points and weights unchanged."""
  return {**params, 'bandwidth': params['bandwidth'] * knobs['temperature']}


def log_density(params, x_NxD):
  """log sum_r w_r N(x; p_r, h^2 I) of each row (a logsumexp over the stored points)."""
  h = params['bandwidth']
  d2_NxR = sampling.squared_distances(x_NxD, params['points'])
  a_NxR = jnp.log(params['weights']) - d2_NxR / (2 * h**2)
  return _logsumexp(a_NxR) - 0.5 * x_NxD.shape[1] * jnp.log(2 * jnp.pi * h**2)


def log_density_scores(params, x_NxD):
  """log_density as scores.Relative: exact ranking of candidates however narrow the
  bandwidth and the stored points' spread."""
  return scores.isotropic_mixture(x_NxD, params['points'], jnp.log(params['weights']),
                                  params['bandwidth'])


def spread(params):
  """Trace of the KDE's covariance: the stored points' weighted biased variance plus d h^2."""
  _, var_D = weighted_moments(params['points'], params['weights'])
  return jnp.sum(var_D) + params['points'].shape[1] * params['bandwidth'] ** 2


# ---------------------------------------------------------------- closed forms

def spread_theory(var0: float, dims: int, samples: int, rule: str, bandwidth: float,
                  generations: int, finite: bool = True, shift: int = 1,
                  temperature: float = 1.0) -> np.ndarray:
  """E S_g for g = 0..G under `replace` (module docstring), n = g + shift fits.

  finite=False and shift=0 give the plausible wrong variants the tests reject: no
  finite-sample factor (r = 1: V_0 + n d h^2, and V_0 (1 + f^2)^n for a rule), and a
  generation off by one. At temperature t each generation's samples carry kernel noise
  t^2 h^2 a dimension while its fit keeps h: for a fixed h the n - 1 draws add
  (t^2 - 1) d h^2 (r + ... + r^(n-1)) more; for a rule each grows the stored scatter by
  r + t^2 f^2 in place of r + f^2.
  """
  n_G = np.arange(generations + 1, dtype=np.float64) + shift
  r = (samples - 1) / samples if finite else 1.0
  hot = temperature**2 - 1.0  # 0 at t = 1: the untempered law, exactly
  if rule == 'fixed':
    grown = n_G * dims * bandwidth**2 if r == 1.0 else dims * bandwidth**2 * (1 - r**n_G) / (1 - r)
    drawn = n_G - 1 if r == 1.0 else (r - r**n_G) / (1 - r)
    return r**n_G * var0 + grown + hot * dims * bandwidth**2 * drawn
  f = float(rule_factor(np.float64(samples), dims, rule))
  return (r + f**2) ** n_G * var0 * ((r + temperature**2 * f**2) / (r + f**2)) ** (n_G - 1)


# ---------------------------------------------------------------- the experiment

@dataclasses.dataclass(frozen=True)
class KDEConfig(experiment.SweepConfig):
  """The KDE experiment; defaults sized for an accelerator (1,000 seeds of N = 1,000)."""
  samples: int = setting(1000, 'Samples N each generation draws and the next KDE stores.')
  target: str = setting('moons', 'The 2-D truth: three Gaussian blobs, two moons, two circles or '
                        'a swiss roll, each a shape plus N(0, noise^2 I).', choices=tuple(TARGETS))
  noise: float | None = setting(None, "The target's noise standard deviation (default: the "
                                "target's own: " + ', '.join(f'{k} {t.noise:g}'
                                                             for k, t in TARGETS.items()) + ').')
  bandwidth_rule: str = setting('fixed', 'fixed: --bandwidth every generation; scott or '
                                "silverman: re-chosen from each generation's training data (the "
                                'two agree in 2-D).', choices=RULES)
  bandwidth: float = setting(0.1, 'The kernel standard deviation h, with --bandwidth_rule=fixed.')
  heldout: int = setting(1000, "Real samples per seed, drawn once, scored by every generation's "
                         'KDE (NLL) and compared with its samples (MMD).')
  mmd_scale: float = setting(0.5, "The MMD's Gaussian kernel length scale.")
  reward_target: tuple[float, ...] = setting(
      (1.0, 1.0), '--score=reward: the reward is -|x - c|^2 for this point c.')
  checkpoint_every: int = 50

  @property
  def truth(self) -> Target:
    return TARGETS[self.target]

  @property
  def target_noise(self) -> float:
    return self.truth.noise if self.noise is None else self.noise

  def validate(self) -> 'KDEConfig':
    self.validate_sweep(min_samples=2)  # a spread and an MMD need two
    validation.check_choice('target', self.target, TARGETS)
    validation.check_choice('bandwidth_rule', self.bandwidth_rule, RULES, 'rule')
    checks = [('bandwidth', self.bandwidth > 0, 'must be positive'),
              ('noise', self.noise is None or self.noise > 0, 'must be positive'),
              ('heldout', self.heldout >= 2, 'must be at least 2'),
              ('mmd_scale', self.mmd_scale > 0, 'must be positive'),
              ('reward_target', len(self.reward_target) == DIMS, f'needs {DIMS} coordinates')]
    validation.check_fields(self, checks)
    score = self.active_score(self.regimes)
    if score in ('truth', 'noisy', 'verifier') and self.truth.log_density is None:
      exact = ', '.join(t for t, v in TARGETS.items() if v.log_density is not None)
      raise validation.ConfigError('score', f'{score!r} needs the true density, which the '
                                   f'{self.target} target has in no closed form (only {exact} '
                                   'have one); pass --score=self, gen0 or reward')
    validation.validate_options(self, family(self))
    return self


SMALL = dict(seeds=200, generations=100, samples=250, heldout=250, checkpoint_every=50)
PRESETS = {'paper': {}, 'small': SMALL}


def fit_rows(cfg: KDEConfig, sweep: protocol.Sweep) -> int:
  """The rows a KDE stores in this sweep: the most its fit sees, N at generation 0 and the
  regime's training set after (a pool, N plus candidates, ...), read off the regime's own
  policy by shape alone."""
  n = sweep.samples
  reg = regimes.get(sweep.regime)
  pool = protocol.pool_rows(family(cfg), sweep, n)
  rows = lambda m: jax.ShapeDtypeStruct((m, DIMS), jnp.float32)  # noqa: E731
  scores_C = jax.ShapeDtypeStruct((sweep.candidate_rows(),), jnp.float32) if reg.scored else None

  def training_set(x0, last, pool_rows, scores_C):
    pools = regimes.Pools(x0, last, pool_rows, lambda key, m: jnp.zeros((m, DIMS)))
    return regimes.apply(reg, pools, jnp.int32(1), jax.random.key(0), jnp.float32(reg.default),
                         scores_C)[0]
  shape = jax.eval_shape(training_set, rows(n), rows(sweep.candidate_rows()),
                         rows(pool) if pool else None, scores_C)
  return max(n, shape.shape[0])


def family(cfg: KDEConfig, rows: int | None = None) -> protocol.Family:
  """The KDE as a driver family, storing `rows` points (default: N, enough for the regimes
  whose training set is N rows; run() passes fit_rows)."""
  truth, noise = cfg.truth, cfg.target_noise
  rows = cfg.samples if rows is None else rows
  target_D = jnp.asarray(cfg.reward_target, jnp.float32)
  true_log_density = true_scores = None
  if truth.log_density is not None:
    true_log_density = lambda x_NxD: truth.log_density(x_NxD, noise)  # noqa: E731
    true_scores = lambda x_NxD: truth.scores(x_NxD, noise)  # noqa: E731

  def reference(params0, key):
    heldout_HxD = draw_target(truth, key, cfg.heldout, noise)
    return {'heldout': heldout_HxD, 'heldout_self': sampling.kernel_mean_off_diagonal(
        sampling.squared_distances(heldout_HxD, heldout_HxD), cfg.mmd_scale)}

  def evaluate(params, synth_NxD, ref):
    out = {'heldout_nll': -jnp.mean(log_density(params, ref['heldout'])),
           'spread': spread(params), 'bandwidth': params['bandwidth'],
           'mmd2': sampling.mmd2(synth_NxD, ref['heldout'], cfg.mmd_scale, ref['heldout_self'])}
    if true_log_density is not None:
      out['truth_ll'] = jnp.mean(true_log_density(synth_NxD))
    return out

  return protocol.Family(
      draw_real=lambda key, n: draw_target(truth, key, n, noise),
      fit=lambda x_RxD, w_R, key: fit(x_RxD, w_R, cfg.bandwidth_rule, cfg.bandwidth, rows),
      sample=sample, reference=reference, evaluate=evaluate,
      one_at_a_time_on_cpu=True,  # a run's N x N kernel sums stay in cache: 2x faster here
      log_density=log_density_scores, true_log_density=true_scores,
      reward=lambda x_NxD: scores.squared_distance(x_NxD, target_D),
      biased=tempered, sampling_knobs=('temperature',),
      verifier=None if truth.moved is None else (
          lambda x_NxD, shift, scale: truth.moved(x_NxD, noise, shift, scale)))


# ---------------------------------------------------------------- figures

def replace_chain(fam: protocol.Family, seed, n: int, generations: int, knobs=None):
  """One run under `replace` as the driver draws it, in a scan of the family's own fit and
  sample: the keys split(key(seed), 3) into data, reference and run keys, generation g's
  fit and sample keys split(fold_in(run_key, g), 3)[1:] (tests/test_kde.py checks it
  against the driver's run); each fit sampled under the sampling knobs `knobs` where given
  (fam.biased). Returns every generation's samples and spread, (G+1) x N x D and G+1: for
  figures of one seed and for laws over many (vmapped)."""
  data_key, _, run_key = jax.random.split(jax.random.key(seed), 3)

  def generation(x_NxD, g):
    _, fit_key, sample_key = jax.random.split(jax.random.fold_in(run_key, g), 3)
    params, _ = fam.fit(x_NxD, jnp.ones(n), fit_key)
    synth_NxD = fam.sample(fam.biased(params, knobs) if knobs else params, sample_key, n)
    return synth_NxD, (synth_NxD, spread(params))
  _, (x_GxNxD, spread_G) = jax.lax.scan(generation, fam.draw_real(data_key, n),
                                        jnp.arange(generations + 1))
  return x_GxNxD, spread_G


def scatter(cfg: KDEConfig, path: str, generations=(0, 10, 50, 100, 200, 500, 1000)):
  """The truth and the first seed's samples under replace at chosen generations, as the
  GMM's panels."""
  shown = [g for g in generations if g <= cfg.generations] or [cfg.generations]
  chain = jax.jit(lambda seed: replace_chain(family(cfg), seed, cfg.samples, max(shown))[0])
  x_GxNxD = np.asarray(chain(cfg.first_seed))
  truth_NxD = np.asarray(draw_target(cfg.truth, jax.random.key(0), cfg.samples, cfg.target_noise))
  panels = [('truth', truth_NxD)] + [(f'generation {g}', x_GxNxD[g]) for g in shown]
  fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8), squeeze=False,
                           sharex=True, sharey=True)
  lo, hi = np.percentile(np.concatenate([x for _, x in panels]), [0.5, 99.5], axis=0)
  pad = 0.1 * (hi - lo)
  for ax, (title, x_NxD) in zip(axes[0], panels):
    ax.scatter(x_NxD[:, 0], x_NxD[:, 1], s=2, color='C0' if title != 'truth' else 'k')
    ax.set_title(title, fontsize=9)
  axes[0, 0].set_xlim(lo[0] - pad[0], hi[0] + pad[0])
  axes[0, 0].set_ylim(lo[1] - pad[1], hi[1] + pad[1])
  fig.suptitle(f'{cfg.samples} samples of the KDE, seed {cfg.first_seed}, replace, '
               f'{cfg.target}, bandwidth {_rule_label(cfg)}', fontsize=9)
  _save(fig, path)


def spread_figure(curves, cfg: KDEConfig, path: str):
  """Mean spread over seeds under replace against the closed form, and the closed form
  without the finite-sample factor (the wrong variant the tests reject); one of each per
  group of runs where knobs (a temperature) make several."""
  shown = [grp for grp in results.groups(curves)
           if grp.regime == 'replace' and grp.samples == cfg.samples]
  var0 = target_variance(cfg.truth, cfg.target_noise)
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for i, grp in enumerate(shown):
    sub = results.select(curves, 'replace', 0.0, cfg.samples, grp.knobs)
    g_G = sub['generation'][:, 0]
    mean_G, sd_G = sub['spread_mean'][:, 0], sub['spread_sd'][:, 0]
    half_G = 3.2905 * sd_G / np.sqrt(cfg.seeds)  # the 99.9% interval of the mean
    naive_G = spread_theory(var0, DIMS, cfg.samples, cfg.bandwidth_rule, cfg.bandwidth,
                            cfg.generations, finite=False,
                            temperature=knobs.value(dict(grp.knobs), 'temperature'))
    tag = ''.join(f', {k} {v:g}' for k, v in grp.knobs)
    ax.plot(g_G, mean_G, color=f'C{2 * i}', label=f'mean over {cfg.seeds} seeds{tag}')
    ax.fill_between(g_G, mean_G - half_G, mean_G + half_G, color=f'C{2 * i}', alpha=0.25,
                    linewidth=0, label='its 99.9% interval' if i == 0 else None)
    ax.plot(g_G, sub['spread_theory'][:, 0], 'k--', linewidth=1,
            label='closed form (finite-sample factor (N-1)/N)' if i == 0 else None)
    ax.plot(g_G, naive_G, ':', color='C3', label='without the factor' if i == 0 else None)
  ax.set_xlabel('generation')
  ax.set_ylabel('spread: trace of the KDE covariance')
  if cfg.bandwidth_rule != 'fixed':
    ax.set_yscale('log')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(f'KDE on {cfg.target}, N={cfg.samples}, bandwidth {_rule_label(cfg)}, replace',
               fontsize=9)
  _save(fig, path)


def _rule_label(cfg: KDEConfig) -> str:
  return f'{cfg.bandwidth:g}' if cfg.bandwidth_rule == 'fixed' else cfg.bandwidth_rule


def _save(fig, path):
  fig.tight_layout()
  if placement.is_primary():
    fig.savefig(path, dpi=120)
  plt.close(fig)


# ---------------------------------------------------------------- run

LEADING_COLUMNS = ('heldout_nll', 'spread', 'mmd2', 'bandwidth', 'truth_ll', 'effective_n')
SUMMARY_COLUMNS = ('heldout_nll', 'spread', 'mmd2', 'bandwidth')


def closed_forms(cfg: KDEConfig):
  """The spread's closed form under replace, beside each sweep's statistics over seeds."""
  var0 = target_variance(cfg.truth, cfg.target_noise)

  def closed_form(sweep, fraction):
    del fraction
    if sweep.regime != 'replace':
      return {'spread_theory': np.full(sweep.generations + 1, np.nan)}
    t = knobs.value(sweep.group_knobs(), 'temperature')
    return {'spread_theory': spread_theory(var0, DIMS, sweep.samples, cfg.bandwidth_rule,
                                           cfg.bandwidth, sweep.generations, temperature=t)}
  return closed_form


def figures(cfg: KDEConfig, out: experiment.Outcome) -> None:
  """collapse.png, spread.png and scatter.png (with replace), tradeoff.png."""
  title = (f'KDE refitted on its own samples: {cfg.target}, bandwidth {_rule_label(cfg)}, '
           f'{cfg.seeds} seeds')
  plots.curves(out.curves, [('heldout_nll', 'NLL of held-out real data', False),
                            ('spread', 'spread (trace of covariance)', True),
                            ('mmd2', 'squared MMD to the truth', False)],
               out.path('collapse.png'), title)
  if 'replace' in cfg.regimes:
    spread_figure(out.curves, cfg, out.path('spread.png'))
    scatter(cfg, out.path('scatter.png'))
  plots.scores_against(out.curves, ('spread', 'spread (trace of covariance)'),
                       out.path('tradeoff.png'), title)


def run(cfg: KDEConfig, workdir: str, progress: bool = True, log=print):
  """Runs, resumes or reloads the KDE experiment in `workdir`; returns the curves.

  Leaves there: config.json, checkpoints/<regime>/, metrics.csv (one row per generation x
  seed x regime x parameter value), curves.csv (statistics over seeds, with the spread's
  closed form under replace), collapse.png, spread.png and scatter.png (with replace),
  tradeoff.png (with a score) and summary.txt.
  """
  exp = experiment.Experiment(
      'kde', lambda: lambda sweep: family(cfg, fit_rows(cfg, sweep)), SUMMARY_COLUMNS,
      generations=(1, 10, 100, 1000), first=LEADING_COLUMNS, closed_form=closed_forms(cfg),
      curves_csv=True, figures=functools.partial(figures, cfg))
  return experiment.run_experiment(exp, cfg, workdir, progress, log).curves
