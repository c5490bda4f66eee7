"""The paper's language-model experiment: OPT fine-tuned on WikiText-2, then for 10 generations
on text it generated itself (64-token prompts, 64 new tokens, 5-beam search).

  python -m experiments.opt --model=facebook/opt-125m                  # the authors' main.py, 5 seeds
  python -m experiments.opt --model=facebook/opt-125m --preset=paper   # the paper's text: no original data
  python -m experiments.opt --model=facebook/opt-125m --preset=keep10  # the text: 10% original data kept
  python -m experiments.opt --preset=tiny                              # a small random OPT, CPU, offline
  python -m experiments.opt --preset=tiny --decoding=sample --regime=replace,verify,curate \
      --keep_fraction=0.5 --score=gen0   # blocks ranked by the generation-0 model's likelihood

verify and curate rank generated blocks by their log-likelihood under --score=gen0 or self;
they, and augment above 1, need --decoding=sample.

WikiText-2 and, for --preset=tiny, OPT's tokenizer come from the data directory (--data_dir, else
$COLLAPSE_JAX_DATA, else ~/.cache/collapse_jax); python -m collapse_jax.data download fills it.
"""

import dataclasses

from absl import flags

from collapse_jax import data
from collapse_jax.core import cli
from collapse_jax.families import lm

_D = lm.LMConfig()
FLAGS = flags.FlagValues()
# The flags every experiment shares (--seeds, --regime, --keep_fraction, ..., --cpu_devices),
# from the config's fields; the language model's own below.
cli.define_flags(FLAGS, lm.LMConfig, 'runs/opt', lm.PRESETS, preset_help=(
    "official: the authors' released main.py (5 epochs, no original data, AdamW at 2e-5 with "
    'weight decay 0.01, cosine to 1e-6 stepped per epoch, batch 128, repetition penalty 3), as '
    "below; the paper's text, with the Hugging Face Trainer's optimiser and no repetition "
    'penalty: paper: ' + str(lm.PRESETS['paper']) + '; keep10: ' + str(lm.PRESETS['keep10'])
    + '; tiny: ' + str(lm.PRESETS['tiny']) + '. Flags given explicitly override the preset.'))
flags.DEFINE_string('model', _D.model, "Hub name or local Hugging Face OPT directory; 'tiny': "
                    'a small randomly initialised OPT.', flag_values=FLAGS)
flags.DEFINE_string('tokenizer', _D.tokenizer, 'Tokenizer directory or hub name (default: the '
                    "model's; for --model=tiny, the data directory's opt-125m/).",
                    flag_values=FLAGS)
data.define_flag(FLAGS)  # WikiText-2 in its wikitext-2-raw-v1/, or a directory of its files itself
flags.DEFINE_enum('train_split', _D.train_split, ['train', 'validation', 'test'], 'Original training data.',
                  flag_values=FLAGS)
flags.DEFINE_enum('valid_split', _D.valid_split, ['train', 'validation', 'test'],
                  'Data that chooses the best epoch.', flag_values=FLAGS)
flags.DEFINE_integer('parallel_seeds', _D.parallel_seeds, 'Seeds trained and decoded at once, '
                     'vmapped (0: all, but one at a time on a CPU, where that is faster); lower '
                     'it when they do not fit in memory. A run may resume with another value.',
                     flag_values=FLAGS)
flags.DEFINE_integer('epochs', _D.epochs, 'Fine-tuning epochs per generation (the best is kept).',
                     flag_values=FLAGS)
flags.DEFINE_integer('batch', _D.batch, 'Blocks per training step, over all devices.',
                     flag_values=FLAGS)
flags.DEFINE_float('learning_rate', _D.learning_rate, 'AdamW peak learning rate.',
                   flag_values=FLAGS)
flags.DEFINE_float('weight_decay', _D.weight_decay, 'AdamW weight decay (decoupled, times the '
                   'learning rate, as torch.optim.AdamW).', flag_values=FLAGS)
flags.DEFINE_enum('schedule', _D.schedule, list(lm.opt.SCHEDULES), 'After the warm-up, from '
                  '--learning_rate down to --min_learning_rate: cosine, stepped once per epoch '
                  "(torch's CosineAnnealingLR(T_max=epochs) under Lightning, as main.py; the last "
                  'epoch stays above the minimum), or linear over the steps (the Hugging Face '
                  "Trainer's, with --min_learning_rate=0).", flag_values=FLAGS)
flags.DEFINE_float('min_learning_rate', _D.min_learning_rate, 'Where --schedule ends '
                   "(CosineAnnealingLR's eta_min).", flag_values=FLAGS)
flags.DEFINE_integer('warmup_steps', _D.warmup_steps, 'Linear warm-up steps.', flag_values=FLAGS)
flags.DEFINE_integer('block', _D.block, 'Tokens per block (and per prompt).', flag_values=FLAGS)
flags.DEFINE_integer('new_tokens', _D.new_tokens, 'Tokens generated per prompt (exactly).',
                     flag_values=FLAGS)
flags.DEFINE_integer('beams', _D.beams, 'Beam width.', flag_values=FLAGS)
flags.DEFINE_float('repetition_penalty', _D.repetition_penalty, 'CTRL repetition penalty '
                   "(1: none, the paper's text; it ablates 2; main.py uses 3).", flag_values=FLAGS)
flags.DEFINE_enum('decoding', _D.decoding, ['beam', 'greedy', 'sample'], 'How new text is '
                  'made: beam search (the paper), greedy, or sampling.', flag_values=FLAGS)
flags.DEFINE_float('temperature', _D.temperature, 'Sampling temperature (--decoding=sample).',
                   flag_values=FLAGS)
flags.DEFINE_integer('top_k', _D.top_k, 'Sample among the k most likely tokens (0: all).',
                     flag_values=FLAGS)
flags.DEFINE_float('top_p', _D.top_p, 'Sample among the most likely tokens holding this probability.',
                   flag_values=FLAGS)
flags.DEFINE_bool('from_previous', _D.from_previous, 'Start each generation from the previous '
                  "generation's weights instead of the pretrained ones.", flag_values=FLAGS)
flags.DEFINE_integer('train_blocks', _D.train_blocks, 'Use only the first N training blocks (0: all).',
                     flag_values=FLAGS)
flags.DEFINE_integer('eval_blocks', _D.eval_blocks, 'Validation and test blocks measured (0: all).',
                     flag_values=FLAGS)
flags.DEFINE_integer('eval_batch', _D.eval_batch, 'Blocks per perplexity batch.', flag_values=FLAGS)
flags.DEFINE_integer('gen_batch', _D.gen_batch, 'Prompts per beam-search batch.', flag_values=FLAGS)
flags.DEFINE_string('prompt', _D.prompt, 'The prompt whose continuation is kept per generation.',
                    flag_values=FLAGS)
flags.DEFINE_enum('dtype', _D.dtype, ['float32', 'bfloat16'], 'Compute dtype (bfloat16 for accelerators).',
                  flag_values=FLAGS)

_FIELDS = ('model', 'tokenizer', 'data_dir', 'train_split', 'valid_split', 'parallel_seeds',
           'epochs', 'batch', 'learning_rate', 'weight_decay', 'warmup_steps', 'schedule',
           'min_learning_rate', 'block', 'new_tokens', 'beams', 'repetition_penalty', 'decoding',
           'temperature', 'top_k', 'top_p', 'from_previous', 'train_blocks', 'eval_blocks',
           'eval_batch', 'gen_batch', 'prompt', 'dtype')  # the flags defined above, by hand


def config():
  """The config of --preset and the flags given; a preset's fraction of original data stays
  with --regime where the regimes given still take one."""
  cfg = cli.config_from_flags(FLAGS, lm.LMConfig, lm.PRESETS, _FIELDS)
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
