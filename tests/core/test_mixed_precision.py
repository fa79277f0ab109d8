"""The core maths in bf16 / fp16: no overflow or NaN near t -> 0 (1/t weights), t -> 1, or in the clamping
distances, and losses reduced in float32. On CPU, with half tensors and under torch.autocast('cpu', bf16).
(GPU --fp16/--bf16 training is not exercised here.)
"""
import math

import pytest
import torch
from torch import nn

from difftext.losses.continuous import masked_mse, prior_loss, token_nll
from difftext.losses.masked import d3pm_loss, genmd4_loss, genmd4_rloo_loss, md4_loss, mdlm_loss
from difftext.processes.gaussian import GaussianDiffusion, NoiseFactor
from difftext.processes.masked import q_log_prob, q_sample, subs_log_probs
from difftext.samplers.continuous import nearest_embedding, sample
from difftext.samplers.masked import confidence_sample, ddpm_sample
from difftext.schedules import masking
from difftext.schedules.gaussian import SCHEDULES, build_schedule
from difftext.time_samplers import LossAwareSampler, antithetic_continuous

HALF = [torch.bfloat16, torch.float16]
T_EDGES = [1e-3, 1e-2, 0.5, 0.999, 1.0]  # the training range is [eps, 1]
V, MASK = 12, 11


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- continuous: process, posterior, samplers, losses -----------------------------------------------
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("factor,vp", [(1.0, False), (4.0, False), (4.0, True)])
def test_gaussian_steps_finite_at_both_ends(dtype, name, factor, vp):
    diff = GaussianDiffusion(build_schedule(name), 2000, NoiseFactor(factor, vp))
    z0 = torch.randn(3, 4, 8, generator=gen()).to(dtype)
    for t_, s_ in [(1, 0), (100, 99), (1999, 1998), (1999, 0)]:
        t, s = torch.full((3,), t_), torch.full((3,), s_)
        z_t = diff.q_sample(z0, t, generator=gen(1))
        mean, var = diff.posterior(z0, z_t, t, s)
        assert bool((var >= 0).all()), "posterior variance must not go negative by cancellation"
        for out in (z_t, mean, diff.ddpm_step(z0, z_t, t, s, generator=gen(2)), diff.ddim_step(z0, z_t, t, s)):
            assert out.dtype == dtype and bool(torch.isfinite(out).all()), (t_, s_)
        ref = diff.ddim_step(z0.double(), z_t.double(), t, s)
        assert torch.allclose(diff.ddim_step(z0, z_t, t, s).double(), ref, rtol=0.05, atol=0.05 * factor)


@pytest.mark.parametrize("dtype", HALF)
def test_continuous_losses_reduce_in_float32(dtype):
    z0 = (torch.randn(2, 5, 8, generator=gen()) * 200).to(dtype)  # squares overflow fp16 (max 65504)
    z0_hat = -z0
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    for term, ref in [
        (masked_mse(z0_hat, z0, mask), masked_mse(z0_hat.double(), z0.double(), mask)),
        (prior_loss(z0, 0.9, mask), prior_loss(z0.double(), 0.9, mask)),
    ]:
        assert term.per_example.dtype == torch.float32 and bool(torch.isfinite(term.per_example).all())
        assert torch.allclose(term.per_example.double(), ref.per_example.double(), rtol=1e-5)
    logits = (torch.randn(2, 5, V, generator=gen()) * 5e3).to(dtype)  # exp overflows any half type
    target = torch.randint(0, V, (2, 5), generator=gen())
    nll = token_nll(logits, target, mask, label_smoothing=0.1)
    assert nll.per_example.dtype == torch.float32 and bool(torch.isfinite(nll.mean_per_token()))


@pytest.mark.parametrize("dtype", HALF)
def test_nearest_embedding_with_large_norms(dtype):
    table = (torch.randn(50, 16, generator=gen()) * 100).to(dtype)  # ||e||^2 ~ 1.6e5 > fp16 max
    z = table[[3, 17, 42]] + 0.5
    assert nearest_embedding(z, table).tolist() == [3, 17, 42]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_reverse_loop_in_half_precision(dtype, method):
    diff = GaussianDiffusion(build_schedule("sqrt"), 100, NoiseFactor(4.0))
    table = torch.randn(V, 8, generator=gen()).to(dtype)
    x0 = torch.randint(0, V, (2, 6), generator=gen())

    def denoise_fn(z_t, t, z0_self_cond):  # knows the answer
        return table[x0]

    z_T = diff.prior_sample((2, 6, 8), dtype=dtype, generator=gen())
    z0_hat = sample(denoise_fn, diff, z_T, 10, method=method, clamp_embeddings=table, self_condition=True,
                    generator=gen(1))
    assert z0_hat.dtype == dtype and torch.equal(nearest_embedding(z0_hat, table), x0)


# --- discrete: schedules --------------------------------------------------------------------------
SCALAR_SCHEDULES = [masking.LinearSchedule(), masking.LogLinearSchedule(), masking.CosineSchedule(),
                    masking.PolynomialSchedule(2.0)]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("schedule", SCALAR_SCHEDULES, ids=lambda s: type(s).__name__)
def test_scalar_masking_schedules_in_half_precision(dtype, schedule):
    t = torch.tensor(T_EDGES).to(dtype)
    ref = t.double()
    alpha, weight = schedule.alpha(t), schedule.weight(t)
    assert bool(((alpha >= 0) & (alpha <= 1)).all())
    assert bool(torch.isfinite(weight).all()) and bool((weight >= 0).all()), weight
    assert torch.allclose(weight.double(), schedule.weight(ref), rtol=1e-3, atol=1e-6)
    inner = t < 1  # sigma = -log alpha is infinite where alpha_t = 0 (t = 1; 0.999 rounds to 1 in bf16)
    sigma, dsigma = schedule.sigma(t)[inner], schedule.dsigma(t)[inner]
    assert bool(torch.isfinite(sigma).all()) and bool(torch.isfinite(dsigma).all()), (sigma, dsigma)
    assert torch.allclose(dsigma.double(), schedule.dsigma(ref)[inner], rtol=1e-3)
    md4_w = schedule.dalpha(t) / (1.0 - schedule.alpha(t))  # MD4's w(t), as md4_loss computes it
    assert bool(torch.isfinite(md4_w).all()), md4_w


@pytest.mark.parametrize("dtype", HALF)
def test_per_token_schedules_in_half_precision(dtype):
    x0 = torch.randint(0, V, (len(T_EDGES), 6), generator=gen())
    t = torch.tensor(T_EDGES).to(dtype)
    genmd4 = masking.GenMD4Schedule(V, init_exponent=2.0)
    spindle = masking.SpindleSchedule(torch.arange(V).float() * 1000)
    for alpha in (genmd4.alpha(t, x0), spindle.alpha(t, x0)):
        assert bool(((alpha >= 0) & (alpha <= 1)).all())
    for w in (genmd4.weight(t, x0), genmd4.weight_table(t)):
        assert bool(torch.isfinite(w).all()) and bool((w > 0).all())
    assert torch.allclose(genmd4.alpha(t, x0).double(), genmd4.alpha(t.double(), x0).double(), atol=1e-3)


# --- discrete: losses, process, samplers ----------------------------------------------------------
def masked_batch(dtype, schedule):
    x0 = torch.randint(0, MASK, (len(T_EDGES), 9), generator=gen())
    t = torch.tensor(T_EDGES).to(dtype)
    z_t = q_sample(x0, schedule.alpha(t.float()), mask_id=MASK, protected_ids=(), generator=gen(1))
    logits = (torch.randn(len(T_EDGES), 9, V, generator=gen(2)) * 4).to(dtype)
    return x0, z_t, t, logits


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("loss", [mdlm_loss, md4_loss], ids=["mdlm", "md4"])
@pytest.mark.parametrize("schedule", SCALAR_SCHEDULES, ids=lambda s: type(s).__name__)
def test_continuous_time_masked_losses_in_half_precision(dtype, loss, schedule):
    x0, z_t, t, logits = masked_batch(dtype, schedule)
    out = loss(logits, x0, z_t, t, schedule, mask_id=MASK)
    ref = loss(logits.double(), x0, z_t, t.double(), schedule, mask_id=MASK)
    assert out.nelbo.dtype == torch.float32 and bool(torch.isfinite(out.nelbo).all()), out.nelbo
    assert torch.allclose(out.nelbo.double(), ref.nelbo, rtol=5e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", HALF)
def test_d3pm_and_genmd4_losses_in_half_precision(dtype):
    schedule = masking.GenMD4Schedule(V, init_exponent=1.5)
    x0, z_t, t, logits = masked_batch(dtype, masking.LinearSchedule())
    out = genmd4_loss(logits, x0, z_t, t, schedule, mask_id=MASK)
    assert out.nelbo.dtype == torch.float32 and bool(torch.isfinite(out.nelbo).all())
    maskable = torch.ones_like(x0, dtype=torch.bool)
    rloo = genmd4_rloo_loss(lambda z, tt: logits.repeat(2, 1, 1), x0, t, schedule, mask_id=MASK,
                            maskable=maskable, generator=gen())
    rloo.loss.backward()
    assert bool(torch.isfinite(rloo.loss)) and bool(torch.isfinite(schedule.raw_exponent.grad).all())
    steps = torch.tensor([1, 2, 1024, 2047, 2048])
    mutual = masking.MutualSchedule(2048)
    alpha_s, alpha_t = mutual.alpha_bar(steps - 1).to(dtype), mutual.alpha_bar(steps).to(dtype)
    z_t = q_sample(x0, alpha_t.float(), mask_id=MASK, protected_ids=(), generator=gen())
    out = d3pm_loss(logits, x0, z_t, alpha_s, alpha_t, num_steps=2048, mask_id=MASK)
    ref = d3pm_loss(logits.double(), x0, z_t, alpha_s.double(), alpha_t.double(), num_steps=2048, mask_id=MASK)
    assert out.loss.dtype == torch.float32 and bool(torch.isfinite(out.nelbo).all())
    assert torch.allclose(out.nelbo.double(), ref.nelbo, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", HALF)
def test_masked_process_in_half_precision(dtype):
    x0 = torch.randint(0, MASK, (3, 40), generator=gen())
    alpha = torch.tensor([0.999, 0.5, 1e-3]).to(dtype)
    z_t = q_sample(x0, alpha, mask_id=MASK, protected_ids=(), generator=gen())
    log_q = q_log_prob(z_t, alpha, mask_id=MASK, maskable=torch.ones_like(x0, dtype=torch.bool))
    ref = q_log_prob(z_t, alpha.double(), mask_id=MASK, maskable=torch.ones_like(x0, dtype=torch.bool))
    assert log_q.dtype == torch.float32 and torch.allclose(log_q.double(), ref, rtol=1e-4)
    logits = (torch.randn(3, 40, V, generator=gen()) * 5e3).to(dtype)
    log_probs = subs_log_probs(logits, z_t, mask_id=MASK)
    assert log_probs.dtype == torch.float32 and not bool(torch.isnan(log_probs).any())


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("sampler", [ddpm_sample, confidence_sample], ids=["ddpm", "confidence"])
def test_masked_samplers_with_half_logits(dtype, sampler):
    z_1 = torch.full((2, 7), MASK)

    def denoise_fn(z_t, t):
        return (torch.randn(*z_t.shape, V, generator=gen()) * 5).to(dtype)

    out, scores = sampler(denoise_fn, z_1, num_steps=5, mask_id=MASK, return_scores=True, generator=gen())
    assert not bool((out == MASK).any()) and bool(torch.isfinite(scores).all())


# --- autocast ------------------------------------------------------------------------------------------
def test_losses_under_cpu_bf16_autocast():
    torch.manual_seed(0)
    net = nn.Linear(8, V)
    x0 = torch.randint(0, MASK, (len(T_EDGES), 9), generator=gen())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t = antithetic_continuous(len(T_EDGES), generator=gen())
        assert t.dtype == torch.float32
        emb = torch.randn(len(T_EDGES), 9, 8, generator=gen())
        logits = net(emb)
        assert logits.dtype == torch.bfloat16
        z_t = q_sample(x0, masking.LogLinearSchedule().alpha(t), mask_id=MASK, protected_ids=(), generator=gen())
        nelbo = mdlm_loss(logits, x0, z_t, t, masking.LogLinearSchedule(), mask_id=MASK).nats_per_token()
        nll = token_nll(logits, x0, torch.ones_like(x0, dtype=torch.bool)).mean_per_token()
        mse = masked_mse(net(emb), logits, torch.ones_like(x0, dtype=torch.bool)).mean_per_token()
        total = nelbo + nll + mse
    assert total.dtype == torch.float32 and bool(torch.isfinite(total))
    total.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in net.parameters())
    sampler = LossAwareSampler(10, history=1)
    sampler.update(torch.arange(10), torch.full((10,), 3.0, dtype=torch.bfloat16))
    steps, weights = sampler.sample(4, generator=gen())
    assert weights.dtype == torch.float32 and torch.allclose(weights, torch.ones(4))
    assert math.isclose(float(sampler._losses.sum()), 30.0)
