"""Masked-diffusion losses on numbers: a hand-computed example, MDLM == MD4, oracle ~ 0, uniform ~ log V,
D3PM hybrid, GenMD4 and its REINFORCE leave-one-out gradient against a finite difference."""

import itertools
import math

import pytest
import torch

from difftext.losses.masked import d3pm_loss, genmd4_loss, genmd4_rloo_loss, md4_loss, mdlm_loss
from difftext.processes.masked import q_log_prob, q_sample
from difftext.schedules.masking import (
    CosineSchedule,
    GenMD4Schedule,
    LinearSchedule,
    LogLinearSchedule,
    MutualSchedule,
    SpindleSchedule,
)
from difftext.time_samplers import antithetic_continuous

V, MASK = 6, 6  # tokens 0..5, mask id 6, logits over V + 1 = 7


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _noised(schedule, batch=64, length=12, seed=0):
    x0 = torch.randint(0, V, (batch, length), generator=_gen(seed))
    t = antithetic_continuous(batch, generator=_gen(seed + 1))
    z_t = q_sample(x0, schedule.alpha(t), mask_id=MASK, protected_ids=(), generator=_gen(seed + 2))
    return x0, z_t, t


def _oracle_logits(x0):
    return 1e4 * torch.nn.functional.one_hot(x0, V + 1).float()


def test_hand_computed_three_token_example():
    x0, z_t, t = torch.tensor([[0, 1, 2]]), torch.tensor([[MASK, 1, MASK]]), torch.tensor([0.5])
    logits = torch.zeros(1, 3, V + 1)
    logits[0, 0, 0] = 2.0  # p(x0=0) = e^2 / (e^2 + 5)
    logits[0, 2, 3] = 1.0  # p(x0=2) = 1 / (e + 5)
    expected_ce = -math.log(math.exp(2) / (math.exp(2) + 5)) - math.log(1 / (math.e + 5))
    terms = mdlm_loss(logits, x0, z_t, t, LinearSchedule(), mask_id=MASK)
    assert terms.ce.item() == pytest.approx(expected_ce, rel=1e-6)
    assert terms.nelbo.item() == pytest.approx(2 * expected_ce, rel=1e-6)  # weight 1/t = 2
    assert terms.num_masked.item() == 2 and terms.num_tokens.item() == 3
    assert terms.nats_per_token().item() == pytest.approx(2 * expected_ce / 3, rel=1e-6)


def test_mdlm_and_md4_objectives_agree_on_the_same_batch():
    x0, z_t, t = _noised(LinearSchedule())
    logits = torch.randn(*x0.shape, V + 1, generator=_gen(5))
    mdlm = mdlm_loss(logits, x0, z_t, t, LogLinearSchedule(eps=0.0), mask_id=MASK)
    md4 = md4_loss(logits, x0, z_t, t, LinearSchedule(), mask_id=MASK)
    torch.testing.assert_close(mdlm.nelbo, md4.nelbo)
    torch.testing.assert_close(mdlm.loss, md4.loss)
    same = LogLinearSchedule(eps=1e-3)
    torch.testing.assert_close(
        mdlm_loss(logits, x0, z_t, t, same, mask_id=MASK).nelbo,
        md4_loss(logits, x0, z_t, t, same, mask_id=MASK).nelbo,
    )


@pytest.mark.parametrize("loss_fn", [mdlm_loss, md4_loss])
def test_denoiser_that_knows_the_answer_has_zero_nelbo(loss_fn):
    x0, z_t, t = _noised(LogLinearSchedule())
    terms = loss_fn(_oracle_logits(x0), x0, z_t, t, LogLinearSchedule(), mask_id=MASK)
    assert terms.num_masked.sum() > 0
    assert terms.nelbo.abs().max().item() < 1e-6


@pytest.mark.parametrize("schedule", [LinearSchedule(), CosineSchedule()], ids=["linear", "cosine"])
def test_uniform_denoiser_costs_log_v_per_token(schedule):
    # E_t E_z [w(t) #masked log V] = L log V * int_0^1 -alpha'_t dt = L log V
    x0, z_t, t = _noised(schedule, batch=8192, length=16)
    terms = md4_loss(torch.zeros(*x0.shape, V + 1), x0, z_t, t, schedule, mask_id=MASK)
    assert terms.nats_per_token().item() == pytest.approx(math.log(V), rel=0.03)


def test_padding_does_not_count():
    x0, z_t, t = _noised(LinearSchedule(), batch=4, length=10)
    maskable = torch.ones_like(x0, dtype=torch.bool)
    maskable[:, 7:] = False
    logits = torch.randn(4, 10, V + 1, generator=_gen(9))
    full = mdlm_loss(logits, x0, z_t, t, LinearSchedule(), mask_id=MASK, maskable=maskable)
    cut = mdlm_loss(logits[:, :7], x0[:, :7], z_t[:, :7], t, LinearSchedule(), mask_id=MASK)
    torch.testing.assert_close(full.nelbo, cut.nelbo)
    assert full.num_tokens.tolist() == [7] * 4


def test_gradient_is_finite_and_zero_at_unmasked_positions():
    x0, z_t, t = _noised(LinearSchedule(), batch=8)
    logits = torch.randn(*x0.shape, V + 1, generator=_gen(3), requires_grad=True)
    mdlm_loss(logits, x0, z_t, t, LinearSchedule(), mask_id=MASK).loss.backward()
    assert bool(torch.isfinite(logits.grad).all())
    assert bool((logits.grad[z_t != MASK] == 0).all())


def test_time_outside_unit_interval_raises():
    x0 = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="antithetic_continuous"):
        mdlm_loss(torch.zeros(1, 3, V + 1), x0, x0, torch.zeros(1), LinearSchedule(), mask_id=MASK)


def _d3pm_batch(batch, length, num_steps, seed=0):
    x0 = torch.randint(0, V, (batch, length), generator=_gen(seed))
    step = torch.arange(batch) % num_steps + 1  # every t in 1..T equally often
    schedule = MutualSchedule(num_steps)
    alpha_s, alpha_t = schedule.alpha_bar(step - 1), schedule.alpha_bar(step)
    z_t = q_sample(x0, alpha_t, mask_id=MASK, protected_ids=(), generator=_gen(seed + 1))
    return x0, z_t, alpha_s, alpha_t


def test_d3pm_uniform_denoiser_costs_log_v_per_token():
    # E_z [T (1/t) #masked log V] = T (1/t) L (t/T) log V = L log V at every step t
    x0, z_t, alpha_s, alpha_t = _d3pm_batch(8192, 16, num_steps=32)
    terms = d3pm_loss(torch.zeros(*x0.shape, V + 1), x0, z_t, alpha_s, alpha_t, num_steps=32, mask_id=MASK)
    assert terms.nats_per_token().item() == pytest.approx(math.log(V), rel=0.03)
    oracle = d3pm_loss(_oracle_logits(x0), x0, z_t, alpha_s, alpha_t, num_steps=32, mask_id=MASK)
    assert oracle.loss.abs().item() < 1e-6


def test_d3pm_hybrid_loss_by_hand():
    x0, z_t = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[MASK, 1, MASK, MASK]])
    logits = torch.zeros(1, 4, V + 1)  # uniform: CE log V per masked token
    alpha_s, alpha_t = torch.tensor([0.5]), torch.tensor([0.25])  # coefficient (0.5 - 0.25) / 0.75 = 1/3
    terms = d3pm_loss(logits, x0, z_t, alpha_s, alpha_t, num_steps=10, mask_id=MASK, hybrid_lambda=0.01)
    vlb_t = 3 * math.log(V) / 3
    assert terms.loss.item() == pytest.approx(vlb_t + 0.01 * 3 * math.log(V), rel=1e-6)
    assert terms.nelbo.item() == pytest.approx(10 * vlb_t, rel=1e-6)
    first = d3pm_loss(logits, x0, z_t, torch.ones(1), torch.tensor([0.9]), num_steps=10, mask_id=MASK)
    torch.testing.assert_close(first.nelbo / 10, first.ce)  # step 1: L_0 = -log p(x0 | x_1)


def test_d3pm_with_spindle_keep_probabilities():
    spindle = SpindleSchedule(torch.arange(V + 1).float() ** 3, num_steps=20)
    x0 = torch.randint(0, V, (256, 12), generator=_gen(2))
    step = torch.randint(1, 21, (256,), generator=_gen(3))
    alpha_s, alpha_t = spindle.alpha_bar(step - 1, x0), spindle.alpha_bar(step, x0)
    z_t = q_sample(x0, alpha_t, mask_id=MASK, protected_ids=(), generator=_gen(4))
    logits = torch.randn(256, 12, V + 1, generator=_gen(5))
    terms = d3pm_loss(logits, x0, z_t, alpha_s, alpha_t, num_steps=20, mask_id=MASK)
    assert bool(torch.isfinite(terms.nelbo).all()) and bool((terms.nelbo >= 0).all())


def test_genmd4_with_equal_exponents_is_the_md4_loss():
    x0, z_t, t = _noised(LinearSchedule())
    logits = torch.randn(*x0.shape, V + 1, generator=_gen(6))
    gen = genmd4_loss(logits, x0, z_t, t, GenMD4Schedule(V + 1), mask_id=MASK)
    torch.testing.assert_close(gen.nelbo, md4_loss(logits, x0, z_t, t, LinearSchedule(), mask_id=MASK).nelbo)
    schedule = GenMD4Schedule(V + 1)
    with torch.no_grad():
        schedule.raw_exponent.normal_(generator=_gen(7))
    assert bool((genmd4_loss(logits, x0, z_t, t, schedule, mask_id=MASK).nelbo >= -1e-5).all())
    oracle = genmd4_loss(_oracle_logits(x0), x0, z_t, t, schedule, mask_id=MASK)
    assert oracle.nelbo.abs().max().item() < 1e-4


def _tiny_genmd4():
    schedule = GenMD4Schedule(4).double()  # tokens 0..2, mask id 3
    with torch.no_grad():
        schedule.raw_exponent.copy_(torch.tensor([0.3, -0.5, 1.2, 0.0]))
    base = torch.randn(4, 4, generator=_gen(11), dtype=torch.float64)
    bump = torch.randn(4, 4, generator=_gen(12), dtype=torch.float64)

    def denoise_fn(z_t, t):  # depends on how many tokens are masked
        return base + 0.5 * (z_t == 3).sum(-1).double()[:, None, None] * bump

    return schedule, denoise_fn


def _expected_genmd4_loss(schedule, denoise_fn, x0, t):
    """E_q[NELBO] by enumerating all 2^L mask patterns."""
    patterns = torch.tensor(list(itertools.product([False, True], repeat=x0.size(1))))  # (16, L)
    n = patterns.size(0)
    z_t, x0_n, t_n = torch.where(patterns, 3, x0), x0.expand(n, -1), t.expand(n)
    maskable = torch.ones_like(z_t, dtype=torch.bool)
    log_q = q_log_prob(z_t, schedule.alpha(t_n, x0_n), mask_id=3, maskable=maskable)
    f = genmd4_loss(denoise_fn(z_t, t_n), x0_n, z_t, t_n, schedule, mask_id=3).nelbo
    return (log_q.exp() * f).sum(), (log_q.exp().detach() * f).sum()


def test_genmd4_reinforce_leave_one_out_matches_finite_difference():
    schedule, denoise_fn = _tiny_genmd4()
    x0, t = torch.tensor([[0, 1, 2, 1]]), torch.tensor([0.6], dtype=torch.float64)
    h, finite_diff = 1e-5, torch.zeros(3, dtype=torch.float64)
    for v in range(3):
        with torch.no_grad():
            values = []
            for sign in (1, -1):
                schedule.raw_exponent[v] += sign * h
                values.append(_expected_genmd4_loss(schedule, denoise_fn, x0, t)[0])
                schedule.raw_exponent[v] -= sign * h
        finite_diff[v] = (values[0] - values[1]) / (2 * h)
    pathwise = torch.autograd.grad(
        _expected_genmd4_loss(schedule, denoise_fn, x0, t)[1], schedule.raw_exponent
    )[0]

    generator, n, estimates = _gen(13), 4000, []
    for _ in range(8):
        terms = genmd4_rloo_loss(
            denoise_fn,
            x0.expand(n, -1),
            t.expand(n),
            schedule,
            mask_id=3,
            maskable=torch.ones(n, 4, dtype=torch.bool),
            generator=generator,
        )
        estimates.append(torch.autograd.grad(terms.loss / n, schedule.raw_exponent)[0][:3])
    estimates = torch.stack(estimates)
    mean, stderr = estimates.mean(0), estimates.std(0) / math.sqrt(len(estimates))
    assert bool(((mean - finite_diff).abs() <= 4 * stderr + 2e-3).all()), (mean, finite_diff, stderr)
    assert ((pathwise[:3] - finite_diff).abs() > 10 * stderr).any()  # the score-function part matters


def _masked_rows_cases():
    x0, z_t, t = _noised(LinearSchedule(), batch=16)
    spindle_like = GenMD4Schedule(V + 1)
    with torch.no_grad():
        spindle_like.raw_exponent.normal_(generator=_gen(8))
    step = torch.arange(16) % 8 + 1
    mutual = MutualSchedule(8)
    return x0, z_t, {
        "mdlm": lambda lg: mdlm_loss(lg, x0, z_t, t, LogLinearSchedule(), mask_id=MASK),
        "md4": lambda lg: md4_loss(lg, x0, z_t, t, LinearSchedule(), mask_id=MASK),
        "genmd4": lambda lg: genmd4_loss(lg, x0, z_t, t, spindle_like, mask_id=MASK),
        "d3pm": lambda lg: d3pm_loss(lg, x0, z_t, mutual.alpha_bar(step - 1), mutual.alpha_bar(step), num_steps=8,
                                     mask_id=MASK, hybrid_lambda=0.01),
    }


@pytest.mark.parametrize("name", ["mdlm", "md4", "genmd4", "d3pm"])
def test_logits_at_masked_rows_only_give_the_same_loss_and_gradient(name):
    x0, z_t, losses = _masked_rows_cases()
    is_masked = z_t == MASK
    assert 0 < int(is_masked.sum()) < is_masked.numel()
    dense = torch.randn(*x0.shape, V + 1, generator=_gen(9), requires_grad=True)
    rows = dense.detach()[is_masked].clone().requires_grad_(True)  # (M, V): what a denoiser may return
    full, short = losses[name](dense), losses[name](rows)
    for field in ("loss", "nelbo", "ce", "num_masked", "num_tokens"):
        torch.testing.assert_close(getattr(short, field), getattr(full, field))
    full.loss.backward()
    short.loss.backward()
    torch.testing.assert_close(rows.grad, dense.grad[is_masked])
    assert float(dense.grad[~is_masked].abs().max()) == 0.0  # the rows left out never mattered


def test_logits_of_neither_form_raise_a_clear_error():
    x0, z_t, losses = _masked_rows_cases()
    num_masked = int((z_t == MASK).sum())
    with pytest.raises(ValueError, match=r"neither .* as \(B, L, V\) nor its \d+ masked positions as \(M, V\)"):
        losses["mdlm"](torch.zeros(num_masked + 1, V + 1))
    with pytest.raises(ValueError, match="neither"):
        losses["md4"](torch.zeros(x0.size(0), x0.size(1) + 1, V + 1))
