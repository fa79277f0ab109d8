"""One training step of a masked-diffusion model: time sampling, forward process and objective.

:class:`MaskedDiffusion` ties a masking schedule (``difftext.schedules.masking``) to one of the
objectives of ``difftext.losses.masked`` so that a model only supplies its denoiser:

- ``mdlm`` (MDLM, Sahoo et al. 2024): t ~ antithetic U(eps, 1], z_t ~ q(z_t | x0), the
  Rao-Blackwellised continuous-time NELBO through sigma(t);
- ``md4`` (MD4, Shi et al. 2024): the same bound written as MD4's weighted-CE integrand;
- ``d3pm`` (D3PM absorbing / DiffusionBERT, He et al. 2023): integer step t ~ U{1..T}, the discrete
  term L_{t-1} plus lambda_hybrid * CE; the schedule is ``mutual`` or ``spindle`` (per token);
- ``genmd4`` (GenMD4, Shi et al. 2024 sec. 6): learnable per-token exponents, the NELBO with the
  REINFORCE leave-one-out gradient over ``rloo_samples`` mask samples per sequence.

It is an ``nn.Module`` so that state owned by the schedule (spindle token counts, GenMD4 exponents)
is saved in, and restored from, the state dict of the model that owns it.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from difftext.losses.masked import MaskedLoss, d3pm_loss, genmd4_rloo_loss, md4_loss, mdlm_loss
from difftext.processes.masked import q_sample
from difftext.schedules.masking import (
    CosineSchedule,
    GenMD4Schedule,
    LinearSchedule,
    LogLinearSchedule,
    MutualSchedule,
    PolynomialSchedule,
    SpindleSchedule,
)
from difftext.time_samplers import antithetic_continuous, uniform_continuous, uniform_discrete

DenoiseFn = Callable[[Tensor, Tensor], Tensor]  # (z_t (B, L), t (B,) in [0, 1]) -> logits (B, L, V) or (M, V)

OBJECTIVES = ("mdlm", "md4", "d3pm", "genmd4")
SCHEDULES = ("loglinear", "linear", "cosine", "polynomial", "mutual", "spindle", "genmd4")
# the schedules each objective is defined for
COMPATIBLE = {
    "mdlm": ("loglinear", "linear", "cosine", "polynomial"),
    "md4": ("loglinear", "linear", "cosine", "polynomial"),
    "d3pm": ("mutual", "spindle"),
    "genmd4": ("genmd4",),
}


def build_masking_schedule(
    name: str,
    *,
    vocab_size: int,
    num_steps: int = 2048,
    exponent: float = 1.0,
    eps: float = 1e-3,
    spindle_lambda: float = 0.3,
    counts: Optional[Tensor] = None,
):
    """A schedule by name. ``counts`` (V,): training token counts for ``spindle`` (zeros if None)."""
    if name == "spindle":
        counts = torch.zeros(vocab_size) if counts is None else counts
        return SpindleSchedule(counts, num_steps=num_steps, lam=spindle_lambda)
    builders = {
        "loglinear": lambda: LogLinearSchedule(eps),
        "linear": LinearSchedule,
        "cosine": CosineSchedule,
        "polynomial": lambda: PolynomialSchedule(exponent),
        "mutual": lambda: MutualSchedule(num_steps),
        "genmd4": lambda: GenMD4Schedule(vocab_size, init_exponent=exponent),
    }
    if name not in builders:
        raise ValueError(f"unknown masking schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return builders[name]()


class MaskedDiffusion(nn.Module):
    """Schedule + time sampler + objective. ``forward(denoise_fn, x0, maskable)`` -> :class:`MaskedLoss`."""

    def __init__(
        self,
        schedule,
        *,
        objective: str,
        mask_id: int,
        time_eps: float = 1e-3,
        antithetic: bool = True,
        hybrid_lambda: float = 1e-2,
        rloo_samples: int = 2,
    ):
        super().__init__()
        name = _schedule_name(schedule)
        if objective not in COMPATIBLE:
            raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if name not in COMPATIBLE[objective]:
            raise ValueError(
                f"the {objective} objective needs a {' / '.join(COMPATIBLE[objective])} schedule, not {name}"
            )
        if isinstance(schedule, nn.Module):
            self.schedule = schedule  # registered: its buffers / parameters live in the state dict
        else:
            self._plain_schedule = schedule
        self.objective, self.mask_id, self.time_eps = objective, mask_id, time_eps
        self.antithetic, self.hybrid_lambda, self.rloo_samples = antithetic, hybrid_lambda, rloo_samples

    @property
    def sampling_schedule(self):
        """The schedule the samplers use (continuous time; per-token for spindle and GenMD4)."""
        return self.schedule if "schedule" in self._modules else self._plain_schedule

    @property
    def discrete_steps(self) -> Optional[int]:
        """T of the discrete-time (d3pm) objective, else None."""
        return self.sampling_schedule.num_steps if self.objective == "d3pm" else None

    @property
    def token_weight(self) -> float:
        """Expected weight of a maskable token's cross-entropy in ``loss``, over t and the mask draw.

        1 for the continuous-time bounds (mdlm, md4, genmd4): int_0^1 -alpha'_t dt = alpha_0 - alpha_1 = 1.
        d3pm trains on one term L_{t-1} of a T-step bound: E_t[(1 - alpha_bar_t) / t] = 1/T, plus the
        hybrid CE on the masked tokens, lambda * E_t[1 - alpha_bar_t] = lambda (T + 1) / (2T) (mutual; the
        spindle's offsets are centred per sequence) -- about 1/180 of the others at T = 2048, lambda = 1e-2.
        A model weighs its other loss terms (a length predictor) relative to it, so that their factors mean
        the same for every objective.
        """
        if self.objective != "d3pm":
            return 1.0
        steps = self.discrete_steps
        return 1.0 / steps + self.hybrid_lambda * (steps + 1) / (2 * steps)

    def sample_time(self, batch_size: int, device, generator: Optional[torch.Generator] = None) -> Tensor:
        """Continuous training times (B,) in [eps, 1]: antithetic (MDLM) or plain uniform."""
        draw = antithetic_continuous if self.antithetic else uniform_continuous
        return draw(batch_size, eps=self.time_eps, device=device, generator=generator)

    def forward(
        self,
        denoise_fn: DenoiseFn,
        x0: Tensor,
        maskable: Tensor,
        *,
        generator: Optional[torch.Generator] = None,
    ) -> MaskedLoss:
        """x0 (B, L) LongTensor, maskable (B, L) bool (never masked: False). One Monte-Carlo time per row."""
        if self.objective == "d3pm":
            return self._d3pm(denoise_fn, x0, maskable, generator)
        t = self.sample_time(x0.size(0), x0.device, generator)  # (B,)
        schedule = self.sampling_schedule
        if self.objective == "genmd4":
            return genmd4_rloo_loss(
                denoise_fn, x0, t, schedule, mask_id=self.mask_id, maskable=maskable,
                num_samples=self.rloo_samples, generator=generator,
            )
        z_t = q_sample(x0, schedule.alpha(t), mask_id=self.mask_id, maskable=maskable, generator=generator)
        loss = mdlm_loss if self.objective == "mdlm" else md4_loss
        return loss(denoise_fn(z_t, t), x0, z_t, t, schedule, mask_id=self.mask_id, maskable=maskable)

    def _d3pm(self, denoise_fn, x0, maskable, generator) -> MaskedLoss:
        schedule, num_steps = self.sampling_schedule, self.discrete_steps
        step = uniform_discrete(x0.size(0), num_steps, device=x0.device, generator=generator) + 1  # (B,) 1..T
        if schedule.per_token:  # spindle: (B, L)
            alpha_s, alpha_t = (schedule.alpha_bar(k, x0, maskable) for k in (step - 1, step))
        else:
            alpha_s, alpha_t = schedule.alpha_bar(step - 1), schedule.alpha_bar(step)
        z_t = q_sample(x0, alpha_t, mask_id=self.mask_id, maskable=maskable, generator=generator)
        logits = denoise_fn(z_t, step.float() / num_steps)
        return d3pm_loss(
            logits, x0, z_t, alpha_s, alpha_t, num_steps=num_steps, mask_id=self.mask_id, maskable=maskable,
            hybrid_lambda=self.hybrid_lambda,
        )


def _schedule_name(schedule) -> str:
    names = {
        LogLinearSchedule: "loglinear", MutualSchedule: "mutual", LinearSchedule: "linear",
        CosineSchedule: "cosine", PolynomialSchedule: "polynomial", SpindleSchedule: "spindle",
        GenMD4Schedule: "genmd4",
    }
    return names[type(schedule)]
