"""The paper's discrete theory, simulated: a categorical distribution re-estimated
from M of its own samples until it is absorbed in a single outcome.

  python -m experiments.discrete                         # Zipf over 20 outcomes, M = 100, 1,000 seeds
  python -m experiments.discrete --probs=0.5,0.3,0.15,0.05 --samples=20,100
  python -m experiments.discrete --preset=small          # a CPU-sized run in seconds
"""

import os

from absl import app, flags, logging

from collapse_jax import cli, discrete, driver

_D = discrete.DiscreteConfig()
FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', 'runs/discrete', 'Where checkpoints, tables and figures go; '
                    'rerunning with the same flags resumes there.')
flags.DEFINE_enum('preset', 'paper', ['paper', 'small'], 'paper: the defaults below; '
                  f'small: {discrete.SMALL}. Flags given explicitly override the preset.')
flags.DEFINE_integer('seeds', _D.seeds, 'Independent chains, all in one program.')
flags.DEFINE_integer('generations', _D.generations, 'Generation limit; a sweep stops earlier '
                     'once every seed is absorbed in one outcome.')
flags.DEFINE_list('samples', [str(m) for m in _D.samples],
                  'Comma-separated sample sizes M: each generation counts M samples.')
flags.DEFINE_list('probs', list(_D.probs), 'Comma-separated probabilities of the true '
                  'distribution (normalised); empty: a Zipf law over --outcomes.')
flags.DEFINE_integer('outcomes', _D.outcomes, 'Outcomes K of the Zipf law.')
flags.DEFINE_float('zipf_exponent', _D.zipf_exponent, 'p_i proportional to i^-exponent.')
flags.DEFINE_float('tail', _D.tail, 'The tail: the least likely outcomes holding at most this '
                   'much of the original probability.')
flags.DEFINE_list('regime', list(_D.regimes), f'Comma-separated regimes: {", ".join(driver.REGIMES)}.')
flags.DEFINE_list('real_fraction', [str(f) for f in _D.real_fractions],
                  'Comma-separated fractions of real data, for the regimes mix and fresh.')
flags.DEFINE_integer('checkpoint_every', _D.checkpoint_every, 'Generations between checkpoints.')
flags.DEFINE_integer('cpu_devices', os.cpu_count() or 1, 'On a CPU, split it into this many '
                     'devices so the batch of runs uses every core (0: leave it as it is).')
flags.DEFINE_integer('first_seed', _D.first_seed, 'Seeds are first_seed, first_seed + 1, ...')
flags.DEFINE_bool('per_seed_csv', _D.per_seed_csv, 'Also write metrics.csv, one row per seed '
                  'and generation (large: about 80 MB per million rows).')

_FIELDS = {f: f for f in ('seeds', 'generations', 'outcomes', 'zipf_exponent', 'tail',
                          'checkpoint_every', 'first_seed', 'per_seed_csv', 'samples')}


def main(argv):
  del argv
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # checkpointing is chatty at INFO
  cli.split_cpu(FLAGS.cpu_devices)
  try:
    cfg = cli.preset_config(discrete.DiscreteConfig, {'paper': {}, 'small': discrete.SMALL},
                            FLAGS.preset, FLAGS, _FIELDS)
    cfg = discrete.DiscreteConfig(**{
        **vars(cfg), 'regimes': tuple(FLAGS.regime),
        'samples': cli.parse_ints('samples', FLAGS.samples if FLAGS['samples'].present
                                  else cfg.samples),
        'probs': cli.parse_floats('probs', FLAGS.probs),
        'real_fractions': cli.parse_floats('real_fraction', FLAGS.real_fraction)})
    discrete.run(cfg, FLAGS.workdir)
  except driver.ConfigError as e:
    cli.fail(e)


if __name__ == '__main__':
  app.run(main)
