"""The paper's language-model experiment: OPT fine-tuned on WikiText-2, then for 10 generations
on text it generated itself (64-token prompts, 64 new tokens, 5-beam search).

  python -m experiments.opt --model=facebook/opt-125m                  # the authors' main.py, 5 seeds
  python -m experiments.opt --model=facebook/opt-125m --preset=paper   # the paper's text: no original data
  python -m experiments.opt --model=facebook/opt-125m --preset=keep10  # the text: 10% original data kept
  python -m experiments.opt --preset=tiny                              # a small random OPT, CPU, offline
  python -m experiments.opt --preset=tiny --decoding=sample --regime=replace,verify,curate \
      --keep_fraction=0.5 --score=gen0   # blocks ranked by the generation-0 model's likelihood

WikiText-2 and, for --preset=tiny, OPT's tokenizer come from the data directory (--data_dir, else
$COLLAPSE_JAX_DATA, else ~/.cache/collapse_jax); python -m collapse_jax.data download fills it.
"""

from absl import flags

from collapse_jax import data
from collapse_jax.core import cli
from collapse_jax.families import lm

_D = lm.LMConfig()
FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', 'runs/opt', 'Where checkpoints, tables and figures go; rerunning '
                    'with the same flags resumes there.', flag_values=FLAGS)
flags.DEFINE_enum('preset', 'official', list(lm.PRESETS), "official: the authors' released "
                  'main.py (5 epochs, no original data, AdamW at 2e-5 with weight decay 0.01, '
                  'cosine to 1e-6 stepped per epoch, batch 128, repetition penalty 3), as below; '
                  "the paper's text, with the Hugging Face Trainer's optimiser and no repetition "
                  'penalty: paper: ' + str(lm.PRESETS['paper']) + '; keep10: '
                  + str(lm.PRESETS['keep10']) + '; tiny: ' + str(lm.PRESETS['tiny'])
                  + '. Flags given explicitly override the preset.', flag_values=FLAGS)
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
flags.DEFINE_integer('seeds', _D.seeds, 'Independent runs.', flag_values=FLAGS)
flags.DEFINE_integer('first_seed', _D.first_seed, 'Seeds are first_seed, first_seed + 1, ...',
                     flag_values=FLAGS)
flags.DEFINE_integer('parallel_seeds', _D.parallel_seeds, 'Seeds trained and decoded at once, '
                     'vmapped (0: all, but one at a time on a CPU, where that is faster); lower '
                     'it when they do not fit in memory. A run may resume with another value.',
                     flag_values=FLAGS)
flags.DEFINE_integer('generations', _D.generations, 'Generations after the first.',
                     flag_values=FLAGS)
flags.DEFINE_list('regime', list(_D.regimes), 'Comma-separated regimes: replace, accumulate, '
                  'accumulate-subsample, mix, fresh, verify, curate, augment (verify and curate '
                  'rank generated blocks by their log-likelihood under --score=gen0 or self; '
                  'they and augment above 1 need --decoding=sample).', flag_values=FLAGS)
flags.DEFINE_list('real_fraction', [str(f) for f in _D.real_fractions],
                  'Comma-separated fractions of original blocks, for mix and fresh.',
                  flag_values=FLAGS)
cli.define_regime_flags(FLAGS, _D)
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
flags.DEFINE_integer('cpu_devices', 0, 'On a CPU, split it into this many devices (0: one).',
                     flag_values=FLAGS)
cli.define_process_flags(FLAGS)

_FIELDS = {f: f for f in ('model', 'tokenizer', 'data_dir', 'train_split', 'valid_split', 'seeds',
                          'first_seed', 'parallel_seeds', 'generations', 'epochs', 'batch', 'learning_rate',
                          'weight_decay', 'warmup_steps', 'schedule', 'min_learning_rate',
                          'block', 'new_tokens', 'beams',
                          'repetition_penalty', 'decoding', 'temperature', 'top_k', 'top_p',
                          'from_previous', 'train_blocks', 'eval_blocks',
                          'eval_batch', 'gen_batch', 'prompt', 'dtype')}


def main(argv=None):
  """Runs the experiment with command line `argv` (default: sys.argv)."""

  def run():
    cfg = cli.preset_config(lm.LMConfig, lm.PRESETS, FLAGS.preset, FLAGS, _FIELDS)
    fields = dict(vars(cfg))
    if FLAGS['regime'].present or 'regimes' not in lm.PRESETS[FLAGS.preset]:
      fields['regimes'] = tuple(FLAGS.regime)
    if FLAGS['real_fraction'].present or 'real_fractions' not in lm.PRESETS[FLAGS.preset]:
      fields['real_fractions'] = cli.parse_floats('real_fraction', FLAGS.real_fraction)
    elif not set(fields['regimes']) & {'mix', 'fresh'}:
      fields['real_fractions'] = (0.0,)  # the preset's fraction, for regimes that take none
    options = cli.regime_fields(FLAGS, lm.LMConfig)
    fields.update({k: v for k, v in options.items() if k not in ('regimes', 'real_fractions')})
    lm.run(lm.LMConfig(**fields), FLAGS.workdir)
  cli.main(FLAGS, run, argv)


if __name__ == '__main__':
  main()
