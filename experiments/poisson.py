"""A family of your own: a Poisson rate refitted on its own samples (docs/extending.md).

  python -m experiments.poisson                                     # replace, 1,000 seeds
  python -m experiments.poisson --regime=replace,accumulate,mix,fresh,verify,curate,augment \
      --real_fraction=0.1 --workdir=runs/poisson-all                # every regime, one command

The rate is re-estimated from M of the last fit's samples: a martingale whose variance
grows by rate / M a generation, E (rate_n - rate)^2 = n rate / M after n fits.
"""

import dataclasses

import jax
import jax.numpy as jnp
from absl import flags

from collapse_jax.core import cli, experiment, protocol, validation
from collapse_jax.core.settings import setting


@dataclasses.dataclass(frozen=True)
class PoissonConfig(experiment.SweepConfig):  # seeds, generations, regimes, ... and their flags
  samples: int = 20
  rate: float = setting(4.0, 'The true rate.')
  checkpoint_every: int = 50

  def validate(self) -> 'PoissonConfig':
    self.validate_sweep()
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
  exp = experiment.Experiment('poisson', lambda: family(cfg), summary=('rate', 'distinct'),
                              generations=(1, 10))
  return experiment.run_experiment(exp, cfg, workdir, progress, log).table


PRESETS = {'paper': {}}
FLAGS = flags.FlagValues()
cli.define_flags(FLAGS, PoissonConfig, 'runs/poisson', PRESETS)


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""
  cli.experiment_main(FLAGS, PoissonConfig, PRESETS, run, argv)


if __name__ == '__main__':
  main()
