"""Training losses of continuous embedding diffusion, as pure functions of tensors.

- :func:`masked_mse`: ``||z0_hat - z0||^2`` per position (mean over the latent dim), the x0-parameterised
  diffusion loss of Diffusion-LM, DiffuSeq and Difformer.
- :func:`token_nll`: label-smoothed cross-entropy of logits against tokens. Used as Difformer's *anchor
  loss* (logits of the output layer applied to the predicted z0_hat, Gao et al. 2024 sec. 3.2) and as
  DiffuSeq's *rounding loss* ``-log p(y | z0)`` (logits of the clean latent).
- :func:`prior_loss`: DiffuSeq's tT loss ``||a_T z0||^2``, the squared mean of ``q(z_T | z0)``.

Each returns per-example sums (B,) plus token counts, so callers can weight examples (importance
sampling) and normalise by tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Term:
    """A per-example loss term: ``per_example`` (B,) sums over positions and ``tokens`` (B,) counts."""

    per_example: torch.Tensor
    tokens: torch.Tensor

    def mean_per_token(self) -> torch.Tensor:
        return self.per_example.sum() / self.tokens.sum().clamp(min=1)


def masked_mse(z0_hat: torch.Tensor, z0: torch.Tensor, mask: torch.Tensor) -> Term:
    """z0_hat, z0: (B, L, D); mask: (B, L) True where the loss applies."""
    sq = ((z0_hat.float() - z0.float()) ** 2).mean(-1)  # (B, L)
    m = mask.to(sq.dtype)
    return Term((sq * m).sum(-1), m.sum(-1))


def token_nll(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, label_smoothing: float = 0.0) -> Term:
    """Label-smoothed CE. logits: (B, L, V); target: (B, L); mask: (B, L). Computed in float32."""
    lprobs = F.log_softmax(logits.float(), dim=-1)  # (B, L, V)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, L)
    if label_smoothing > 0:
        smooth = -lprobs.mean(-1)  # (B, L)
        nll = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    m = mask.to(nll.dtype)
    return Term((nll * m).sum(-1), m.sum(-1))


def prior_loss(z0: torch.Tensor, a_T: float, mask: torch.Tensor) -> Term:
    """||a_T z0||^2 (mean over D) on masked positions: how far q(z_T|z0) is from N(0, .)."""
    sq = ((a_T * z0.float()) ** 2).mean(-1)  # (B, L)
    m = mask.to(sq.dtype)
    return Term((sq * m).sum(-1), m.sum(-1))
