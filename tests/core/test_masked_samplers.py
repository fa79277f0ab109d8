"""Masked-diffusion samplers: exact recovery with an oracle, no mask left, ddpm_cache == ddpm with fewer
calls, fixed positions, mask-predict schedule, token filtering, semi-autoregressive length."""

import pytest
import torch

from difftext.processes.masked import maskable_positions, masked_prior, subs_masked_log_probs
from difftext.samplers.masked import (
    SAMPLERS,
    ddpm_cache_sample,
    ddpm_sample,
    ddpm_step,
    draw_tokens,
    filter_log_probs,
    get_sampler,
    greedy_masked_tokens,
    semi_ar_sample,
)
from difftext.schedules.masking import (
    CosineSchedule,
    GenMD4Schedule,
    LinearSchedule,
    LogLinearSchedule,
    SpindleSchedule,
)

PAD, BOS, EOS, MASK, VOCAB = 0, 1, 2, 11, 12  # content tokens 3..10


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _data(batch=4, length=10):
    x0 = torch.randint(3, MASK, (batch, length), generator=_gen(0))
    x0[:, 0], x0[:, -1] = BOS, EOS
    x0[0, -3:] = torch.tensor([EOS, PAD, PAD])
    return x0, masked_prior(x0, maskable_positions(x0, (PAD, BOS, EOS)), mask_id=MASK)


def _oracle(x0):
    def denoise_fn(z_t, t):
        return 1e4 * torch.nn.functional.one_hot(x0, VOCAB).float()

    return denoise_fn


def _random_denoiser(z_t, t):
    """Time-agnostic, but depends on the whole of z_t."""
    table = torch.randn(VOCAB, VOCAB, generator=_gen(42))
    h = table[z_t]  # (B, L, V)
    return h + h.mean(1, keepdim=True)


class CountingDenoiser:
    def __init__(self, fn):
        self.fn, self.calls, self.masked = fn, 0, []

    def __call__(self, z_t, t):
        self.calls += 1
        self.masked.append(int((z_t == MASK).sum()))
        return self.fn(z_t, t)


SCHEDULES = {
    "linear": LinearSchedule(),
    "loglinear": LogLinearSchedule(),
    "cosine": CosineSchedule(),
    "genmd4": GenMD4Schedule(VOCAB),
    "spindle": SpindleSchedule(torch.arange(VOCAB).float() ** 2, num_steps=64),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("num_steps", [1, 3, 16])
def test_oracle_recovers_x0_exactly(name, num_steps):
    x0, z_1 = _data()
    out = get_sampler(name)(_oracle(x0), z_1, num_steps=num_steps, mask_id=MASK, generator=_gen(1))
    assert torch.equal(out, x0)


def _sample_random(name, schedule, z_1, seed):
    return get_sampler(name)(
        _random_denoiser, z_1, num_steps=8, mask_id=MASK, schedule=SCHEDULES[schedule], generator=_gen(seed),
        temperature=0.8, top_k=5, top_p=0.9, forbidden_ids=(PAD, BOS, EOS),
    )  # fmt: skip


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_no_mask_left_and_fixed_positions_kept(name, schedule):
    _, z_1 = _data()
    out = _sample_random(name, schedule, z_1, seed=2)
    assert not bool((out == MASK).any())
    fixed = z_1 != MASK
    assert torch.equal(out[fixed], z_1[fixed])
    assert bool((out[~fixed] >= 3).all())  # never a forbidden pad / bos / eos
    assert torch.equal(out, _sample_random(name, schedule, z_1, seed=2))  # the generator fixes the draws


def test_ddpm_cache_matches_ddpm_with_fewer_calls():
    _, z_1 = _data(batch=3, length=8)
    plain, cached = CountingDenoiser(_random_denoiser), CountingDenoiser(_random_denoiser)
    out_plain = ddpm_sample(plain, z_1, num_steps=64, mask_id=MASK, generator=_gen(3))
    out_cached = ddpm_cache_sample(cached, z_1, num_steps=64, mask_id=MASK, generator=_gen(3))
    assert torch.equal(out_plain, out_cached)
    assert cached.calls < plain.calls
    assert cached.calls <= 1 + int((z_1 == MASK).sum())  # at most one call per change of z


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_logits_at_masked_rows_only_give_the_same_samples(name):
    x0, z_1 = _data(batch=6, length=12)

    def rows_only(z_t, t):
        return _random_denoiser(z_t, t)[z_t == MASK]  # (M, V)

    kwargs = dict(num_steps=4, mask_id=MASK, forbidden_ids=(PAD, BOS), return_scores=True)
    if name != "confidence":
        kwargs["schedule"] = LinearSchedule()
    full = get_sampler(name)(_random_denoiser, z_1, generator=_gen(3), **kwargs)
    short = get_sampler(name)(rows_only, z_1, generator=_gen(3), **kwargs)
    assert torch.equal(full[0], short[0]) and not bool((full[0] == MASK).any())
    torch.testing.assert_close(full[1], short[1])


def test_greedy_tokens_match_the_normalised_argmax():
    rows = 3.0 * torch.randn(200, VOCAB, generator=_gen(11))
    rows[:50, MASK] += 30.0  # [M] takes nearly all the raw mass: recomputed exactly
    rows[50:80, PAD] += 4.0  # pad wins the raw argmax
    rows[80:90, BOS] = float("-inf")
    rows[90:100] = rows[90:100].round()  # ties
    tokens, log_prob = greedy_masked_tokens(rows, (MASK, PAD, BOS))
    exact = subs_masked_log_probs(rows, mask_id=MASK, forbidden_ids=(PAD, BOS))
    best, expected = exact.max(-1)
    assert torch.equal(tokens, expected)
    torch.testing.assert_close(log_prob, best, rtol=0, atol=1e-5)
    half_tokens, half_lp = greedy_masked_tokens(rows.bfloat16(), (MASK, PAD, BOS))
    assert half_lp.dtype == torch.float32 and float((half_tokens == tokens).float().mean()) > 0.9


def test_ddpm_step_unmasks_the_expected_fraction():
    z_t = torch.full((200, 100), MASK)
    t, s = torch.full((200,), 0.8), torch.full((200,), 0.6)
    z_s = ddpm_step(
        _random_denoiser(z_t, t),
        z_t,
        t,
        s,
        schedule=LinearSchedule(),
        mask_id=MASK,
        maskable=z_t == MASK,
        generator=_gen(4),
    )
    revealed = (z_s != MASK).float().mean().item()
    assert revealed == pytest.approx((0.4 - 0.2) / 0.8, abs=0.01)  # (alpha_s - alpha_t) / (1 - alpha_t)


def test_confidence_sampler_remasks_a_linearly_decreasing_count():
    x0, z_1 = _data(batch=1, length=22)  # 18 positions to generate between bos and eos, pad
    counting = CountingDenoiser(_random_denoiser)
    out = get_sampler("confidence")(counting, z_1, num_steps=4, mask_id=MASK)
    assert counting.masked == [18, 18 * 3 // 4, 18 * 2 // 4, 18 // 4]
    assert not bool((out == MASK).any())


def test_filtering_and_drawing_tokens():
    log_probs = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(40000, 4)
    tokens, log_p = draw_tokens(log_probs, generator=_gen(5))
    freq = torch.bincount(tokens, minlength=4).float() / 40000
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.01, rtol=0)
    torch.testing.assert_close(log_p, log_probs.gather(-1, tokens[:, None]).squeeze(-1))
    top_k = filter_log_probs(log_probs[:1], top_k=2).exp()
    torch.testing.assert_close(top_k, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    top_p = filter_log_probs(log_probs[:1], top_p=0.7).exp()  # keeps 0.5 and 0.3
    torch.testing.assert_close(top_p, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    cold = filter_log_probs(log_probs[:1], temperature=0.5).exp()
    torch.testing.assert_close(cold, torch.tensor([[0.25, 0.09, 0.0225, 0.0025]]) / 0.365)
    assert draw_tokens(log_probs[:3], temperature=0)[0].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="top_p"):
        filter_log_probs(log_probs, top_p=0.0)


def _successor_denoiser(z_t, t):
    """Knows that token l+1 = token l + 1 (mod 8, shifted to 3..10): fills from the left neighbour."""
    z = z_t.clone()
    for col in range(1, z.size(1)):
        z[:, col] = torch.where(z[:, col] == MASK, (z[:, col - 1] - 3 + 1) % 8 + 3, z[:, col])
    assert z_t.size(1) <= 6, "window longer than the model length"
    return 1e4 * torch.nn.functional.one_hot(z, VOCAB).float()


@pytest.mark.parametrize("sampler", ["ddpm", "confidence"])
@pytest.mark.parametrize("total_length", [7, 23])
def test_semi_autoregressive_generates_any_length(sampler, total_length):
    prefix = torch.tensor([[3], [8]])
    out = semi_ar_sample(
        _successor_denoiser,
        prefix,
        total_length=total_length,
        model_length=6,
        block_length=4,
        num_steps=4,
        mask_id=MASK,
        sampler=sampler,
        generator=_gen(6),
    )
    assert out.shape == (2, total_length)
    expected = (prefix - 3 + torch.arange(total_length)) % 8 + 3
    assert torch.equal(out, expected)


def test_bad_arguments_raise():
    _, z_1 = _data()
    with pytest.raises(ValueError, match="unknown masked-diffusion sampler 'ancestral'"):
        get_sampler("ancestral")
    with pytest.raises(ValueError, match="num_steps"):
        ddpm_sample(_random_denoiser, z_1, num_steps=0, mask_id=MASK)
    for sampler in SAMPLERS.values():  # the greedy path and the sampling path name the same problem
        with pytest.raises(ValueError, match=r"mask_id=12 is outside the model's vocabulary of size 12"):
            sampler(lambda z_t, t: torch.zeros(*z_t.shape, VOCAB), torch.where(z_1 == MASK, 12, z_1), num_steps=2,
                    mask_id=12)
    with pytest.raises(ValueError, match="block_length"):
        semi_ar_sample(
            _random_denoiser,
            z_1[:, :1],
            total_length=20,
            model_length=4,
            block_length=5,
            num_steps=2,
            mask_id=MASK,
        )
