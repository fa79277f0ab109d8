"""Masking schedules: boundaries, monotonicity, derivatives against autograd, ELBO weights, spindle, GenMD4."""

import math

import pytest
import torch

from difftext.processes.masked import maskable_positions, q_sample
from difftext.schedules.masking import (
    CosineSchedule,
    GenMD4Schedule,
    LinearSchedule,
    LogLinearSchedule,
    MutualSchedule,
    PolynomialSchedule,
    SpindleSchedule,
    leave_one_out_surrogate,
)

SCALAR = {
    "linear": LinearSchedule(),
    "loglinear-eps0": LogLinearSchedule(eps=0.0),
    "loglinear": LogLinearSchedule(eps=1e-3),
    "cosine": CosineSchedule(),
    "poly2": PolynomialSchedule(2.0),
    "poly0.5": PolynomialSchedule(0.5),
    "mutual": MutualSchedule(16),
}


@pytest.mark.parametrize("name", sorted(SCALAR))
def test_boundaries_and_monotonic(name):
    schedule = SCALAR[name]
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    alpha = schedule.alpha(t)
    assert alpha[0].item() == pytest.approx(1.0, abs=1e-12)
    assert alpha[-1].item() == pytest.approx(getattr(schedule, "eps", 0.0), abs=1e-12)
    assert bool((alpha[1:] < alpha[:-1]).all())


@pytest.mark.parametrize("name", sorted(SCALAR))
def test_dalpha_and_dsigma_match_autograd(name):
    schedule = SCALAR[name]
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    (grad_alpha,) = torch.autograd.grad(schedule.alpha(t).sum(), t)
    (grad_sigma,) = torch.autograd.grad(schedule.sigma(t).sum(), t)
    torch.testing.assert_close(schedule.dalpha(t.detach()), grad_alpha)
    torch.testing.assert_close(schedule.dsigma(t.detach()), grad_sigma)


@pytest.mark.parametrize("name", sorted(SCALAR))
def test_weight_is_minus_dalpha_over_one_minus_alpha(name):
    schedule = SCALAR[name]
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    expected = -schedule.dalpha(t) / (1 - schedule.alpha(t))
    torch.testing.assert_close(schedule.weight(t), expected)
    assert bool((schedule.weight(t) > 0).all())
    # sigma form (MDLM): sigma' e^{-sigma} / (1 - e^{-sigma}) is the same weight
    torch.testing.assert_close(schedule.dsigma(t) / torch.expm1(schedule.sigma(t)), expected)


def test_md4_linear_weight_equals_mdlm_loglinear_weight():
    t = torch.linspace(0.001, 0.999, 100, dtype=torch.float64)
    mdlm = LogLinearSchedule(eps=0.0)
    md4_w = LinearSchedule().dalpha(t) / (1 - LinearSchedule().alpha(t))  # MD4's w(t) < 0
    mdlm_w = mdlm.dsigma(t) / torch.expm1(mdlm.sigma(t))
    torch.testing.assert_close(-md4_w, mdlm_w)
    torch.testing.assert_close(mdlm_w, 1 / t)
    torch.testing.assert_close(LogLinearSchedule(eps=1e-3).weight(t), 1 / t)


def test_known_values():
    t = torch.tensor([0.5], dtype=torch.float64)
    assert CosineSchedule().alpha(t).item() == pytest.approx(1 - math.cos(math.pi / 4))
    assert PolynomialSchedule(3.0).weight(t).item() == pytest.approx(6.0)
    assert LogLinearSchedule(eps=0.1).sigma(t).item() == pytest.approx(-math.log(1 - 0.45))


def test_mutual_alpha_bar_on_integer_steps():
    schedule = MutualSchedule(8)
    steps = torch.arange(9)
    torch.testing.assert_close(schedule.alpha_bar(steps), 1 - steps.float() / 8)
    with pytest.raises(ValueError, match="0..T=8"):
        schedule.alpha_bar(torch.tensor([9]))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="eps"):
        LogLinearSchedule(eps=1.0)
    with pytest.raises(ValueError, match="exponent"):
        PolynomialSchedule(0.0)
    with pytest.raises(ValueError, match="num_steps"):
        MutualSchedule(0)
    with pytest.raises(ValueError, match="counts"):
        SpindleSchedule(torch.tensor([1.0, -1.0]))


def _spindle():
    counts = torch.tensor([0.0, 0.0, 10000.0, 1000.0, 10.0, 1.0])  # ids 0, 1 are specials
    return SpindleSchedule(counts, num_steps=100, lam=0.3)


def test_spindle_frequent_tokens_keep_longer():
    spindle = _spindle()
    x0 = torch.tensor([[0, 2, 3, 4, 5, 1]])
    maskable = maskable_positions(x0, [0, 1])
    for step in (20, 50, 80):
        keep = spindle.alpha_bar(torch.tensor([step]), x0, maskable)[0, 1:5]
        assert bool((keep[:-1] > keep[1:]).all()), keep  # rarer token -> lower keep probability
        assert keep.mean().item() == pytest.approx(1 - step / 100, abs=1e-6)  # centred per sequence


def test_spindle_boundaries_clip_and_monotonic():
    spindle = _spindle()
    x0 = torch.tensor([[2, 3, 4, 5]])
    steps = torch.arange(101)
    keep = torch.cat([spindle.alpha_bar(s[None], x0) for s in steps])  # (T+1, L)
    assert bool((keep[0] == 1).all()) and bool((keep[-1] == 0).all())
    assert bool((keep[1:-1] <= 0.999).all()) and bool((keep >= 0).all())
    assert bool((keep[1:] <= keep[:-1]).all())


def test_spindle_empirical_mask_rate_by_frequency():
    spindle = _spindle()
    x0 = torch.tensor([[2, 3, 4, 5]]).repeat(5000, 1)
    alpha = spindle.alpha_bar(torch.full((5000,), 50), x0)
    z_t = q_sample(x0, alpha, mask_id=6, protected_ids=(), generator=torch.Generator().manual_seed(0))
    rate = (z_t == 6).float().mean(0)
    torch.testing.assert_close(rate, 1 - alpha[0], atol=0.03, rtol=0)
    assert rate[0] < rate[-1]


def test_spindle_state_dict_round_trip_and_zero_counts_is_mutual():
    spindle = _spindle()
    restored = SpindleSchedule(torch.zeros(6), num_steps=100)
    restored.load_state_dict(spindle.state_dict())
    x0, step = torch.tensor([[2, 3, 4, 5]]), torch.tensor([30])
    torch.testing.assert_close(restored.alpha_bar(step, x0), spindle.alpha_bar(step, x0))
    flat = SpindleSchedule(torch.zeros(6), num_steps=100).alpha_bar(step, x0)
    torch.testing.assert_close(flat, torch.full((1, 4), 0.7))


def test_genmd4_per_token_alpha_derivative_and_weight():
    schedule = GenMD4Schedule(5).double()
    with torch.no_grad():
        schedule.raw_exponent.copy_(torch.tensor([0.1, -1.0, 2.0, 0.5, 0.0]))
    x0 = torch.tensor([[0, 1, 2, 3], [4, 4, 0, 1]])
    t = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
    alpha = schedule.alpha(t, x0)  # (B, L)
    w = schedule.exponent()[x0]
    torch.testing.assert_close(alpha, 1 - t[:, None] ** w)
    grad = torch.stack([torch.autograd.grad(alpha[:, i].sum(), t, retain_graph=True)[0] for i in range(4)], 1)
    torch.testing.assert_close(schedule.dalpha(t.detach(), x0), grad)
    torch.testing.assert_close(schedule.weight(t.detach(), x0), w / t.detach()[:, None])
    ones = torch.ones(2, dtype=torch.float64)
    torch.testing.assert_close(schedule.alpha(0 * ones, x0), torch.ones(2, 4, dtype=torch.float64))
    torch.testing.assert_close(schedule.alpha(ones, x0), torch.zeros(2, 4, dtype=torch.float64))


def test_genmd4_initial_exponent_is_linear():
    schedule = GenMD4Schedule(4)
    t = torch.tensor([0.25, 0.75])
    torch.testing.assert_close(
        schedule.alpha(t, torch.tensor([[0, 3], [1, 2]])), (1 - t)[:, None].expand(2, 2)
    )


def test_leave_one_out_surrogate_is_zero_valued_with_loo_gradient():
    log_q = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)  # (K=2, B=2)
    losses = torch.tensor([[3.0, 1.0], [1.0, 4.0]])
    surrogate = leave_one_out_surrogate(losses, log_q)
    assert surrogate.abs().max().item() == 0.0
    (grad,) = torch.autograd.grad(surrogate.sum(), log_q)
    torch.testing.assert_close(grad, torch.tensor([[1.0, -1.5], [-1.0, 1.5]]))
    with pytest.raises(ValueError, match="K >= 2"):
        leave_one_out_surrogate(losses[:1], log_q[:1])
