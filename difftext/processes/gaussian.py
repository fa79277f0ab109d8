"""Gaussian forward process over embeddings, its posterior, and the DDPM/DDIM reverse updates.

The process at step i is ``z_i = a_i z_0 + sigma_i eps`` with ``eps ~ N(0, I)``:
- plain noise factor F (Difformer, Gao et al. 2024, sec. 3.3): ``a = sqrt(alpha_bar)``,
  ``sigma = F sqrt(1 - alpha_bar)``, so SNR = alpha_bar / (F^2 (1 - alpha_bar));
- variance-preserving noise factor: ``alpha_bar' = alpha_bar / (F^2 - (F^2 - 1) alpha_bar)``,
  ``a = sqrt(alpha_bar')``, ``sigma = sqrt(1 - alpha_bar')``: the same SNR with unit total variance.
F = 1 is the ordinary DDPM process of Diffusion-LM / DiffuSeq.

Partial noising (DiffuSeq, Gong et al. 2023, sec. 3): positions where ``keep_mask`` is True (the
source) are reset to their clean z_0 after every noising and every reverse step.

The posterior ``q(z_s | z_t, z_0)`` for any s < t (respaced decoding) is the Gaussian of Kingma et
al. 2021 (VDM, eq. 20-ish): with ``a_ts = a_t / a_s`` and ``sigma2_ts = sigma_t^2 - a_ts^2 sigma_s^2``,
``mean = (a_ts sigma_s^2 z_t + a_s sigma2_ts z_0) / sigma_t^2`` and
``var = sigma2_ts sigma_s^2 / sigma_t^2``; for s = t - 1 and F = 1 it is DDPM's eq. 7.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from difftext.schedules.gaussian import GaussianSchedule


@dataclass(frozen=True)
class NoiseFactor:
    """Difformer's noise factor: ``scale`` F >= 1, ``variance_preserving`` selects the VP form."""

    scale: float = 1.0
    variance_preserving: bool = False

    def __post_init__(self):
        if self.scale < 1.0:
            raise ValueError(f"noise factor must be >= 1 (got {self.scale}); use 1 for no extra noise")


def _expand(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against ``like``."""
    return x.view(-1, *([1] * (like.dim() - 1)))


class GaussianDiffusion:
    """Discrete-time Gaussian diffusion with T steps; step i in {0..T-1} is the (i+1)-th noising step."""

    def __init__(self, schedule: GaussianSchedule, num_steps: int, noise: NoiseFactor = NoiseFactor()):
        if num_steps < 1:
            raise ValueError(f"diffusion steps must be >= 1 (got {num_steps})")
        self.num_steps = num_steps
        self.noise = noise
        self.alphas_cumprod = schedule.alphas_cumprod(num_steps)  # (T,) float64
        self.a, self.sigma = self._signal_and_noise(self.alphas_cumprod, noise)  # (T,), (T,)

    @staticmethod
    def _signal_and_noise(alpha_bar: torch.Tensor, noise: NoiseFactor):
        f2 = noise.scale**2
        if noise.variance_preserving:
            ab = alpha_bar / (f2 - (f2 - 1.0) * alpha_bar)
            return ab.sqrt(), (1.0 - ab).sqrt()
        return alpha_bar.sqrt(), noise.scale * (1.0 - alpha_bar).sqrt()

    def with_noise(self, noise: NoiseFactor) -> "GaussianDiffusion":
        """The same schedule with another noise factor (e.g. a separate decoding factor)."""
        other = object.__new__(GaussianDiffusion)
        other.num_steps, other.noise, other.alphas_cumprod = self.num_steps, noise, self.alphas_cumprod
        other.a, other.sigma = self._signal_and_noise(self.alphas_cumprod, noise)
        return other

    def coefficients(self, t: torch.Tensor, like: torch.Tensor):
        """(a_t, sigma_t) at integer steps t (B,), shaped to broadcast against ``like`` (B, L, D)."""
        a = self.a.to(like.device)[t].to(like.dtype)
        sigma = self.sigma.to(like.device)[t].to(like.dtype)
        return _expand(a, like), _expand(sigma, like)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio a_t^2 / sigma_t^2 at integer steps t: (B,) float64."""
        return self.a[t] ** 2 / self.sigma[t] ** 2

    def q_sample(
        self,
        z0: torch.Tensor,
        t: torch.Tensor,
        *,
        noise: Optional[torch.Tensor] = None,
        keep_mask: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Sample ``z_t ~ q(z_t | z_0)``.

        z0: (B, L, D); t: (B,) integer steps; keep_mask: (B, L) True where z_0 stays clean
        (partial noising). Returns z_t: (B, L, D).
        """
        if noise is None:
            noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        a, sigma = self.coefficients(t, z0)
        z_t = a * z0 + sigma * noise
        return reset_clean(z_t, z0, keep_mask)

    def posterior(self, z0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor):
        """Mean and variance of ``q(z_s | z_t, z_0)`` for steps s < t (both (B,)): ((B,L,D), (B,1,1))."""
        a_t, sig_t = self.coefficients(t, z_t)
        a_s, sig_s = self.coefficients(s, z_t)
        a_ts = a_t / a_s
        var_ts = sig_t**2 - a_ts**2 * sig_s**2
        mean = (a_ts * sig_s**2 * z_t + a_s * var_ts * z0) / sig_t**2
        return mean, var_ts * sig_s**2 / sig_t**2

    def ddpm_step(self, z0_hat, z_t, t, s, *, generator: Optional[torch.Generator] = None):
        """Ancestral step: sample z_s from the posterior with z_0 replaced by the prediction."""
        mean, var = self.posterior(z0_hat, z_t, t, s)
        eps = torch.randn(z_t.shape, generator=generator, device=z_t.device, dtype=z_t.dtype)
        return mean + var.sqrt() * eps

    def ddim_step(self, z0_hat, z_t, t, s, *, generator: Optional[torch.Generator] = None):
        """Deterministic DDIM step (eta = 0): keep the implied noise eps = (z_t - a_t z0_hat) / sigma_t, move the
        signal to level s: z_s = a_s z0_hat + sigma_s eps = (a_s - a_t sigma_s / sigma_t) z0_hat + (sigma_s /
        sigma_t) z_t, with the two coefficients in float64 and two passes over (B, L, D) instead of five."""
        a, sigma = self.a.to(z_t.device), self.sigma.to(z_t.device)
        ratio = sigma[s] / sigma[t]
        keep = _expand(ratio.to(z_t.dtype), z_t)
        signal = _expand((a[s] - a[t] * ratio).to(z_t.dtype), z_t)
        return torch.addcmul(signal * z0_hat, keep, z_t)

    def prior_sample(self, shape, *, device=None, dtype=torch.float32, generator=None) -> torch.Tensor:
        """z_T drawn from the prior of the process: N(0, sigma_max^2 I), sigma_max ~ F (or 1 for VP)."""
        sigma_max = float(self.sigma[-1])
        return sigma_max * torch.randn(shape, generator=generator, device=device, dtype=dtype)


def reset_clean(z: torch.Tensor, z0: torch.Tensor, keep_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Partial noising: positions with ``keep_mask`` (B, L) True take their clean value from z0."""
    if keep_mask is None:
        return z
    return torch.where(keep_mask.unsqueeze(-1), z0, z)
