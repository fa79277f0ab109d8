"""ROUGE-L as an MBR utility: hand-checked values, symmetry, and the consensus candidate is chosen."""
import pytest
import torch

from difftext.mbr import bleu_utility, mbr_rank, mbr_select, rouge_utility


def test_rouge_utility_hand_values():
    # LCS("the cat sat", "the cat sat on the mat") = 3: P = 3/3, R = 3/6, F1 = 2/3.
    u = rouge_utility(["the cat sat", "the cat sat on the mat"])
    assert u.dtype == torch.float64 and u.shape == (2, 2)
    assert u[0, 1].item() == pytest.approx(200 / 3) and u[1, 0].item() == pytest.approx(200 / 3)
    assert torch.equal(u.diagonal(), torch.zeros(2))


def test_rouge_utility_uses_subsequences_not_ngrams():
    # "a x b y c" vs "a b c": LCS 3 although no bigram is shared; F1 = 2 * (3/5 * 1) / (3/5 + 1) = 0.75.
    u = rouge_utility(["a x b y c", "a b c", "q r s"])
    assert u[0, 1].item() == pytest.approx(75.0)
    assert u[0, 2].item() == 0.0 and u[1, 2].item() == 0.0
    assert torch.equal(u, u.T)


@pytest.mark.parametrize("utility", [rouge_utility, bleu_utility])
def test_mbr_picks_the_consensus_candidate(utility):
    candidates = ["dogs run in the park", "the cat sat on a mat", "the cat sat on the mat", "a cat sat on the mat"]
    assert mbr_select(candidates, utility) == 2
    assert mbr_rank(candidates, utility)[0] == 2 and mbr_rank(candidates, utility)[-1] == 0


def test_single_candidate_needs_no_utility():
    assert mbr_select(["only"], rouge_utility) == 0
    assert mbr_rank(["only"], rouge_utility) == [0]
