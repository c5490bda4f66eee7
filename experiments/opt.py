"""The paper's language-model experiment: OPT fine-tuned on WikiText-2, then for 10 generations
on text it generated itself (64-token prompts, 64 new tokens, 5-beam search).

  python -m experiments.opt --model=facebook/opt-125m   # the authors' main.py (--preset=paper), 5 seeds
  python -m experiments.opt --model=facebook/opt-125m --preset=paper-text         # the paper's text
  python -m experiments.opt --model=facebook/opt-125m --preset=paper-text-keep10  # 10% original kept
  python -m experiments.opt --preset=tiny                              # a small random OPT, CPU, offline
  python -m experiments.opt --preset=tiny --decoding=sample --regime=replace,verify,curate \
      --keep_fraction=0.5 --score=gen0   # blocks ranked by the generation-0 model's likelihood
  python -m experiments.opt --preset=tiny --decoding=sample --temperature=0.5,1,2  # a group each

verify and curate rank generated blocks by their log-likelihood under --score=gen0 or self;
they, and augment above 1, need --decoding=sample, as do --temperature, --top_k and --top_p
(each value, and each combination, a group of runs).

WikiText-2 and, for --preset=tiny, OPT's tokenizer come from the data directory (--data_dir, else
$COLLAPSE_JAX_DATA, else ~/.cache/collapse_jax); python -m collapse_jax.data download fills it.
"""

import dataclasses

from absl import flags

from collapse_jax.core import cli
from collapse_jax.families import lm

FLAGS = flags.FlagValues()
# Every flag from LMConfig's fields: those every experiment shares (--seeds, --regime,
# --keep_fraction, ..., --cpu_devices) and the language model's own.
cli.define_flags(FLAGS, lm.LMConfig, 'runs/opt', lm.PRESETS, preset_help=(
    "paper: the authors' released main.py (5 epochs, no original data, AdamW at 2e-5 with weight "
    'decay 0.01, cosine to 1e-6 stepped per epoch, batch 128, repetition penalty 3), as below; '
    "the paper's text, with the Hugging Face Trainer's optimiser and no repetition penalty: "
    f"paper-text: {lm.PRESETS['paper-text']}; paper-text-keep10: "
    f"{lm.PRESETS['paper-text-keep10']}; tiny: {lm.PRESETS['tiny']}. Flags given explicitly "
    'override the preset.'))


def config():
  """The config of --preset and the flags given; a preset's fraction of original data stays
  with --regime where the regimes given still take one."""
  cfg = cli.config_from_flags(FLAGS, lm.LMConfig, lm.PRESETS)
  preset = lm.PRESETS[FLAGS.preset]
  if (FLAGS['regime'].present and not FLAGS['real_fraction'].present
      and 'real_fractions' in preset and set(cfg.regimes) & {'mix', 'fresh'}):
    cfg = dataclasses.replace(cfg, real_fractions=preset['real_fractions'])
  return cfg


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""
  cli.main(FLAGS, lambda: lm.run(config(), FLAGS.workdir), argv)


if __name__ == '__main__':
  main()
