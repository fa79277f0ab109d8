"""Continuous diffusion maths: schedules, q(z_t|z_0), posterior, partial noising, sampling, sampler state."""
import math

import pytest
import torch

from difftext.losses.continuous import masked_mse, prior_loss, token_nll
from difftext.processes.gaussian import GaussianDiffusion, NoiseFactor
from difftext.samplers.continuous import nearest_embedding, respaced_steps, sample
from difftext.schedules.gaussian import SCHEDULES, SqrtSchedule, build_schedule
from difftext.time_samplers import LossAwareSampler, antithetic_continuous

T = 2000


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_boundaries_and_monotonicity(name):
    ab = build_schedule(name).alphas_cumprod(T)
    assert ab.shape == (T,)
    assert ab[0] > 0.98, "first step must be almost clean"
    assert ab[-1] < 0.01, "last step must be almost pure noise"
    assert torch.all(ab[1:] < ab[:-1]), "signal level must strictly decrease"


def test_sqrt_schedule_matches_closed_form():
    sched = SqrtSchedule()
    ab = sched.alphas_cumprod(T)
    for i in (0, 10, 500, 1500):  # away from the clipped tail the product telescopes exactly
        expect = (1 - math.sqrt((i + 1) / T + 1e-4)) / (1 - math.sqrt(1e-4))  # relative to alpha_bar(0)
        assert ab[i].item() == pytest.approx(expect, rel=1e-9)


def test_unknown_schedule_message():
    with pytest.raises(ValueError, match="unknown noise schedule 'nope'"):
        build_schedule("nope")


@pytest.mark.parametrize("factor,vp", [(1.0, False), (4.0, False), (4.0, True)])
def test_q_sample_mean_and_variance_empirically(factor, vp):
    diff = GaussianDiffusion(SqrtSchedule(), T, NoiseFactor(factor, vp))
    g = torch.Generator().manual_seed(0)
    z0 = torch.tensor([1.5, -0.5]).view(1, 1, 2).expand(200_000, 1, 2).contiguous()
    t = torch.full((z0.shape[0],), 700, dtype=torch.long)
    z_t = diff.q_sample(z0, t, generator=g)
    ab = diff.alphas_cumprod[700].item()
    if vp:
        abp = ab / (factor**2 - (factor**2 - 1) * ab)
        mean_coef, var = math.sqrt(abp), 1 - abp
        snr = abp / (1 - abp)
        assert snr == pytest.approx(ab / (factor**2 * (1 - ab)), rel=1e-9), "VP keeps F's SNR"
    else:
        mean_coef, var = math.sqrt(ab), factor**2 * (1 - ab)
    emp_mean = z_t.mean(0).squeeze()
    emp_var = z_t.var(0).squeeze()
    assert torch.allclose(emp_mean, mean_coef * torch.tensor([1.5, -0.5]), atol=4 * math.sqrt(var / 2e5) + 1e-3)
    assert torch.allclose(emp_var, torch.full((2,), var), rtol=0.02)


def test_posterior_mean_is_ddpm_formula_for_adjacent_steps():
    diff = GaussianDiffusion(SqrtSchedule(), T)
    ab = diff.alphas_cumprod
    g = torch.Generator().manual_seed(1)
    z0, z_t = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    t = torch.tensor([1, 600, 1999])
    mean, var = diff.posterior(z0, z_t, t, t - 1)
    for b, ti in enumerate(t.tolist()):
        beta = 1 - ab[ti] / ab[ti - 1]
        c0 = beta * ab[ti - 1].sqrt() / (1 - ab[ti])
        ct = (1 - ab[ti - 1]) * (1 - beta).sqrt() / (1 - ab[ti])
        expect = (c0 * z0[b] + ct * z_t[b]).float()
        assert torch.allclose(mean[b], expect, atol=1e-5)
        assert var[b].item() == pytest.approx((beta * (1 - ab[ti - 1]) / (1 - ab[ti])).item(), rel=1e-4)


def test_posterior_with_noise_factor_against_gaussian_conditioning():
    """Direct computation: condition the joint Gaussian of (z_s, z_t) given z0, for a scalar."""
    diff = GaussianDiffusion(SqrtSchedule(), T, NoiseFactor(4.0))
    s, t = 300, 900
    a_s, a_t = diff.a[s].item(), diff.a[t].item()
    v_s, v_t = diff.sigma[s].item() ** 2, diff.sigma[t].item() ** 2
    cov_st = (a_t / a_s) * v_s  # z_t = (a_t/a_s) z_s + independent noise
    z0, zt = 0.7, -1.3
    mean = a_s * z0 + cov_st / v_t * (zt - a_t * z0)
    var = v_s - cov_st**2 / v_t
    m, v = diff.posterior(torch.full((1, 1, 1), z0), torch.full((1, 1, 1), zt), torch.tensor([t]), torch.tensor([s]))
    assert m.item() == pytest.approx(mean, rel=1e-4)
    assert v.item() == pytest.approx(var, rel=1e-4)


def test_partial_noising_keeps_source_exactly():
    diff = GaussianDiffusion(SqrtSchedule(), T, NoiseFactor(4.0))
    z0 = torch.randn(2, 6, 8)
    keep = torch.tensor([[True, True, True, False, False, False], [True, False, False, False, False, False]])
    z_t = diff.q_sample(z0, torch.tensor([1999, 1000]), keep_mask=keep)
    assert torch.equal(z_t[keep], z0[keep])
    assert not torch.allclose(z_t[~keep], z0[~keep])


def test_respaced_steps():
    assert respaced_steps(2000, 1) == [1999]
    steps = respaced_steps(2000, 5)
    assert steps[0] == 1999 and steps[-1] == 0 and len(set(steps)) == 5
    assert respaced_steps(10, 10) == list(range(9, -1, -1))
    for bad in (0, 2001):
        with pytest.raises(ValueError, match="decoding steps must be between 1 and"):
            respaced_steps(2000, bad)


@pytest.mark.parametrize("steps", [1, 5, 50])
@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_oracle_denoiser_recovers_tokens(steps, method):
    """A denoiser that returns the true z0 (+ error) is decoded back to the target tokens exactly."""
    num_steps = 50  # N = T included
    diff = GaussianDiffusion(SqrtSchedule(), num_steps, NoiseFactor(4.0))
    g = torch.Generator().manual_seed(3)
    emb = torch.nn.functional.layer_norm(torch.randn(30, 16, generator=g), (16,))
    target = torch.randint(0, 30, (4, 7), generator=g)
    z0 = emb[target]
    calls = []

    def oracle(z_t, t, sc):
        calls.append(int(t[0]))
        return z0 + 0.3 * torch.randn(z0.shape, generator=g)  # imperfect: clamping must fix it

    out = sample(oracle, diff, diff.prior_sample(z0.shape, generator=g), steps, method=method, clamp_embeddings=emb)
    assert torch.equal(nearest_embedding(out, emb), target)
    assert len(calls) == steps and calls[0] == num_steps - 1 and calls[-1] == (0 if steps > 1 else num_steps - 1)


def test_clamp_mask_clamps_only_those_positions():
    """Position-wise denoiser: the clamped positions come out as with clamping everywhere, the others are
    the denoiser's output, and the returned indices are -1 there."""
    diff = GaussianDiffusion(SqrtSchedule(), 30)
    g = torch.Generator().manual_seed(4)
    emb = torch.randn(20, 6, generator=g)
    mask = torch.rand(3, 8, generator=g) < 0.6
    mask[0, 0], mask[0, 1] = True, False

    def fn(z_t, t, sc):  # each position depends on itself only
        return torch.tanh(z_t) * 2.0 + 0.1

    z_T = diff.prior_sample((3, 8, 6), generator=torch.Generator().manual_seed(1))
    run = dict(clamp_embeddings=emb, return_unclamped=True, return_indices=True,
               generator=torch.Generator().manual_seed(2))
    full, _, full_idx = sample(fn, diff, z_T, 5, **run)
    run["generator"] = torch.Generator().manual_seed(2)
    part, unclamped, part_idx = sample(fn, diff, z_T, 5, clamp_mask=mask, **run)
    assert torch.equal(part[mask], full[mask]) and torch.equal(part_idx[mask], full_idx[mask])
    assert torch.equal(part[~mask], unclamped[~mask]) and bool((part_idx[~mask] == -1).all())


def test_sampler_resets_source_positions_and_self_conditions():
    diff = GaussianDiffusion(SqrtSchedule(), 20)
    z0 = torch.randn(2, 5, 4)
    keep = torch.zeros(2, 5, dtype=torch.bool)
    keep[:, :2] = True
    seen = []

    def fn(z_t, t, sc):
        assert torch.equal(z_t[keep], z0[keep])
        seen.append(sc)
        return torch.zeros_like(z_t)

    out = sample(fn, diff, torch.randn(2, 5, 4), 4, self_condition=True, keep_mask=keep, z0_fixed=z0)
    assert seen[0] is None and all(s is not None for s in seen[1:])
    assert torch.equal(out[keep], z0[keep])


def test_nearest_embedding_matches_cdist():
    g = torch.Generator().manual_seed(5)
    emb, z = torch.randn(50, 8, generator=g), torch.randn(3, 7, 8, generator=g)
    expect = torch.cdist(z, emb.expand(3, 50, 8)).argmin(-1)
    assert torch.equal(nearest_embedding(z, emb), expect)
    # half-precision inputs are compared in float32, so rounding only perturbs near-ties
    agree = (nearest_embedding(z.bfloat16(), emb.bfloat16()) == expect).float().mean()
    assert agree > 0.9


def test_loss_terms_on_hand_example():
    z0 = torch.zeros(1, 2, 2)
    z0_hat = torch.tensor([[[1.0, 1.0], [3.0, 3.0]]])
    mse = masked_mse(z0_hat, z0, torch.tensor([[True, False]]))
    assert mse.per_example.item() == 1.0 and mse.tokens.item() == 1
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    nll = token_nll(logits, torch.tensor([[0]]), torch.tensor([[True]]))
    assert nll.per_example.item() == pytest.approx(math.log(2))
    smoothed = token_nll(logits, torch.tensor([[0]]), torch.tensor([[True]]), label_smoothing=0.1)
    expect = 0.9 * math.log(2) + 0.1 * (math.log(2) + 2 * math.log(4)) / 3
    assert smoothed.per_example.item() == pytest.approx(expect)
    assert prior_loss(torch.ones(1, 3, 4), 0.5, torch.ones(1, 3, dtype=torch.bool)).mean_per_token().item() == 0.25


def test_loss_aware_sampler_state_round_trips_through_checkpoint(tmp_path):
    s = LossAwareSampler(8, history=3)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        t, w = s.sample(16, generator=g)
        assert torch.allclose(w, torch.ones(16)) or s.warmed_up
        s.update(t, (t.float() + 1) ** 2)
    assert s.warmed_up
    p = s.weights()
    assert p.sum().item() == pytest.approx(1.0) and p[7] > p[0], "high-loss steps are sampled more"
    torch.save({"model": s.state_dict()}, tmp_path / "ck.pt")
    restored = LossAwareSampler(8, history=3)
    restored.load_state_dict(torch.load(tmp_path / "ck.pt", weights_only=True)["model"])
    assert torch.equal(restored.weights(), p)
    t1, _ = s.sample(32, generator=torch.Generator().manual_seed(9))
    t2, _ = restored.sample(32, generator=torch.Generator().manual_seed(9))
    assert torch.equal(t1, t2)


def test_loss_aware_importance_weights_are_unbiased():
    s = LossAwareSampler(4, history=1, uniform_prob=0.0)
    s.update(torch.arange(4), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    t, w = s.sample(200_000, generator=torch.Generator().manual_seed(0))
    f = torch.tensor([5.0, 1.0, 2.0, 7.0])
    assert (w * f[t]).mean().item() == pytest.approx(f.mean().item(), rel=0.02)


def test_antithetic_times_cover_strata():
    t = antithetic_continuous(8, eps=0.0, generator=torch.Generator().manual_seed(0))
    assert sorted((t * 8).floor().long().tolist()) == list(range(8))


def test_clamp_final_false_leaves_only_the_last_step_unclamped():
    """The generator rounds the last z0_hat itself: every earlier step is clamped as before, the last is not."""
    diff = GaussianDiffusion(SqrtSchedule(), 30)
    emb = torch.randn(20, 6, generator=torch.Generator().manual_seed(4))

    def fn(z_t, t, sc):
        return torch.tanh(z_t) * 2.0 + 0.1

    z_T = diff.prior_sample((3, 8, 6), generator=torch.Generator().manual_seed(1))
    run = dict(clamp_embeddings=emb, return_unclamped=True)
    clamped, unclamped = sample(fn, diff, z_T, 5, generator=torch.Generator().manual_seed(2), **run)
    last = sample(fn, diff, z_T, 5, generator=torch.Generator().manual_seed(2), clamp_final=False, **run)
    assert torch.equal(last[0], unclamped) and torch.equal(last[1], unclamped)
    assert torch.equal(emb[nearest_embedding(last[0], emb)], clamped)  # the same trajectory up to the last clamp
    with pytest.raises(ValueError, match="clamp_final"):
        sample(fn, diff, z_T, 5, clamp_embeddings=emb, clamp_final=False, return_indices=True)


def test_early_stop_leaves_out_the_last_steps():
    """Difformer's "20 steps, early stop 5" (its reference generator runs range(5, 20)[::-1]): the first 15 steps of
    the 20-step schedule, noisiest first, and the output is the 15th call's z0_hat (clamped as every other)."""
    diff = GaussianDiffusion(SqrtSchedule(), 2000)
    emb = torch.randn(20, 6, generator=torch.Generator().manual_seed(4))
    calls, outputs = [], []

    def fn(z_t, t, sc):
        calls.append(int(t[0]))
        outputs.append(torch.tanh(z_t) * 2.0 + 0.01 * len(calls))
        return outputs[-1]

    z_T = diff.prior_sample((3, 8, 6), generator=torch.Generator().manual_seed(1))
    out, unclamped = sample(fn, diff, z_T, 20, early_stop=5, clamp_embeddings=emb, return_unclamped=True)
    assert calls == respaced_steps(2000, 20)[:15]
    assert torch.equal(unclamped, outputs[14]) and torch.equal(out, emb[nearest_embedding(unclamped, emb)])
    calls.clear()
    sample(fn, diff, z_T, 20, clamp_embeddings=emb)
    assert len(calls) == 20
    for bad in (20, -1):
        with pytest.raises(ValueError, match="leaves no step of 20"):
            sample(fn, diff, z_T, 20, early_stop=bad)
