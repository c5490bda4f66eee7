"""A family of your own: a Poisson rate refitted on its own samples (docs/extending.md).

  python -m experiments.poisson                                     # replace, 1,000 seeds
  python -m experiments.poisson --regime=replace,accumulate,mix,fresh,verify,curate,augment \
      --real_fraction=0.1 --workdir=runs/poisson-all                # every regime, one command

The rate is re-estimated from M of the last fit's samples: a martingale whose variance
grows by rate / M a generation, E (rate_n - rate)^2 = n rate / M after n fits.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
from absl import flags

from collapse_jax.core import cli, driver, files, protocol, regimes, results, validation


@dataclasses.dataclass(frozen=True)
class PoissonConfig(regimes.Options):  # Options: verify's, curate's, ... flags and score
  seeds: int = 1000
  generations: int = 100
  samples: int = 20
  rate: float = 4.0
  regimes: tuple[str, ...] = ('replace',)
  real_fractions: tuple[float, ...] = (0.0,)
  checkpoint_every: int = 50
  first_seed: int = 0

  def sweep(self, regime: str) -> protocol.Sweep:
    return protocol.Sweep(regime, self.seeds, self.generations, self.samples, self.real_fractions,
                          self.first_seed, **self.sweep_fields(self.regimes))

  def validate(self) -> 'PoissonConfig':
    validation.validate_sweep(self.seeds, self.generations, self.samples, self.regimes,
                              self.real_fractions)
    validation.check_fields(self, [('rate', self.rate > 0, 'must be positive')])
    validation.validate_options(self, family(self))
    return self


def log_pmf(rate, x_Nx1):
  k_N = x_Nx1[:, 0]
  return k_N * jnp.log(rate) - rate - jax.scipy.special.gammaln(k_N + 1)


def family(cfg: PoissonConfig) -> protocol.Family:
  """Every function is for one run; x is N x 1 counts as float32, the rate a scalar."""
  sample = lambda rate, key, n: jax.random.poisson(key, rate, (n, 1)).astype(jnp.float32)  # noqa: E731

  def fit(x_Nx1, w_N, key):  # the weighted mean; rows of weight 0 are padding
    rate = jnp.sum(w_N * x_Nx1[:, 0]) / jnp.sum(w_N)
    return jnp.maximum(rate, 1e-30), {}  # a rate of 0 (all samples 0) is a point mass at 0

  def evaluate(rate, synth_Nx1, ref):
    return {'rate': rate, 'rate_error': rate - cfg.rate, 'drift': rate - ref['rate0'],
            'distinct': jnp.sum(jnp.bincount(synth_Nx1[:, 0].astype(jnp.int32), length=64) > 0)}

  return protocol.Family(
      draw_real=lambda key, n: sample(cfg.rate, key, n), fit=fit, sample=sample,
      reference=lambda rate0, key: {'rate0': rate0}, evaluate=evaluate,
      log_density=log_pmf, true_log_density=lambda x_Nx1: log_pmf(cfg.rate, x_Nx1),
      reward=lambda x_Nx1: -(x_Nx1[:, 0] - cfg.rate) ** 2)


def run(cfg: PoissonConfig, workdir: str, progress: bool = True, log=print):
  cfg.validate()
  validation.check_config(workdir, {**json.loads(json.dumps(dataclasses.asdict(cfg))),
                                    'experiment': 'poisson'})
  sweeps = [(cfg.sweep(r), driver.run(family(cfg), cfg.sweep(r),
                                      os.path.join(workdir, 'checkpoints', r),
                                      cfg.checkpoint_every, progress)) for r in cfg.regimes]
  results.write_csv(results.long_table(sweeps), os.path.join(workdir, 'metrics.csv'))
  text = results.summary(results.over_seeds(sweeps), ('rate', 'distinct'), generations=(1, 10))
  files.write_text(os.path.join(workdir, 'summary.txt'), text + '\n')
  log(text)


_D = PoissonConfig()
FLAGS = flags.FlagValues()
cli.define_common_flags(FLAGS, _D, 'runs/poisson', {'paper': {}})
flags.DEFINE_integer('samples', _D.samples, 'Samples each generation is fitted on.',
                     flag_values=FLAGS)
flags.DEFINE_float('rate', _D.rate, 'The true rate.', flag_values=FLAGS)


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""
  def config():
    fields = {f: FLAGS[f].value for f in cli.COMMON + ('samples', 'rate')}
    return PoissonConfig(**fields, **cli.regime_fields(FLAGS, PoissonConfig))
  cli.main(FLAGS, lambda: run(config(), FLAGS.workdir), argv)


if __name__ == '__main__':
  main()
