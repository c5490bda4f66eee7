"""The paper's discrete theory, simulated: a categorical distribution re-estimated
from M of its own samples until it is absorbed in a single outcome.

  python -m experiments.discrete                         # Zipf over 20 outcomes, M = 100, 1,000 seeds
  python -m experiments.discrete --probs=0.5,0.3,0.15,0.05 --samples=20,100
  python -m experiments.discrete --preset=small          # a CPU-sized run in seconds

--generations is a limit: a sweep stops once every seed is absorbed in one outcome.
"""

from absl import flags

from collapse_jax.core import cli
from collapse_jax.families import discrete

_D = discrete.DiscreteConfig()
FLAGS = flags.FlagValues()
cli.define_common_flags(FLAGS, _D, 'runs/discrete', discrete.PRESETS)
flags.DEFINE_list('samples', [str(m) for m in _D.samples],
                  'Comma-separated sample sizes M: each generation counts M samples.',
                  flag_values=FLAGS)
flags.DEFINE_list('probs', list(_D.probs), 'Comma-separated probabilities of the true '
                  'distribution (weights are fine: divided by their sum, with a note when it '
                  'is not 1); empty: a Zipf law over --outcomes.', flag_values=FLAGS)
flags.DEFINE_integer('outcomes', _D.outcomes, 'Outcomes K of the Zipf law.', flag_values=FLAGS)
flags.DEFINE_float('zipf_exponent', _D.zipf_exponent, 'p_i proportional to i^-exponent.',
                   flag_values=FLAGS)
flags.DEFINE_float('tail', _D.tail, 'The tail: the least likely outcomes holding at most this '
                   'much of the original probability.', flag_values=FLAGS)
flags.DEFINE_list('rewards', [], '--score=reward: the reward of each outcome (empty: '
                  'i / (K - 1) for outcome i, the rarer the higher under a Zipf law).',
                  flag_values=FLAGS)
flags.DEFINE_bool('per_seed_csv', _D.per_seed_csv, 'Also write metrics.csv, one row per seed '
                  'and generation (large: about 80 MB per million rows).', flag_values=FLAGS)

_FIELDS = {f: f for f in cli.COMMON + ('samples', 'outcomes', 'zipf_exponent', 'tail',
                                        'per_seed_csv')}


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""

  def run():
    cfg = cli.preset_config(discrete.DiscreteConfig, discrete.PRESETS,
                            FLAGS.preset, FLAGS, _FIELDS)
    samples = FLAGS.samples if FLAGS['samples'].present else cfg.samples
    discrete.run(discrete.DiscreteConfig(**{**vars(cfg),
                                            **cli.regime_fields(FLAGS, discrete.DiscreteConfig),
                                            'samples': cli.parse_ints('samples', samples),
                                            'probs': cli.parse_floats('probs', FLAGS.probs),
                                            'rewards': cli.parse_floats('rewards', FLAGS.rewards)}),
                 FLAGS.workdir)
  cli.main(FLAGS, run, argv)


if __name__ == '__main__':
  main()
