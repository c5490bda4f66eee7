"""A Gaussian kernel density estimator refitted on its own samples, on 2-D targets.

  python -m experiments.kde                 # moons, h = 0.1, N = 1,000, 1,000 seeds x 100 gens
  python -m experiments.kde --target=circles --bandwidth_rule=silverman
  python -m experiments.kde --regime=replace,accumulate-subsample,fresh --real_fraction=0.1
  python -m experiments.kde --target=blobs --regime=verify --score=truth --keep_fraction=0.5,0.9
  python -m experiments.kde --preset=small  # a CPU-sized run, about a minute
"""

from absl import flags

from collapse_jax.core import cli
from collapse_jax.families import kde

_D = kde.KDEConfig()
FLAGS = flags.FlagValues()
cli.define_common_flags(FLAGS, _D, 'runs/kde', kde.PRESETS)
flags.DEFINE_integer('samples', _D.samples,
                     'Samples N each generation draws and the next KDE stores.', flag_values=FLAGS)
flags.DEFINE_enum('target', _D.target, list(kde.TARGETS), 'The 2-D truth: three Gaussian blobs, '
                  "two moons, two circles or a swiss roll, each a shape plus N(0, noise^2 I).",
                  flag_values=FLAGS)
flags.DEFINE_float('noise', _D.noise, "The target's noise standard deviation (default: the "
                   "target's own: " + ', '.join(f'{k} {t.noise:g}' for k, t in kde.TARGETS.items())
                   + ').', flag_values=FLAGS)
flags.DEFINE_enum('bandwidth_rule', _D.bandwidth_rule, list(kde.RULES),
                  'fixed: --bandwidth every generation; scott or silverman: re-chosen from each '
                  "generation's training data (the two agree in 2-D).", flag_values=FLAGS)
flags.DEFINE_float('bandwidth', _D.bandwidth, 'The kernel standard deviation h, with '
                   '--bandwidth_rule=fixed.', flag_values=FLAGS)
flags.DEFINE_integer('heldout', _D.heldout, 'Real samples per seed, drawn once, scored by every '
                     "generation's KDE (NLL) and compared with its samples (MMD).",
                     flag_values=FLAGS)
flags.DEFINE_float('mmd_scale', _D.mmd_scale, "The MMD's Gaussian kernel length scale.",
                   flag_values=FLAGS)
flags.DEFINE_list('reward_target', [f'{v:g}' for v in _D.reward_target],
                  '--score=reward: the reward is -|x - c|^2 for this point c.', flag_values=FLAGS)

_FIELDS = {f: f for f in cli.COMMON + ('samples', 'target', 'noise', 'bandwidth_rule', 'bandwidth',
                                        'heldout', 'mmd_scale')}


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""

  def run():
    cfg = cli.preset_config(kde.KDEConfig, kde.PRESETS, FLAGS.preset, FLAGS, _FIELDS)
    kde.run(kde.KDEConfig(**{**vars(cfg), **cli.regime_fields(FLAGS, kde.KDEConfig),
                             'reward_target': cli.parse_floats('reward_target',
                                                               FLAGS.reward_target)}),
            FLAGS.workdir)
  cli.main(FLAGS, run, argv)


if __name__ == '__main__':
  main()
