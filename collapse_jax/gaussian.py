"""A Gaussian refitted on its own samples: the paper's theory, simulated and in closed form.

Generation 0 fits mean and covariance to M samples of N(mu, sigma^2 I) in d
dimensions; generation g >= 1 fits them to M samples of generation g - 1's fit.
In the paper's indexing (Nature 2024, Section 3 and its supplement) the fit of
generation g is (mu_{g+1}, Sigma_{g+1}): n = g + 1 fits separate it from the
truth, and every closed form below is written in that n.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from collapse_jax import driver, plots, results

ESTIMATORS = ('unbiased', 'mle')


# ---------------------------------------------------------------- fit and sample

def summarise(x_NxD, w_N):
  """Sufficient statistics of weighted data: total weight, mean, scatter matrix.

  One pass over the data, shifted by its first row: the shifted sums stay of
  the order of the spread even when the spread is tiny against the mean.
  """
  n = jnp.sum(w_N)
  xc_NxD = x_NxD - x_NxD[0]
  s1_D = jnp.sum(w_N[:, None] * xc_NxD, axis=0)
  if x_NxD.shape[1] == 1:  # elementwise: a CPU runs a batch of 1 x 1 matmuls slowly
    s2_DxD = jnp.sum(w_N * xc_NxD[:, 0] ** 2)[None, None]
  else:
    s2_DxD = (w_N[:, None] * xc_NxD).T @ xc_NxD
  return {'n': n, 'mean': x_NxD[0] + s1_D / n, 'scatter': s2_DxD - jnp.outer(s1_D, s1_D) / n}


def combine(a, b):
  """The statistics of two data sets together (the pairwise update of Chan et al.)."""
  n = a['n'] + b['n']
  delta_D = b['mean'] - a['mean']
  return {'n': n, 'mean': a['mean'] + delta_D * (b['n'] / n),
          'scatter': a['scatter'] + b['scatter'] + jnp.outer(delta_D, delta_D) * (a['n'] * b['n'] / n)}


def fit_summary(stats, estimator: str):
  """Mean and covariance; the covariance divides by n - 1 (unbiased) or n (mle)."""
  ddof = 1.0 if estimator == 'unbiased' else 0.0
  return {'mean': stats['mean'], 'cov': stats['scatter'] / (stats['n'] - ddof)}, {}


def sample(params, key, n):
  mean_D, cov_DxD = params['mean'], params['cov']
  z_NxD = jax.random.normal(key, (n, mean_D.shape[0]))
  if mean_D.shape[0] == 1:
    return mean_D + jnp.sqrt(cov_DxD[0, 0]) * z_NxD
  return mean_D + z_NxD @ jnp.linalg.cholesky(cov_DxD).T


# ---------------------------------------------------------------- metrics

def evaluate(params, synth_NxD, true_mean: float, true_std: float):
  """Distances of one fit from the truth N(true_mean, true_std^2 I)."""
  mean_D, cov_DxD = params['mean'], params['cov']
  d = mean_D.shape[0]
  err_D = mean_D - true_mean
  trace = jnp.trace(cov_DxD)
  if d == 1:
    logdet, sqrt_eigs = jnp.log(cov_DxD[0, 0]), jnp.sqrt(cov_DxD[0])
  else:
    logdet = jnp.linalg.slogdet(cov_DxD)[1]
    sqrt_eigs = jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(cov_DxD), 0.0))
  sigma = jnp.sqrt(trace / d)
  # W2^2 between Gaussians: |m - mu|^2 + tr(S + Sigma - 2 (Sigma^1/2 S Sigma^1/2)^1/2),
  # and Sigma = true_std^2 I makes the last term 2 true_std tr(S^1/2).
  w2_sq = err_D @ err_D + trace + d * true_std**2 - 2 * true_std * jnp.sum(sqrt_eigs)
  return {'mean_error': jnp.sqrt(err_D @ err_D), 'sigma': sigma,
          'sigma_error': jnp.abs(sigma - true_std), 'trace': trace, 'logdet': logdet,
          'w2_sq': jnp.maximum(w2_sq, 0.0),
          'sample_msd': jnp.mean(jnp.sum((synth_NxD - true_mean) ** 2, axis=1))}


# ---------------------------------------------------------------- closed forms

def theory(regime: str, estimator: str, samples: int, dims: int, true_std: float,
           generations: int) -> dict[str, np.ndarray]:
  """Expected values over seeds at generations 0..G, where a closed form exists.

  Replace (n = g + 1 fits, k = M - 1 degrees of freedom, divisor v = M - 1
  unbiased or M mle, r = k / v): each fit's scatter is a Wishart(k) draw around
  the last fit's covariance, so (Bartlett)
    E tr S_n = d sigma^2 r^n;  E log det S_n = d log sigma^2 + n (sum_i psi((k-i+1)/2) + d log(2/v)),
    with variance n sum_i psi'((k-i+1)/2);
    E |m_n - mu|^2 = (d sigma^2 / M) sum_{j<n} r^j  (n d sigma^2 / M unbiased: the
    sample variance grows like sigma^2 (1 + n/M), the paper's supplement);
    d = 1: E s_n = sigma a^n with a = E sqrt(chi2_k / v), hence E (s_n - sigma)^2 and
    E W2^2 = E (m_n - mu)^2 + E (s_n - sigma)^2, which grows without bound for the
    unbiased estimator (Nature, Theorem 3.1) and tends to 2 sigma^2 for mle.
  Accumulate: with the variance known, the mean of n pooled generations errs by
    E |m_n - mu|^2 = (d sigma^2 / M) sum_{j<=n} 1/j^2 < (pi^2/6) d sigma^2 / M
    (Dey and Donoho 2024; Gerstgrasser et al. 2024); estimating the variance too
    changes it by O(1/M).
  Other regimes: no closed form (NaN).
  """
  n_G = np.arange(1, generations + 2, dtype=np.float64)
  nan = np.full_like(n_G, np.nan)
  var = true_std**2
  out = {k: nan for k in ('mean_error_rms', 'sigma_mean', 'sigma_error_rms', 'trace_mean',
                          'logdet_mean', 'logdet_sd', 'w2_sq_mean', 'sample_msd_mean')}
  if regime == 'accumulate':
    out['mean_error_rms'] = np.sqrt(dims * var / samples * np.cumsum(1.0 / n_G**2))
    return out
  if regime != 'replace':
    return out
  k = samples - 1.0
  v = k if estimator == 'unbiased' else float(samples)
  r = k / v
  mean_sq = dims * var / samples * (n_G if r == 1.0 else (1 - r**n_G) / (1 - r))
  trace = dims * var * r**n_G
  nu_d = k - np.arange(dims)  # Bartlett: det W = prod_i chi2_{k - i + 1}
  out.update(mean_error_rms=np.sqrt(mean_sq), trace_mean=trace, sample_msd_mean=mean_sq + trace,
             logdet_mean=dims * np.log(var) + n_G * (special.digamma(nu_d / 2).sum()
                                                      + dims * np.log(2 / v)),
             logdet_sd=np.sqrt(n_G * special.polygamma(1, nu_d / 2).sum()))
  if dims == 1:
    a = np.exp(0.5 * np.log(2 / v) + special.gammaln((k + 1) / 2) - special.gammaln(k / 2))
    sigma_sq_err = var * (r**n_G - 2 * a**n_G + 1)
    out.update(sigma_mean=true_std * a**n_G, sigma_error_rms=np.sqrt(sigma_sq_err),
               w2_sq_mean=mean_sq + sigma_sq_err)
  return out


# ---------------------------------------------------------------- the experiment

@dataclasses.dataclass(frozen=True)
class GaussianConfig:
  """The Gaussian experiment; defaults are the paper's (Section 3, its figure of a
  1-D Gaussian refitted with M samples), with accumulate beside replace."""
  seeds: int = 1000
  generations: int = 1000
  samples: tuple[int, ...] = (100, 500, 1000, 10000)
  dims: int = 1
  estimator: str = 'unbiased'
  regimes: tuple[str, ...] = ('replace', 'accumulate')
  real_fractions: tuple[float, ...] = (0.0,)
  true_mean: float = 0.0
  true_std: float = 1.0
  checkpoint_every: int = 250
  first_seed: int = 0
  per_seed_csv: bool = False

  def sweep(self, regime: str, samples: int):
    return driver.Sweep(regime, self.seeds, self.generations, samples, self.real_fractions,
                        self.first_seed)

  def validate(self) -> 'GaussianConfig':
    if self.dims < 1:
      raise driver.ConfigError('dims', f'must be at least 1, got {self.dims}')
    if not self.samples:
      raise driver.ConfigError('samples', 'needs at least one sample size')
    for m in self.samples:
      if m <= self.dims:
        raise driver.ConfigError('samples', f'{m} samples cannot determine a covariance in '
                                 f'{self.dims} dimensions; use more than {self.dims}')
    driver.validate_sweep(self.seeds, self.generations, min(self.samples), self.regimes,
                          self.real_fractions)
    if self.estimator not in ESTIMATORS:
      raise driver.ConfigError('estimator', f'unknown estimator {self.estimator!r}; choose '
                               f'from {", ".join(ESTIMATORS)}')
    checks = [('true_std', self.true_std > 0, 'must be positive'),
              ('checkpoint_every', self.checkpoint_every >= 1, 'must be at least 1'),
              ('first_seed', self.first_seed >= 0, 'must be non-negative')]
    driver.check_fields(self, checks)
    return self


SMALL = dict(seeds=200, generations=100, samples=(10, 100), checkpoint_every=50)
PRESETS = {'paper': {}, 'small': SMALL}


def family(cfg: GaussianConfig) -> driver.Family:
  """The Gaussian as a driver family; its fit has sufficient statistics."""
  fit_stats = lambda stats, key: fit_summary(stats, cfg.estimator)
  return driver.Family(
      draw_real=lambda key, n: cfg.true_mean + cfg.true_std * jax.random.normal(key, (n, cfg.dims)),
      fit=lambda x_NxD, w_N, key: fit_stats(summarise(x_NxD, w_N), key),
      sample=sample,
      reference=lambda params0, key: {},
      evaluate=lambda params, synth, ref: evaluate(params, synth, cfg.true_mean, cfg.true_std),
      summary=driver.Summary(summarise, combine, fit_stats))


ERRORS = ('mean_error', 'sigma_error')  # their root mean square is what theory gives
SUMMARY_COLUMNS = ('mean_error', 'sigma', 'logdet', 'w2_sq')


def run(cfg: GaussianConfig, workdir: str, progress: bool = True, log=print):
  """Runs, resumes or reloads the Gaussian experiment in `workdir`; returns the curves.

  Leaves there: config.json, checkpoints/<regime>/M<samples>/, curves.csv (one
  row per generation x regime x M x real fraction: statistics over seeds beside
  the closed forms), metrics.csv with --per_seed_csv (one row per seed too),
  panels.png, w2.png and summary.txt.
  """
  cfg.validate()
  driver.check_config(workdir, json.loads(json.dumps(dataclasses.asdict(cfg))))

  # -- every regime x M is one compiled program over seeds x real fractions
  fam = family(cfg)
  sweeps = []
  for regime in cfg.regimes:
    for m in cfg.samples:
      sweep = cfg.sweep(regime, m)
      directory = os.path.join(workdir, 'checkpoints', regime, f'M{m}')
      sweeps.append((sweep, driver.run(fam, sweep, directory, cfg.checkpoint_every, progress)))

  # -- tables: statistics over seeds with the closed forms, and optionally every seed
  def closed_form(sweep, fraction):
    del fraction
    out = theory(sweep.regime, cfg.estimator, sweep.samples, cfg.dims, cfg.true_std,
                 sweep.generations)
    return {f'{k}_theory': v for k, v in out.items()}

  curves = results.over_seeds(sweeps, rms=ERRORS, extra=closed_form)
  results.write_csv(curves, os.path.join(workdir, 'curves.csv'))
  if cfg.per_seed_csv:
    results.write_csv(results.long_table(sweeps), os.path.join(workdir, 'metrics.csv'))

  # -- figures and summary
  second = ('sigma_error_rms', 'RMS |sigma_n - sigma|') if cfg.dims == 1 else (
      'logdet_mean', 'mean log det Sigma_n')
  title = f'{cfg.dims}-D Gaussian refitted on M of its own samples ({cfg.estimator}), {cfg.seeds} seeds'
  plots.theory_panels(curves, [('mean_error_rms', 'RMS |mu_n - mu|'), second],
                      os.path.join(workdir, 'panels.png'), title)
  w2 = ('w2_sq_mean', 'mean W2^2 to the original') if cfg.dims == 1 else (
      'trace_mean', 'mean trace Sigma_n')
  plots.theory_panels(curves, [w2], os.path.join(workdir, 'w2.png'), title)
  text = results.summary(curves, SUMMARY_COLUMNS, generations=(1, 10, 100, 1000))
  results.write_text(os.path.join(workdir, 'summary.txt'), text + '\n')
  log(text)
  return curves
