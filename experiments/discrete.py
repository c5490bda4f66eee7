"""The paper's discrete theory, simulated: a categorical distribution re-estimated
from M of its own samples until it is absorbed in a single outcome.

  python -m experiments.discrete                         # Zipf over 20 outcomes, M = 100, 1,000 seeds
  python -m experiments.discrete --probs=0.5,0.3,0.15,0.05 --samples=20,100
  python -m experiments.discrete --preset=small          # a CPU-sized run in seconds
  python -m experiments.discrete --preset=sampling       # temperature x top_k (nucleus: x top_p)

--generations is a limit: a sweep stops once every seed is absorbed in one outcome.
"""

from absl import flags

from collapse_jax.core import cli
from collapse_jax.families import discrete

FLAGS = flags.FlagValues()
cli.define_flags(FLAGS, discrete.DiscreteConfig, 'runs/discrete', discrete.PRESETS)


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""
  cli.experiment_main(FLAGS, discrete.DiscreteConfig, discrete.PRESETS, discrete.run, argv)


if __name__ == '__main__':
  main()
