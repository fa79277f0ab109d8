"""Minimum Bayes risk (MBR) selection among sampled candidates.

DiffuSeq (Gong et al. 2023, sec. 4.4) and Difformer (Gao et al. 2024) decode several candidates per
input (length beam x noise beam) and keep the one with the highest summed utility against the others:
``argmax_i sum_{j != i} u(c_i, c_j)``. The default utility is sacreBLEU's sentence BLEU (13a tokenizer,
exponential smoothing, effective order), computed from n-gram statistics extracted once per candidate;
the n^2 clipped-count intersections and BLEU formulas of a group are tensor operations. ``rouge_utility``
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


def _pair_statistics(stats: Sequence[Tuple[Counter, int]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Clipped n-gram matches of every ordered pair at once: (n, n, 4) matches[i, j, k] = sum over the
    (k+1)-grams g of min(count_i(g), count_j(g)), and the lengths (n,). One count matrix over the group's
    distinct n-grams; the pairwise minimum and the per-order sums are tensor operations."""
    index: dict = {}
    rows, cols, values = [], [], []
    for i, (ngrams, _) in enumerate(stats):
        for ngram, count in ngrams.items():
            rows.append(i)
            cols.append(index.setdefault(ngram, len(index)))
            values.append(count)
    n = len(stats)
    lengths = torch.tensor([length for _, length in stats], dtype=torch.float64)
    if not index:
        return torch.zeros(n, n, _ORDER, dtype=torch.float64), lengths
    counts = torch.zeros(n, len(index), dtype=torch.float64)
    counts[rows, cols] = torch.tensor(values, dtype=torch.float64)
    order = torch.zeros(len(index), _ORDER, dtype=torch.float64)
    order[list(index.values()), [len(g) - 1 for g in index]] = 1.0
    matches = torch.minimum(counts[:, None, :], counts[None, :, :]) @ order  # (n, n, 4)
    return matches, lengths


def _sentence_bleu(matches: torch.Tensor, hyp_len: torch.Tensor, ref_len: torch.Tensor) -> torch.Tensor:
    """sacreBLEU's sentence BLEU (``BLEU.compute_bleu`` with exp smoothing and effective order) on tensors.

    matches (..., 4) clipped n-gram matches, hyp_len / ref_len (...) token counts -> BLEU (...) in [0, 100].
    """
    n = torch.arange(1, _ORDER + 1, dtype=matches.dtype)
    total = (hyp_len[..., None] - n + 1).clamp(min=0)                 # hypothesis n-grams per order
    used = total > 0                                                    # effective order: orders with n-grams
    misses = torch.cumsum((matches == 0) & used, dim=-1)                # exp smoothing: 2^(misses so far)
    precision = torch.where(matches > 0, matches, 0.5 ** misses) / total.clamp(min=1)
    eff_order = used.sum(-1).clamp(min=1)
    log_mean = torch.where(used, torch.log(precision * 100.0), torch.zeros_like(precision)).sum(-1) / eff_order
    bp = torch.where(hyp_len >= ref_len, torch.ones_like(hyp_len),
                     torch.exp(1 - ref_len / hyp_len.clamp(min=1)) * (hyp_len > 0))
    return torch.where(matches.sum(-1) > 0, bp * torch.exp(log_mean), torch.zeros_like(bp))


def bleu_utility(candidates: Sequence[str]) -> torch.Tensor:
    """Pairwise sentence BLEU: U[i, j] = BLEU(hyp=c_i, ref=c_j), float64 (n, n), zero diagonal.

    n tokenisations and n-gram extractions (Python), then all n^2 pairs as tensor operations.
    """
    matches, lengths = _pair_statistics([_ngram_stats(c) for c in candidates])
    u = _sentence_bleu(matches, lengths[:, None].expand_as(matches[..., 0]), lengths[None, :].expand_as(matches[..., 0]))
    return u.fill_diagonal_(0.0)


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
