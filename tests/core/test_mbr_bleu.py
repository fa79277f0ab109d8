"""Batched MBR BLEU: every pair equals sacreBLEU's own sentence BLEU (exp smoothing, effective order)."""
import random

import pytest
import torch
from sacrebleu.metrics import BLEU

from difftext.mbr import bleu_utility, mbr_rank


def _candidates(rng, n):
    words = ["a", "man", "dog", "the", "runs", "in", "park", ".", "a", "the", "green", "shirt"]
    out = []
    for _ in range(n):
        length = rng.choice([0, 1, 2, 3, 4, 5, 8, 13])  # empty, below and above the 4-gram order
        out.append(" ".join(rng.choice(words) for _ in range(length)))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_every_pair_equals_sacrebleu_sentence_bleu(seed):
    rng = random.Random(seed)
    candidates = _candidates(rng, 9)
    bleu = BLEU(effective_order=True)
    u = bleu_utility(candidates)
    assert u.shape == (9, 9) and u.dtype == torch.float64
    for i, hyp in enumerate(candidates):
        for j, ref in enumerate(candidates):
            expected = 0.0 if i == j else bleu.sentence_score(hyp, [ref]).score
            assert u[i, j].item() == pytest.approx(expected, abs=1e-9), (hyp, ref)


def test_repeated_ngrams_are_clipped_and_lengths_penalised():
    u = bleu_utility(["the the the the", "the cat", "the cat sat on the mat ."])
    bleu = BLEU(effective_order=True)
    assert u[0, 1].item() == pytest.approx(bleu.sentence_score("the the the the", ["the cat"]).score)
    assert u[1, 2].item() == pytest.approx(bleu.sentence_score("the cat", ["the cat sat on the mat ."]).score)
    assert u[2, 1].item() == pytest.approx(bleu.sentence_score("the cat sat on the mat .", ["the cat"]).score)
    assert 0.0 < u[0, 1].item() < 100.0 and 0.0 < u[1, 2].item() < 100.0


def test_mbr_rank_on_identical_and_empty_candidates():
    # two identical candidates agree with each other most; the empty one is last
    order = mbr_rank(["", "a dog runs in the park", "a dog runs in the park", "a cat sleeps"], bleu_utility)
    assert order[:2] == [1, 2] and order[-1] == 0
