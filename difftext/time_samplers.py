"""Time-step samplers shared by the continuous and the discrete families.

- :func:`uniform_discrete` / :func:`uniform_continuous`: plain Monte-Carlo time.
- :func:`antithetic_continuous`: the low-discrepancy sampler of MDLM (Sahoo et al. 2024, sec. 3.5):
  one uniform offset shared by the batch, ``t_i = (u + i / B) mod 1``.
- :class:`LossAwareSampler`: DiffuSeq's second-moment importance sampler (Gong et al. 2023,
  after Nichol & Dhariwal 2021): keep the last ``history`` losses per step t, sample t with
  probability proportional to ``sqrt(E[L_t^2])`` mixed with ``uniform_prob`` of uniform, and return
  the importance weights ``1 / (T p_t)`` that keep the loss unbiased. Its history is training state
  and round-trips through the state dict of the model that owns it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn


def uniform_discrete(
    batch_size: int, num_steps: int, *, device=None, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Integer steps uniformly in {0, ..., T-1}: LongTensor (B,)."""
    return torch.randint(0, num_steps, (batch_size,), device=device, generator=generator)


def uniform_continuous(
    batch_size: int, *, eps: float = 1e-3, device=None, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Continuous times uniformly in [eps, 1]: FloatTensor (B,)."""
    u = torch.rand(batch_size, device=device, generator=generator)
    return eps + (1.0 - eps) * u


def antithetic_continuous(
    batch_size: int, *, eps: float = 1e-3, device=None, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Stratified times ``(u + i/B) mod 1`` mapped to [eps, 1]: FloatTensor (B,).

    Each of the B strata of [0, 1) receives exactly one sample, which lowers the variance of the
    batch-averaged ELBO without biasing it (every t_i is marginally uniform).
    """
    u = torch.rand(1, device=device, generator=generator)
    offsets = torch.arange(batch_size, device=device, dtype=torch.float32) / batch_size
    t = torch.remainder(u + offsets, 1.0)  # (B,)
    return eps + (1.0 - eps) * t


class LossAwareSampler(nn.Module):
    """Importance sampler over T discrete steps, weighted by the root mean squared recent loss.

    An ``nn.Module`` whose history lives in buffers, so it is saved in (and restored from) the
    state dict of any model that owns it: resuming training continues the same sampler.
    """

    def __init__(self, num_steps: int, *, history: int = 10, uniform_prob: float = 1e-3):
        super().__init__()
        self.num_steps = num_steps
        self.history = history
        self.uniform_prob = uniform_prob
        self.register_buffer("_losses", torch.zeros(num_steps, history, dtype=torch.float64))  # (T, H)
        self.register_buffer("_counts", torch.zeros(num_steps, dtype=torch.long))  # (T,)

    @property
    def warmed_up(self) -> bool:
        """True once every step has a full history; before that, sampling is uniform."""
        return bool((self._counts == self.history).all())

    def weights(self) -> torch.Tensor:
        """Sampling probabilities p_t over the T steps: (T,), summing to 1."""
        if not self.warmed_up:
            return torch.full((self.num_steps,), 1.0 / self.num_steps, dtype=torch.float64)
        w = torch.sqrt((self._losses**2).mean(dim=-1))
        w = w / w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / self.num_steps

    def sample(
        self, batch_size: int, *, device=None, generator: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Draw steps and their importance weights ``1/(T p_t)``: (LongTensor (B,), FloatTensor (B,))."""
        p = self.weights().to(self._losses.device)
        t = torch.multinomial(p.float(), batch_size, replacement=True, generator=generator)
        w = 1.0 / (self.num_steps * p[t])
        return t.to(device), w.float().to(device)

    @torch.no_grad()
    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-example losses (B,) observed at steps t (B,), keeping the last ``history``."""
        for step, loss in zip(t.tolist(), losses.detach().double().cpu().tolist()):
            n = int(self._counts[step])
            if n == self.history:
                self._losses[step, :-1] = self._losses[step, 1:].clone()
                self._losses[step, -1] = loss
            else:
                self._losses[step, n] = loss
                self._counts[step] = n + 1
