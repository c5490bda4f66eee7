"""Generation-fits per second of every regime, side by side, on the Gaussian and the GMM.

  python -m benchmarks.regimes_throughput                     # CPU sizes (a few minutes)
  python -m benchmarks.regimes_throughput --gaussian_seeds=100000 --gmm_seeds=4096   # a GPU

What verify and curate cost beyond replace: drawing K (= 1 / keep_fraction, or
--candidates) times replace's samples and scoring them once. Each line is one
regime's whole recursive sweep through the driver (generation 0 and every chunk),
compile time measured apart and excluded; the ratio column is replace's rate over
the regime's, the expected cost K x sampling + one scoring pass on top of the fit.
"""

import os

import jax
from absl import app, flags

from benchmarks import timing
from collapse_jax.core import cli
from collapse_jax.families import gaussian, gmm

flags.DEFINE_integer('gaussian_seeds', 2000, 'Seeds of the Gaussian sweeps.')
flags.DEFINE_integer('gaussian_generations', 200, 'Generations of the Gaussian sweeps.')
flags.DEFINE_integer('gaussian_samples', 100, 'Samples M of the Gaussian.')
flags.DEFINE_integer('gaussian_dims', 1, 'Dimension of the Gaussian.')
flags.DEFINE_integer('gmm_seeds', 16, 'Seeds of the GMM sweeps.')
flags.DEFINE_integer('gmm_generations', 20, 'Generations of the GMM sweeps.')
flags.DEFINE_integer('cpu_devices', 0, 'Split a CPU into this many devices (0: one per core).')
FLAGS = flags.FLAGS

# (regime, its options): one value of its parameter each; curate with K = 4 candidates.
SETTINGS = (('replace', {}), ('accumulate', {'age_decays': (0.5,)}),
            ('augment', {'synthetic_ratios': (1.0,)}), ('verify', {'keep_fractions': (0.5,)}),
            ('verify', {'keep_fractions': (0.25,)}), ('curate', {'reward_scales': (1.0,)}))


def rates(config_of, family_of, sweep_of, generations: int):
  """{(regime, options): (fits per second, compile seconds)} of each setting."""
  out = {}
  for regime, options in SETTINGS:
    cfg = config_of(regime, options)
    sweep = sweep_of(cfg, regime)
    compile_s, warm_s = timing.sweep_seconds(family_of(cfg), sweep, generations)
    out[regime, str(options)] = (sweep.seeds * (generations + 1) / warm_s, compile_s)
  return out


def report(name, table):
  base = table['replace', '{}'][0]
  print(f'\n{name}')
  print(f'{"regime":12s} {"options":32s} {"fits/s":>12s} {"replace / it":>12s} {"compile s":>10s}')
  for (regime, options), (rate, compile_s) in table.items():
    print(f'{regime:12s} {options:32s} {rate:12.0f} {base / rate:12.2f} {compile_s:10.1f}')


def main(argv):
  del argv
  cli.split_cpu(FLAGS.cpu_devices or os.cpu_count() or 1)
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}')
  g, m = FLAGS.gaussian_generations, FLAGS.gaussian_samples
  report(f'Gaussian, d={FLAGS.gaussian_dims}, M={m}, {FLAGS.gaussian_seeds} seeds x {g} generations',
         rates(lambda regime, options: gaussian.GaussianConfig(
                   seeds=FLAGS.gaussian_seeds, generations=g, samples=(m,),
                   dims=FLAGS.gaussian_dims, regimes=(regime,), **options).validate(),
               gaussian.family, lambda cfg, regime: cfg.sweep(regime, m), g))
  g = FLAGS.gmm_generations
  report(f'GMM (the paper protocol), {FLAGS.gmm_seeds} seeds x {g} generations',
         rates(lambda regime, options: gmm.GMMConfig(
                   seeds=FLAGS.gmm_seeds, generations=g, regimes=(regime,), **options).validate(),
               gmm.family, lambda cfg, regime: cfg.sweep(regime), g))


if __name__ == '__main__':
  app.run(main)
