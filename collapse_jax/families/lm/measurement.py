"""Measuring a generation of the language model: perplexities on the test blocks, on its own
training blocks and of its generated blocks under the generation-0 model; the tails of the
generated text; and, where a regime ranks blocks, their scores."""

import numpy as np

from collapse_jax.data import wikitext
from collapse_jax.families.lm.training import block_nll

METRICS = ('test_ppl', 'test_ppl_block_mean', 'test_ppl_block_sd', 'valid_ppl', 'best_epoch',
           'own_train_ppl', 'generated_ppl_median', 'distinct_tokens', 'rare_share', 'repeated_4grams')
SCORE_METRICS = ('train_score', 'sample_score', 'pass_rate')  # where the run has a score


def measure(cfg, config, params_S, params0_S, data, train_SxNxL, new_SxCxT, pass_rate_S=None):
  """Each seed's generation metrics (a list of dicts), generated-block perplexities
  (ppl_SxN, the first block of each prompt) and, where the run has a score, every
  generated block's (scores_SxC): test perplexity, perplexity on the blocks the model was
  fine-tuned on (train_SxNxL; main.py's --evalgen_only), and the generated blocks under
  the seed's generation-0 model. The scores are mean token log-likelihoods under the
  generation-0 model (gen0) or this one (self); train_score and sample_score average them
  over the training blocks and the generated ones, beside pass_rate, the share of
  candidates kept."""
  n = len(data['train'])
  score = cfg.active_score(cfg.regimes)
  new_SxNxT = new_SxCxT[:, :n]
  test_nll_SxN = block_nll(config, params_S, data['test'], cfg.eval_batch)
  own_nll_SxN = block_nll(config, params_S, train_SxNxL, cfg.eval_batch)
  gen_nll_SxC = block_nll(config, params0_S, new_SxCxT if score == 'gen0' else new_SxNxT,
                          cfg.eval_batch)
  gen_ppl_SxN = np.exp(gen_nll_SxC[:, :n])
  scores_SxC, extra = None, [{} for _ in gen_nll_SxC]
  if score is not None:
    scores_SxC = -(gen_nll_SxC if score == 'gen0' else block_nll(config, params_S, new_SxCxT,
                                                                  cfg.eval_batch))
    train_SxN = own_nll_SxN if score == 'self' else block_nll(config, params0_S, train_SxNxL,
                                                               cfg.eval_batch)
    extra = [{'train_score': float(-t.mean()), 'sample_score': float(c[:n].mean()),
              'pass_rate': float(p)}
             for t, c, p in zip(train_SxN, scores_SxC, pass_rate_S)]

  def one(test_nll_N, own_nll_N, gen_ppl_N, new_NxT):
    test_ppl_N = np.exp(test_nll_N)
    return {'test_ppl': float(np.exp(test_nll_N.mean())),
            'test_ppl_block_mean': float(test_ppl_N.mean()),
            'test_ppl_block_sd': float(test_ppl_N.std()),
            'own_train_ppl': float(np.exp(own_nll_N.mean())),
            'generated_ppl_median': float(np.median(gen_ppl_N)),
            'distinct_tokens': wikitext.distinct_tokens(new_NxT),
            'rare_share': wikitext.rare_share(new_NxT, data['rare']),
            'repeated_4grams': wikitext.repeated_ngrams(new_NxT, 4)}
  return ([{**one(*x), **e} for *x, e in zip(test_nll_SxN, own_nll_SxN, gen_ppl_SxN, new_SxNxT,
                                              extra)], gen_ppl_SxN, scores_SxC)
