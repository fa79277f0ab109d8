"""Noise schedules of continuous (Gaussian) embedding diffusion.

Each schedule is a function ``alpha_bar(u)`` of continuous time u in [0, 1] (the signal level of
``q(z_u | z_0) = N(sqrt(alpha_bar) z_0, (1 - alpha_bar) I)``), discretised to T steps the way
Diffusion-LM / DiffuSeq / Difformer do it: ``beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), max_beta)``
and ``alphas_cumprod = cumprod(1 - beta)``, so step i in {0, ..., T-1} has signal level ~ alpha_bar((i+1)/T).

- :class:`SqrtSchedule`: ``alpha_bar(u) = 1 - sqrt(u + s)``, s = 1e-4 (Li et al. 2022, Diffusion-LM; the
  default of DiffuSeq and Difformer).
- :class:`CosineSchedule`: ``alpha_bar(u) = cos^2(pi/2 (u + s) / (1 + s))``, s = 0.008 (Nichol & Dhariwal 2021).
- :class:`LinearSchedule`: DDPM's linear betas from 1e-4 to 0.02, scaled by 1000 / T (Ho et al. 2020).
"""
from __future__ import annotations

import math

import torch


class GaussianSchedule:
    """Base class: subclasses define :meth:`alpha_bar` on u in [0, 1]."""

    name = "base"
    max_beta = 0.999

    def alpha_bar(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alphas_cumprod(self, num_steps: int) -> torch.Tensor:
        """Cumulative signal levels of the T discrete steps: float64 (T,), strictly decreasing."""
        u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps  # (T+1,)
        ab = self.alpha_bar(u)
        betas = torch.clamp(1.0 - ab[1:] / ab[:-1], max=self.max_beta)  # (T,)
        return torch.cumprod(1.0 - betas, dim=0)


class SqrtSchedule(GaussianSchedule):
    name = "sqrt"

    def __init__(self, s: float = 1e-4):
        self.s = s

    def alpha_bar(self, u: torch.Tensor) -> torch.Tensor:
        return 1.0 - torch.sqrt(u + self.s)


class CosineSchedule(GaussianSchedule):
    name = "cosine"

    def __init__(self, s: float = 0.008):
        self.s = s

    def alpha_bar(self, u: torch.Tensor) -> torch.Tensor:
        f = torch.cos((u + self.s) / (1 + self.s) * math.pi / 2) ** 2
        f0 = math.cos(self.s / (1 + self.s) * math.pi / 2) ** 2
        return f / f0


class LinearSchedule(GaussianSchedule):
    name = "linear"

    def alphas_cumprod(self, num_steps: int) -> torch.Tensor:
        scale = 1000.0 / num_steps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)
        return torch.cumprod(1.0 - betas, dim=0)

    def alpha_bar(self, u: torch.Tensor) -> torch.Tensor:
        # continuous limit of the linear-beta DDPM schedule with T = 1000
        b0, b1 = 0.1, 20.0
        return torch.exp(-(b0 * u + 0.5 * (b1 - b0) * u**2))


SCHEDULES = {cls.name: cls for cls in (SqrtSchedule, CosineSchedule, LinearSchedule)}


def build_schedule(name: str) -> GaussianSchedule:
    """The schedule registered under ``name`` (one of :data:`SCHEDULES`)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name]()
