"""The language-model experiment: OPT fine-tuned on WikiText-2, then on its own beam-search text.

Generation 0 fine-tunes the starting model on the original 64-token blocks and
keeps its best epoch by validation perplexity; it then continues every original
block by beam search, and those continuations are generation 1's training set
(mixed with real blocks as the regime says), and so on. A generation is a whole
training run, so generations run in a host loop. Seeds run together on an
accelerator (`seeds_at_once`): their parameters are stacked and every step is
vmapped over them, each seed on its own blocks in its own order. Batches and
prompts are split over every device (data parallel).

Everything a generation produces is on disk before the next starts, and a
killed run resumes at the last finished epoch or batch of prompts, drawing the
same random numbers: keys are folded from (seed, generation, epoch, step).

The rooms: config (LMConfig, its checks, PRESETS, SCORES, folder), inputs (the tokenizer and
blocks, the starting model, each generation's training blocks), training (fine_tune,
block_nll), decoding (continue_prompts, regenerate), measurement (measure, METRICS),
generations (run_seeds: one setting's seeds through every generation), experiment (run:
every setting, then tables and figures), arrays (seeds and devices) and records (files).
"""

from collapse_jax.families.lm.config import PRESETS, PROMPT, SCORES, TRAINER, LMConfig
from collapse_jax.families.lm.experiment import run

__all__ = ['LMConfig', 'PRESETS', 'PROMPT', 'SCORES', 'TRAINER', 'run']
