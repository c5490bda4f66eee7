"""The language-model experiment's settings: LMConfig, its checks and its presets."""

import dataclasses
import json

import jax

from collapse_jax import data
from collapse_jax.core import knobs, protocol, regimes, validation
from collapse_jax.core.settings import setting
from collapse_jax.data import wikitext
from collapse_jax.nets import opt_train

# The paper's Example 1 prompt.
PROMPT = ('some started before 1360 \u2014 was typically accomplished by a master mason and a small '
          'team of itinerant masons, supplemented by local parish labourers, according to Poyntz '
          'Wright. But other authors reject this model, suggesting instead that leading architects '
          'designed the parish church towers based on early examples of Perpendicular')


@dataclasses.dataclass(frozen=True)
class LMConfig(regimes.Options):
  """The language-model experiment; defaults are the authors' released code (main.py): the
  paper's no-original-data setting with main.py's optimiser, schedule and repetition penalty.

  verify and curate rank generated blocks by their mean token log-likelihood under the
  generation-0 model (gen0, the default) or the model being measured (self): the per-block
  perplexities the experiment reports. A regime that needs more blocks than there are prompts
  (verify, curate, augment with a ratio above 1) continues each prompt again, which takes
  --decoding=sample (beam search would repeat itself). Sampled text may be tempered and
  truncated (the knobs temperatures, top_ks, top_ps: each value, and each combination, a group
  of runs in a folder of its own, `folder`).
  """
  DEFAULT_SCORE = 'gen0'
  model: str = setting('facebook/opt-125m', "Hub name or local Hugging Face OPT directory; 'tiny':"
                                            ' a small randomly initialised OPT.')
  tokenizer: str = setting('', "Tokenizer directory or hub name (default: the model's; for "
                               "--model=tiny, the data directory's opt-125m/).")
  data_dir: str = setting('', data.DATA_DIR_HELP)
  train_split: str = setting('train', 'Original training data.', choices=wikitext.SPLITS)
  valid_split: str = setting('validation', 'Data that chooses the best epoch.',
                                           choices=wikitext.SPLITS)
  seeds: int = 5
  first_seed: int = 0
  parallel_seeds: int = setting(0, 'Seeds trained and decoded at once, vmapped (0: all, but one at'
                                   ' a time on a CPU, where that is faster); lower it when they do'
                                   ' not fit in memory. A run may resume with another value.')
  generations: int = 10  # after the first
  regimes: tuple[str, ...] = ('replace',)
  real_fractions: tuple[float, ...] = (0.0,)
  epochs: int = setting(5, 'Fine-tuning epochs per generation (the best is kept).')
  batch: int = setting(128, 'Blocks per training step, over all devices.')
  learning_rate: float = setting(2e-5, 'AdamW peak learning rate.')
  weight_decay: float = setting(0.01, 'AdamW weight decay (decoupled, times the learning rate, as '
                                      'torch.optim.AdamW).')
  warmup_steps: int = setting(0, 'Linear warm-up steps.')
  schedule: str = setting('cosine', 'After the warm-up, from --learning_rate down to '
                                    "--min_learning_rate: cosine, stepped once per epoch (torch's "
                                    'CosineAnnealingLR(T_max=epochs) under Lightning, as main.py; '
                                    'the last epoch stays above the minimum), or linear over the '
                                    "steps (the Hugging Face Trainer's, with "
                                    '--min_learning_rate=0).', choices=opt_train.SCHEDULES)
  min_learning_rate: float = setting(1e-6, "Where --schedule ends (CosineAnnealingLR's eta_min).")
  block: int = setting(64, 'Tokens per block (and per prompt).')
  new_tokens: int = setting(64, 'Tokens generated per prompt (exactly).')
  beams: int = setting(5, 'Beam width.')
  repetition_penalty: float = setting(3.0, "CTRL repetition penalty (1: none, the paper's text; it"
                                           ' ablates 2; main.py uses 3).')
  decoding: str = setting('beam', 'How new text is made: beam search (the paper), greedy, or '
                                  'sampling (--temperature, --top_k, --top_p: each value a group '
                                  'of runs).', choices=('beam', 'greedy', 'sample'))
  from_previous: bool = setting(False, "Start each generation from the previous generation's "
                                       'weights instead of the pretrained ones.')
  train_blocks: int = setting(0, 'Use only the first N training blocks (0: all).')
  eval_blocks: int = setting(0, 'Validation and test blocks measured (0: all).')
  eval_batch: int = setting(64, 'Blocks per perplexity batch.')
  gen_batch: int = setting(64, 'Prompts per beam-search batch.')
  prompt: str = setting(PROMPT, 'The prompt whose continuation is kept per generation.')
  dtype: str = setting('float32', 'Compute dtype (bfloat16 for accelerators).',
                                  choices=('float32', 'bfloat16'))

  def validate(self) -> 'LMConfig':
    validation.validate_sweep(self.seeds, self.generations, 1, self.regimes,
                              self.real_fractions, min_samples=1)  # the data's size: on loading
    devices = jax.device_count()
    checks = [
        ('epochs', self.epochs >= 1, 'must be at least 1'),
        ('batch', self.batch >= 1 and self.batch % devices == 0,
         f'must be a positive multiple of the {devices} devices'),
        ('eval_batch', self.eval_batch >= 1 and self.eval_batch % devices == 0,
         f'must be a positive multiple of the {devices} devices'),
        ('gen_batch', self.gen_batch >= 1 and self.gen_batch % devices == 0,
         f'must be a positive multiple of the {devices} devices'),
        ('learning_rate', self.learning_rate > 0, 'must be positive'),
        ('weight_decay', self.weight_decay >= 0, 'must be non-negative'),
        ('warmup_steps', self.warmup_steps >= 0, 'must be non-negative'),
        ('schedule', self.schedule in opt_train.SCHEDULES,
         f'must be one of {", ".join(opt_train.SCHEDULES)}'),
        ('min_learning_rate', 0 <= self.min_learning_rate <= self.learning_rate,
         f'must be in [0, --learning_rate ({self.learning_rate:g})]'),
        ('block', self.block >= 2, 'must be at least 2'),
        ('new_tokens', self.new_tokens >= 2, 'must be at least 2'),
        ('beams', self.beams >= 1, 'must be at least 1'),
        ('repetition_penalty', self.repetition_penalty > 0, 'must be positive'),
        ('decoding', self.decoding in ('beam', 'greedy', 'sample'), 'must be beam, greedy or sample'),
        ('train_blocks', self.train_blocks >= 0, 'must be non-negative'),
        ('eval_blocks', self.eval_blocks >= 0, 'must be non-negative'),
        ('train_split', self.train_split in wikitext.SPLITS, f'must be one of {wikitext.SPLITS}'),
        ('valid_split', self.valid_split in wikitext.SPLITS, f'must be one of {wikitext.SPLITS}'),
        ('dtype', self.dtype in ('float32', 'bfloat16'), 'must be float32 or bfloat16'),
        ('first_seed', self.first_seed >= 0, 'must be non-negative'),
        ('parallel_seeds', self.parallel_seeds >= 0, 'must be non-negative'),
        ('new_tokens', self.new_tokens == self.block
         or set(self.regimes) <= {'replace', 'verify', 'curate'},
         f'must equal --block ({self.block}) when generated blocks are mixed with original ones'),
        ('age_decays', tuple(self.age_decays) == (1.0,),
         'must be 1: the language model fine-tunes on its blocks unweighted'),
        ('decoding', self.decoding == 'sample' or not any(
            regimes.get(r).candidates(1000, self.values(r), self.candidates) > 1000
            for r in self.regimes if r in regimes.REGIMES),
         'must be sample for a regime that continues a prompt more than once (verify, curate, '
         'augment with a ratio above 1)')]
    validation.check_fields(self, checks)
    _check_knobs(self)
    validation.validate_options(self, SCORES + knobs.SAMPLING)
    return self

  def values(self, regime: str) -> tuple[float, ...]:
    """The values of a regime's parameter: one setting each."""
    return protocol.Sweep(regime, 1, 1, 1, self.real_fractions, **self.sweep_fields(())).fractions

  def sweep(self, regime: str, value: float, blocks: int) -> protocol.Sweep:
    """The runs of one setting (a regime and one value of its parameter) over `blocks` prompts."""
    parameter = regimes.get(regime).parameter
    fields = self.sweep_fields(self.regimes)
    fields['settings'] = tuple((p, (value,) if p == parameter else v) for p, v in fields['settings'])
    reals = (value,) if parameter == 'real_fraction' else (0.0,)
    return protocol.Sweep(regime, self.seeds, self.generations, blocks, reals, self.first_seed,
                          **fields, knobs=self.knobs_for(regime, self.regimes))

  def record(self) -> dict:
    """config.json's content: the fields that say what the run is (not where its files are, nor
    how many seeds run at once), as JSON values. A knob left at its default is left out, and
    a sampling knob so left is recorded as runs before knobs recorded it, so their workdirs
    resume."""
    where = {'tokenizer', 'data_dir', 'parallel_seeds'}
    off = {k for k in knobs.KNOBS if knobs.at_default(k, getattr(self, knobs.FIELDS[k]))}
    fields = json.loads(json.dumps(dataclasses.asdict(self)))
    fields = {k: v for k, v in fields.items()
              if k not in where | {knobs.FIELDS[name] for name in off}}
    return {**fields, **{k: v for k, v in BEFORE_KNOBS.items() if k in off}}

  @property
  def train(self) -> opt_train.TrainConfig:
    return opt_train.TrainConfig(self.learning_rate, self.batch, self.weight_decay,
                                 self.warmup_steps, self.schedule, self.min_learning_rate, self.epochs)


# The sampling settings as LMConfig recorded them before they were knobs (scalar fields).
BEFORE_KNOBS = {'temperature': 1.0, 'top_k': 0, 'top_p': 1.0}


def _check_knobs(cfg: LMConfig) -> None:
  """The knobs the language model takes: the sampling ones, with --decoding=sample, each value
  naming a folder of its own; not real_weight (it fine-tunes on its blocks unweighted) nor a
  verifier's (it has no biased verifier)."""
  refused = {'weight': 'the language model fine-tunes on its blocks unweighted',
             'verifier': 'the language model has no biased verifier (--score=verifier)'}
  for name, values in cfg.knob_settings():
    acts_on = knobs.KNOBS[name].acts_on
    if acts_on in refused:
      raise validation.ConfigError(name, f'must be left unset: {refused[acts_on]}')
    if cfg.decoding != 'sample':
      raise validation.ConfigError(name, f'applies only to --decoding=sample, not {cfg.decoding}')
    if len({f'{v:g}' for v in values}) < len(set(values)):  # (repeats: validate_knobs)
      raise validation.ConfigError(name, 'values must differ in their first 6 significant digits, '
                                   "which name each group's folder")


def folder(regime: str, value: float, knob_values: dict) -> str:
  """A group of runs' folder: the regime, its parameter's value (unless quiet) and the value of
  each knob the run sets (none: the folder runs before knobs had)."""
  name = regime if regimes.get(regime).quiet(value) else f'{regime}_{value:g}'
  return name + ''.join(f'_{k}_{v:g}' for k, v in knob_values.items())


# The released code (the defaults); the paper's text, whose two settings name no optimiser
# (these keep the Hugging Face Trainer's defaults) and no repetition penalty; and a CPU-sized
# run that needs nothing from the hub (OPT's tokenizer and WikiText-2's validation and test
# splits, from the data directory).
TRAINER = dict(learning_rate=5e-5, batch=8, weight_decay=0.0, schedule='linear', min_learning_rate=0.0)
PRESETS = {
    'paper': {},  # the authors' released main.py: the defaults
    'paper-text': dict(TRAINER, repetition_penalty=1.0),
    'paper-text-keep10': dict(TRAINER, repetition_penalty=1.0, epochs=10, regimes=('mix',), real_fractions=(0.1,)),
    'tiny': dict(TRAINER, model='tiny', train_split='validation', valid_split='test', seeds=1,
                 generations=4, epochs=4, batch=16, learning_rate=3e-3, train_blocks=512,
                 eval_blocks=256, gen_batch=128, repetition_penalty=2.0,
                 regimes=('replace', 'mix'), real_fractions=(0.1,)),
}


# What verify and curate can rank blocks by: each block's mean token log-likelihood under the
# model measured (self) or under the generation-0 model (gen0); no true density, no reward.
SCORES = ('self', 'gen0')
