"""Minimum Bayes risk (MBR) selection among sampled candidates.

DiffuSeq (Gong et al. 2023, sec. 4.4) and Difformer (Gao et al. 2024) decode several candidates per
input (length beam x noise beam) and keep the one with the highest summed utility against the others:
``argmax_i sum_{j != i} u(c_i, c_j)``. The default utility is sacreBLEU's sentence BLEU (13a tokenizer,
exponential smoothing, effective order), computed from n-gram statistics extracted once per candidate,
so a group of n candidates costs n extractions and n^2 cheap count intersections. ``rouge_utility``
(ROUGE-L F1) is the alternative for summarization and paraphrase.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, List, Sequence, Tuple

import torch
from sacrebleu.metrics import BLEU
from sacrebleu.metrics.helpers import extract_all_word_ngrams

Utility = Callable[[Sequence[str]], torch.Tensor]
_BLEU = BLEU(effective_order=True)
_ORDER = 4


def _ngram_stats(text: str) -> Tuple[Counter, int]:
    tokens = _BLEU.tokenizer(text.rstrip())
    return extract_all_word_ngrams(tokens, 1, _ORDER)


def _pair_bleu(hyp: Tuple[Counter, int], ref: Tuple[Counter, int]) -> float:
    (h_ngrams, h_len), (r_ngrams, r_len) = hyp, ref
    correct, total = [0] * _ORDER, [0] * _ORDER
    for ngram, count in h_ngrams.items():
        n = len(ngram) - 1
        total[n] += count
        if ngram in r_ngrams:
            correct[n] += min(count, r_ngrams[ngram])
    score = BLEU.compute_bleu(correct, total, h_len, r_len, smooth_method="exp", effective_order=True)
    return score.score


def bleu_utility(candidates: Sequence[str]) -> torch.Tensor:
    """Pairwise sentence BLEU: U[i, j] = BLEU(hyp=c_i, ref=c_j), float64 (n, n), zero diagonal."""
    stats = [_ngram_stats(c) for c in candidates]
    n = len(candidates)
    u = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if i != j:
                u[i, j] = _pair_bleu(stats[i], stats[j])
    return u


def rouge_utility(candidates: Sequence[str]) -> torch.Tensor:
    """Pairwise ROUGE-L F1 x 100 (rouge-score, no stemming): float64 (n, n), symmetric, zero diagonal.

    ROUGE-L F1 (rather than a mean of ROUGE-1/2/L) because it is the ROUGE that DiffuSeq and Difformer report
    for paraphrase and summarization, and its F1 is symmetric, so each pair is scored once. rouge-score's
    tokenizer keeps only lower-cased [a-z0-9] runs: for targets in other scripts use ``bleu_utility``.
    A symmetric utility cannot choose between two candidates (the tie goes to the first): MBR needs three or more.
    """
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], use_stemmer=False)
    n = len(candidates)
    u = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            u[i, j] = u[j, i] = 100 * scorer.score(candidates[j], candidates[i])["rougeL"].fmeasure
    return u


def mbr_select(candidates: Sequence[str], utility: Utility = bleu_utility) -> int:
    """Index of the candidate with the highest summed utility against all others (ties: first)."""
    if len(candidates) == 0:
        raise ValueError("MBR needs at least one candidate")
    if len(candidates) == 1:
        return 0
    return int(utility(candidates).sum(dim=1).argmax())


def mbr_rank(candidates: Sequence[str], utility: Utility = bleu_utility) -> List[int]:
    """Candidate indices ordered by decreasing summed utility (the MBR choice first)."""
    if len(candidates) <= 1:
        return list(range(len(candidates)))
    expected = utility(candidates).sum(dim=1)
    return sorted(range(len(candidates)), key=lambda i: (-float(expected[i]), i))
