"""Learned schedules: a knob's value per generation optimised through the recursive loop.

  python -m experiments.schedule                       # golden: the real weight, about a minute
  python -m experiments.schedule --preset=golden_schedule      # one real weight a generation
  python -m experiments.schedule --preset=temperature  # the MLE Gaussian's sampling temperature
  python -m experiments.schedule --preset=regression   # regression's real weight
  python -m experiments.schedule --family=gaussian --family_options=known_std=true \
      --regime=fresh --real_fraction=0.5 --objective=mean_error --schedule=constant \
      --knobs=real_weight --seeds=256 --steps=300 --workdir=runs/schedule
"""

from absl import flags

from collapse_jax.core import cli, schedules

FLAGS = flags.FlagValues()
cli.define_flags(FLAGS, schedules.ScheduleConfig, 'runs/schedule', schedules.PRESETS,
                 schedules.PRESET_HELP)


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""
  cli.experiment_main(FLAGS, schedules.ScheduleConfig, schedules.PRESETS, schedules.run, argv)


if __name__ == '__main__':
  main()
