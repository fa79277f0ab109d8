"""MaskedDiffusion (schedule + time sampling + objective) with hand-checkable denoisers, and sampler scores."""
import math

import pytest
import torch

from difftext.masked_diffusion import COMPATIBLE, MaskedDiffusion, build_masking_schedule
from difftext.samplers.masked import confidence_sample, ddpm_sample, semi_ar_sample

V, MASK, PAD = 12, 11, 0  # vocabulary includes [M] as its last id
PAIRS = [(objective, schedule) for objective, schedules in COMPATIBLE.items() for schedule in schedules]


def make(objective, schedule_name, **kwargs):
    counts = torch.arange(V, dtype=torch.float64) * 10  # spindle: a frequency spread
    schedule = build_masking_schedule(schedule_name, vocab_size=V, num_steps=64, counts=counts)
    return MaskedDiffusion(schedule, objective=objective, mask_id=MASK, **kwargs)


def data(batch=2048, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(1, MASK, (batch, length), generator=g)
    x0[:, -1] = PAD  # a padded position: never masked, never counted
    return x0, x0 != PAD


def oracle(x0):
    def denoise(z_t, t):
        reps = z_t.size(0) // x0.size(0)
        return torch.nn.functional.one_hot(x0.repeat(reps, 1), V).float() * 50.0

    return denoise


def uniform(z_t, t):
    return torch.zeros(*z_t.shape, V)


@pytest.mark.parametrize("objective,schedule", PAIRS)
def test_denoiser_that_knows_the_answer_has_bound_near_zero(objective, schedule):
    x0, maskable = data(batch=256)
    out = make(objective, schedule)(oracle(x0), x0, maskable, generator=torch.Generator().manual_seed(1))
    assert float(out.nats_per_token().detach()) < 1e-6
    assert torch.equal(out.num_tokens, maskable.sum(-1))


@pytest.mark.parametrize("objective,schedule", PAIRS)
def test_uniform_denoiser_bound_is_log_v_per_token(objective, schedule):
    """Uniform over the V-1 non-mask symbols costs log(V-1) per masked token; every schedule's weight
    integrates the masking probability to exactly one, so the bound is log(V-1) per token."""
    x0, maskable = data()
    out = make(objective, schedule)(uniform, x0, maskable, generator=torch.Generator().manual_seed(2))
    if schedule == "cosine":  # weight (pi/2) tan(.) is heavy-tailed near t = 0: a looser Monte-Carlo check
        assert float(out.nats_per_token().detach()) == pytest.approx(math.log(V - 1), rel=0.15)
    else:
        assert float(out.nats_per_token().detach()) == pytest.approx(math.log(V - 1), rel=0.05)


@pytest.mark.parametrize("objective,schedule", PAIRS + [("d3pm", "zero-spindle")])
def test_token_weight_is_the_expected_weight_of_a_tokens_cross_entropy_in_the_loss(objective, schedule):
    """``loss`` per maskable token of a uniform denoiser is token_weight * log(V-1): what a model's length
    term is weighed against. d3pm's single-step terms are ~1/T of the continuous-time bounds."""
    counts_zero = schedule == "zero-spindle"
    diffusion = make(objective, "spindle" if counts_zero else schedule)
    if counts_zero:
        diffusion.schedule.counts.zero_()
    x0, maskable = data(batch=8192)
    out = diffusion(uniform, x0, maskable, generator=torch.Generator().manual_seed(3))
    per_token = float(out.loss.detach()) / float(maskable.sum())
    expected = {"d3pm": 1 / 64 + 1e-2 * 65 / 128}.get(objective, 1.0)
    assert diffusion.token_weight == pytest.approx(expected)
    rel = 0.15 if schedule == "cosine" else 0.05
    assert per_token == pytest.approx(diffusion.token_weight * math.log(V - 1), rel=rel)


@pytest.mark.parametrize("objective,schedule", PAIRS)
def test_padding_is_never_masked_and_loss_is_differentiable(objective, schedule):
    x0, maskable = data(batch=64)
    seen = []
    logits = torch.zeros(V, requires_grad=True)

    def denoise(z_t, t):
        seen.append(z_t)
        assert bool(((t > 0) & (t <= 1)).all())
        return logits.expand(*z_t.shape, V)

    diffusion = make(objective, schedule)
    out = diffusion(denoise, x0, maskable)
    out.loss.backward()
    z = torch.cat(seen)
    assert not bool((z[:, -1] == MASK).any()) and bool((z == MASK).any())
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    if schedule == "genmd4":
        assert diffusion.schedule.raw_exponent.grad is not None


def test_stateful_schedules_live_in_the_state_dict():
    assert "schedule.counts" in make("d3pm", "spindle").state_dict()
    assert "schedule.raw_exponent" in make("genmd4", "genmd4").state_dict()
    assert make("mdlm", "loglinear").state_dict() == {}


def test_d3pm_steps_are_integers_in_1_to_T():
    x0, maskable = data(batch=512)
    times = []
    make("d3pm", "mutual")(lambda z, t: times.append(t) or uniform(z, t), x0, maskable)
    steps = times[0] * 64
    assert torch.allclose(steps, steps.round()) and steps.min() >= 1 and steps.max() <= 64


def test_antithetic_times_cover_every_stratum():
    t = make("mdlm", "loglinear").sample_time(8, "cpu", generator=torch.Generator().manual_seed(0))
    strata = ((t - 1e-3) / (1 - 1e-3) * 8).floor().long().sort().values
    assert strata.tolist() == list(range(8))


def test_incompatible_objective_and_schedule_is_refused():
    with pytest.raises(ValueError, match="needs a mutual / spindle schedule"):
        make("d3pm", "loglinear")


@pytest.mark.parametrize("sampler", [ddpm_sample, confidence_sample])
def test_samplers_return_the_log_prob_of_each_generated_token(sampler):
    x0, _ = data(batch=4)
    z_1 = torch.where(x0 != PAD, torch.full_like(x0, MASK), x0)
    logits = torch.randn(*x0.shape, V)
    tokens, scores = sampler(
        lambda z, t: logits, z_1, num_steps=3, mask_id=MASK, return_scores=True, temperature=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    log_probs = torch.log_softmax(logits.index_fill(-1, torch.tensor([MASK]), float("-inf")), -1)
    expected = log_probs.gather(-1, tokens[..., None]).squeeze(-1)
    generated = z_1 == MASK
    assert torch.allclose(scores[generated], expected[generated], atol=1e-5)
    assert bool((scores[~generated] == 0).all())


def test_semi_ar_scores_cover_the_whole_length():
    prefix = torch.randint(1, MASK, (2, 3))
    out, scores = semi_ar_sample(
        lambda z, t: torch.zeros(*z.shape, V), prefix, total_length=17, model_length=8, block_length=4,
        num_steps=2, mask_id=MASK, return_scores=True,
    )
    assert out.shape == scores.shape == (2, 17)
    assert bool((scores[:, :3] == 0).all()) and bool((scores[:, 3:] < 0).all())
