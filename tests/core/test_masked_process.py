"""Absorbing forward process and SUBS: mask rates, protected symbols, carry-over, exact likelihoods."""

import itertools

import pytest
import torch

from difftext.processes.masked import maskable_positions, masked_prior, q_log_prob, q_sample, subs_log_probs
from difftext.schedules.masking import CosineSchedule, LogLinearSchedule

PAD, BOS, EOS, MASK = 0, 1, 2, 9


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("schedule", [LogLinearSchedule(), CosineSchedule()], ids=["loglinear", "cosine"])
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_empirical_mask_rate_matches_one_minus_alpha(schedule, t):
    x0 = torch.randint(3, 9, (1000, 64), generator=_gen(1))
    alpha_t = schedule.alpha(torch.full((1000,), t))
    z_t = q_sample(x0, alpha_t, mask_id=MASK, protected_ids=(), generator=_gen(2))
    rate = (z_t == MASK).float().mean().item()
    assert rate == pytest.approx(1 - alpha_t[0].item(), abs=0.01)  # 64k draws: SE <= 0.002
    assert bool((z_t[z_t != MASK] == x0[z_t != MASK]).all())


def test_per_sequence_and_per_token_alpha():
    x0 = torch.randint(3, 9, (4, 20000), generator=_gen(3))
    alpha_seq = torch.tensor([0.0, 0.25, 0.75, 1.0])
    rate = (
        (q_sample(x0, alpha_seq, mask_id=MASK, protected_ids=(), generator=_gen(4)) == MASK).float().mean(1)
    )
    torch.testing.assert_close(rate, 1 - alpha_seq, atol=0.015, rtol=0)
    alpha_tok = torch.tensor([0.2, 0.9]).repeat(4, 10000)  # (B, L), alternating
    z_t = q_sample(x0, alpha_tok, mask_id=MASK, protected_ids=(), generator=_gen(5))
    rate_tok = (z_t == MASK).float().view(4, 10000, 2).mean((0, 1))
    torch.testing.assert_close(rate_tok, torch.tensor([0.8, 0.1]), atol=0.01, rtol=0)


def test_special_tokens_are_never_masked():
    x0 = torch.tensor([[BOS, 5, 6, 7, EOS, PAD, PAD], [BOS, 3, 4, 5, 6, 8, EOS]])
    z_t = q_sample(x0, torch.zeros(2), mask_id=MASK, protected_ids=(PAD, BOS, EOS), generator=_gen())
    special = (x0 == PAD) | (x0 == BOS) | (x0 == EOS)
    assert bool((z_t[special] == x0[special]).all())
    assert bool((z_t[~special] == MASK).all())  # alpha = 0 masks every other position
    maskable = torch.ones_like(x0, dtype=torch.bool)
    maskable[:, 1] = False  # e.g. a conditioning prefix
    z_t = q_sample(x0, torch.zeros(2), mask_id=MASK, maskable=maskable, protected_ids=(PAD, BOS, EOS))
    assert bool((z_t[:, 1] == x0[:, 1]).all()) and bool((z_t[special] == x0[special]).all())


def test_generator_makes_draws_reproducible():
    x0 = torch.randint(3, 9, (8, 32), generator=_gen())
    alpha = torch.full((8,), 0.5)
    first = q_sample(x0, alpha, mask_id=MASK, protected_ids=(), generator=_gen(7))
    second = q_sample(x0, alpha, mask_id=MASK, protected_ids=(), generator=_gen(7))
    assert torch.equal(first, second)


def test_bad_arguments_raise_clear_errors():
    x0 = torch.tensor([[3, 4, MASK]])
    with pytest.raises(ValueError, match="protected_ids"):
        q_sample(x0[:, :2], torch.ones(1), mask_id=MASK)
    with pytest.raises(ValueError, match="already contains mask_id"):
        q_sample(x0, torch.ones(1), mask_id=MASK, protected_ids=())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        q_sample(x0[:, :2], torch.tensor([1.5]), mask_id=MASK, protected_ids=())
    with pytest.raises(ValueError, match="vocabulary of size 5"):
        subs_log_probs(torch.zeros(1, 3, 5), x0, mask_id=MASK)


def test_q_log_prob_sums_to_one_over_all_mask_patterns():
    x0 = torch.tensor([[3, 4, 5, 6]])
    alpha = torch.tensor([[0.9, 0.5, 0.2, 0.7]], dtype=torch.float64)
    maskable = torch.tensor([[True, True, True, False]])
    patterns = torch.tensor(list(itertools.product([False, True], repeat=3)))  # (8, 3)
    z_t = torch.where(patterns, MASK, x0[:, :3])
    z_t = torch.cat([z_t, x0[:, 3:].expand(8, 1)], 1)
    log_q = q_log_prob(z_t, alpha.expand(8, 4), mask_id=MASK, maskable=maskable.expand(8, 4))
    assert log_q.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    expected = 0.1 * 0.5 * 0.2  # pattern (masked, kept, kept) -> (1 - 0.9) * 0.5 * 0.2
    assert log_q[4].exp().item() == pytest.approx(expected)


def test_subs_carries_over_unmasked_and_never_predicts_mask():
    logits = torch.randn(2, 5, 10, generator=_gen(), requires_grad=True)
    z_t = torch.tensor([[BOS, MASK, 5, MASK, EOS], [MASK, MASK, MASK, 7, PAD]])
    probs = subs_log_probs(logits, z_t, mask_id=MASK, forbidden_ids=(PAD,)).exp()  # (B, L, V)
    unmasked = z_t != MASK
    one_hot = torch.nn.functional.one_hot(z_t, 10).float()
    assert torch.equal(probs[unmasked], one_hot[unmasked])
    assert bool((probs[..., MASK] == 0).all())
    assert bool((probs[~unmasked][:, PAD] == 0).all())
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 5))
    expected = torch.softmax(logits[0, 1, 1:MASK], -1)  # masked row: softmax without PAD and MASK
    torch.testing.assert_close(probs[0, 1, 1:MASK], expected)
    no_carry = subs_log_probs(logits, z_t, mask_id=MASK, carry_over=False).exp()
    torch.testing.assert_close(
        no_carry[~unmasked], subs_log_probs(logits, z_t, mask_id=MASK).exp()[~unmasked]
    )
    assert bool((no_carry[..., MASK] == 0).all())
    nll = -subs_log_probs(logits, z_t, mask_id=MASK).gather(-1, torch.full_like(z_t, 4)[..., None])
    nll[~unmasked].sum().backward()
    assert bool(torch.isfinite(logits.grad).all())
    assert bool((logits.grad[unmasked] == 0).all())


def test_masked_prior_keeps_fixed_positions():
    x = torch.tensor([[BOS, 5, 6, EOS, PAD]])
    maskable = maskable_positions(x, (PAD, BOS, EOS))
    assert masked_prior(x, maskable, mask_id=MASK).tolist() == [[BOS, MASK, MASK, EOS, PAD]]
