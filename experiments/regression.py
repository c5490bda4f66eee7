"""Linear regression refitted on its own labels: model collapse in closed form.

  python -m experiments.regression                  # d = 100, T = 500, 1,000 seeds x 100 gens
  python -m experiments.regression --preset=small   # d = 10, T = 50, OLS and ridge 0.1: a CPU run
  python -m experiments.regression --ridge=0,0.1,1 --alpha=1.5   # penalties in one program
  python -m experiments.regression --inputs=same --regime=replace,accumulate,mix --real_fraction=0.1

Generation 0 fits least squares to T samples (x, x w* + noise); generation n to T samples
labelled by generation n - 1's fit plus fresh noise. Under replace the test error grows by
sigma^2 d / (T - d - 1) a generation; kept, the data hold it below pi^2/6 times the first.
"""

from absl import flags

from collapse_jax.core import cli
from collapse_jax.families import regression

FLAGS = flags.FlagValues()
cli.define_flags(FLAGS, regression.RegressionConfig, 'runs/regression', regression.PRESETS)


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""
  cli.experiment_main(FLAGS, regression.RegressionConfig, regression.PRESETS, regression.run,
                      argv)


if __name__ == '__main__':
  main()
