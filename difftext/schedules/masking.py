"""Masking schedules of absorbing-state (masked) diffusion: q(z_t | x0) = Cat(alpha_t x0 + (1 - alpha_t) m).

``alpha_t`` is the probability that a token is still visible at time t in [0, 1]; it falls from
alpha_0 = 1 to alpha_1 = 0 (or eps). Every schedule gives ``alpha(t)``, its hand-written derivative
``dalpha(t)`` and the continuous-time ELBO weight ``weight(t) = -alpha'_t / (1 - alpha_t) >= 0``
(MDLM's Rao-Blackwellised NELBO and MD4's weighted-CE integral, Sahoo et al. 2024 / Shi et al. 2024).

- :class:`LinearSchedule` (MD4): alpha_t = 1 - t, weight 1/t.
- :class:`LogLinearSchedule` (MDLM default): alpha_t = 1 - (1 - eps) t = exp(-sigma(t)),
  sigma(t) = -log(1 - (1 - eps) t), weight 1/t.
- :class:`CosineSchedule` (MD4): alpha_t = 1 - cos(pi/2 (1 - t)).
- :class:`PolynomialSchedule` (MD4): alpha_t = 1 - t^w.
- :class:`MutualSchedule` (D3PM / DiffusionBERT, He et al. 2023): alpha_bar_t = 1 - t/T on steps 0..T.
- :class:`SpindleSchedule` (DiffusionBERT): per-token keep probability
  p_t(i) = clip(alpha_bar_t + lambda sin(pi t/T) (f(x_i) - mean_seq f), 0, 0.999),
  f(w) = log(count(w) + 1) / max_w log(count(w) + 1).
- :class:`GenMD4Schedule` (GenMD4, Shi et al. 2024 sec. 6): alpha_t(i) = 1 - t^{w(x_i)} with one
  learnable exponent per vocabulary item, trained through the discrete mask sample with the
  REINFORCE leave-one-out estimator :func:`leave_one_out_surrogate`.

Scalar schedules return alpha with the shape of t; per-token ones (``per_token = True``) take
``(t (B,), x0 (B, L))`` and return (B, L).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _wide(t: Tensor) -> Tensor:
    """bf16 / fp16 times in float32: in half precision 1 - alpha_t cancels to 0 near t = 0 (bf16 keeps 8
    bits), 1 - (1 - eps) t near t = 1, and the ELBO weights become inf / NaN. Results are float32 then."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class MaskingSchedule:
    """Base of the scalar schedules: subclasses give ``alpha`` and ``dalpha``; t has any shape."""

    per_token = False

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def dalpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def weight(self, t: Tensor) -> Tensor:
        """Continuous-time ELBO weight -alpha'_t / (1 - alpha_t) >= 0."""
        return -self.dalpha(t) / (1.0 - self.alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        """Total noise sigma(t) = -log alpha_t (MDLM's ``Noise``)."""
        return -torch.log(self.alpha(t))

    def dsigma(self, t: Tensor) -> Tensor:
        """sigma'(t) = -alpha'_t / alpha_t."""
        return -self.dalpha(t) / self.alpha(t)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class LinearSchedule(MaskingSchedule):
    """alpha_t = 1 - t (MD4 linear)."""

    def alpha(self, t: Tensor) -> Tensor:
        t = _wide(t)
        return 1.0 - t

    def dalpha(self, t: Tensor) -> Tensor:
        t = _wide(t)
        return -torch.ones_like(t)

    def weight(self, t: Tensor) -> Tensor:
        t = _wide(t)
        return 1.0 / t


class LogLinearSchedule(MaskingSchedule):
    """MDLM log-linear: alpha_t = 1 - (1 - eps) t, i.e. sigma(t) = -log(1 - (1 - eps) t)."""

    def __init__(self, eps: float = 1e-3):
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"LogLinearSchedule eps={eps} must lie in [0, 1); MDLM uses 1e-3")
        self.eps = eps

    def alpha(self, t: Tensor) -> Tensor:
        t = _wide(t)
        return 1.0 - (1.0 - self.eps) * t

    def dalpha(self, t: Tensor) -> Tensor:
        t = _wide(t)
        return torch.full_like(t, -(1.0 - self.eps))

    def weight(self, t: Tensor) -> Tensor:
        t = _wide(t)
        return 1.0 / t

    def sigma(self, t: Tensor) -> Tensor:
        t = _wide(t)
        return -torch.log1p(-(1.0 - self.eps) * t)

    def dsigma(self, t: Tensor) -> Tensor:
        t = _wide(t)
        return (1.0 - self.eps) / (1.0 - (1.0 - self.eps) * t)


class CosineSchedule(MaskingSchedule):
    """MD4 cosine: alpha_t = 1 - cos(pi/2 (1 - t)); weight (pi/2) tan(pi/2 (1 - t))."""

    def alpha(self, t: Tensor) -> Tensor:
        t = _wide(t)
        return 2.0 * torch.sin(0.25 * math.pi * (1.0 - t)) ** 2  # = 1 - cos(pi/2 (1 - t)), no cancellation at t -> 1

    def dalpha(self, t: Tensor) -> Tensor:
        t = _wide(t)
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * (1.0 - t))

    def weight(self, t: Tensor) -> Tensor:
        t = _wide(t)
        return 0.5 * math.pi * torch.tan(0.5 * math.pi * (1.0 - t))


class PolynomialSchedule(MaskingSchedule):
    """MD4 polynomial: alpha_t = 1 - t^w; weight w / t."""

    def __init__(self, exponent: float = 1.0):
        if exponent <= 0:
            raise ValueError(f"PolynomialSchedule exponent={exponent} must be > 0 (1 is linear)")
        self.exponent = exponent

    def alpha(self, t: Tensor) -> Tensor:
        t = _wide(t)
        return 1.0 - t**self.exponent

    def dalpha(self, t: Tensor) -> Tensor:
        t = _wide(t)
        return -self.exponent * t ** (self.exponent - 1.0)

    def weight(self, t: Tensor) -> Tensor:
        t = _wide(t)
        return self.exponent / t


class MutualSchedule(LinearSchedule):
    """D3PM 'mutual information' schedule for absorbing noise: alpha_bar_t = 1 - t/T, t in {0..T}.

    As a continuous schedule (t in [0, 1]) it is :class:`LinearSchedule`.
    """

    def __init__(self, num_steps: int):
        if num_steps < 1:
            raise ValueError(f"MutualSchedule num_steps={num_steps} must be >= 1 (DiffusionBERT: 2048)")
        self.num_steps = num_steps

    def alpha_bar(self, step: Tensor) -> Tensor:
        """Keep probability at integer steps (any shape) in 0..T: float tensor of the same shape."""
        _check_steps(step, self.num_steps)
        return self.alpha(step.float() / self.num_steps)


def _check_steps(step: Tensor, num_steps: int) -> None:
    if step.is_floating_point() or bool((step < 0).any()) or bool((step > num_steps).any()):
        raise ValueError(f"discrete steps must be integers in 0..T={num_steps}; got {step}")


class SpindleSchedule(nn.Module):
    """DiffusionBERT spindle schedule: frequent tokens keep longer, so they are generated first.

    ``counts`` (V,) are training-set token counts; they are a buffer, so the schedule is saved in
    the state dict of the model that owns it (build it with zeros and load the checkpoint).
    All-zero counts reduce it to :class:`MutualSchedule`.
    """

    per_token = True

    def __init__(self, counts: Tensor, *, num_steps: int = 2048, lam: float = 0.3, max_keep: float = 0.999):
        super().__init__()
        if counts.dim() != 1 or bool((counts < 0).any()):
            raise ValueError(
                f"spindle counts must be a non-negative (V,) tensor; got shape {tuple(counts.shape)}"
            )
        if num_steps < 1 or not 0.0 <= lam <= 1.0:
            raise ValueError(f"spindle needs num_steps >= 1 and lam in [0, 1]; got {num_steps}, {lam}")
        self.num_steps, self.lam, self.max_keep = num_steps, lam, max_keep
        # integer buffer: model.half() (fp16 training) leaves it exact, counts beyond 65504 included
        self.register_buffer("counts", counts.detach().round().long().clone())

    def frequency(self) -> Tensor:
        """f(w) = log(count(w) + 1) / max_w log(count(w) + 1): (V,) in [0, 1]."""
        log_counts = torch.log1p(self.counts.double())
        return (log_counts / log_counts.max().clamp_min(1e-12)).float()

    def alpha(self, t: Tensor, x0: Tensor, maskable: Optional[Tensor] = None) -> Tensor:
        """Keep probability p_t(i) at continuous t (B,) for tokens x0 (B, L): (B, L).

        The sequence mean of f runs over ``maskable`` positions (B, L) only (no pad / bos / eos).
        It is exactly 1 at t = 0 (clean data) and 0 at t = 1, elsewhere clipped to [0, max_keep].
        """
        t = _wide(t)
        if maskable is None:
            maskable = torch.ones_like(x0, dtype=torch.bool)
        f = self.frequency().to(t.dtype)[x0]  # (B, L)
        m = maskable.to(t.dtype)
        mean_f = (f * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1.0)  # (B, 1)
        t = t[:, None]
        p = (1.0 - t) + self.lam * torch.sin(math.pi * t) * (f - mean_f)
        p = p.clamp(0.0, self.max_keep)
        p = torch.where(t == 1, torch.zeros_like(p), p)  # exact, although sin(pi) != 0 in floating point
        return torch.where(t == 0, torch.ones_like(p), p)

    def alpha_bar(self, step: Tensor, x0: Tensor, maskable: Optional[Tensor] = None) -> Tensor:
        """Keep probability at integer steps (B,) in 0..T: (B, L)."""
        _check_steps(step, self.num_steps)
        return self.alpha(step.float() / self.num_steps, x0, maskable)


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class GenMD4Schedule(nn.Module):
    """GenMD4 state-dependent schedule alpha_t(i) = 1 - t^{w(x_i)}, w(v) = softplus(raw_v) > 0."""

    per_token = True

    def __init__(self, vocab_size: int, *, init_exponent: float = 1.0):
        super().__init__()
        if vocab_size < 1 or init_exponent <= 0:
            raise ValueError(
                f"GenMD4Schedule needs vocab_size >= 1 and init_exponent > 0; got {vocab_size}, {init_exponent}"
            )
        self.raw_exponent = nn.Parameter(torch.full((vocab_size,), _inverse_softplus(init_exponent)))

    def exponent(self) -> Tensor:
        """Per-vocabulary exponents w(v): (V,)."""
        return F.softplus(self.raw_exponent)

    def _w(self, t: Tensor, x0: Tensor) -> Tensor:
        return self.exponent().to(t.dtype)[x0]  # (B, L)

    def alpha(self, t: Tensor, x0: Tensor, maskable: Optional[Tensor] = None) -> Tensor:
        """alpha_t(i) for t (B,) and tokens x0 (B, L): (B, L). ``maskable`` is unused."""
        t = _wide(t)
        return 1.0 - t[:, None] ** self._w(t, x0)

    def dalpha(self, t: Tensor, x0: Tensor) -> Tensor:
        """d alpha_t(i) / dt = -w t^{w - 1}: (B, L)."""
        t = _wide(t)
        w = self._w(t, x0)
        return -w * t[:, None] ** (w - 1.0)

    def weight(self, t: Tensor, x0: Tensor) -> Tensor:
        """-alpha'_t(i) / (1 - alpha_t(i)) = w(x_i) / t: (B, L)."""
        t = _wide(t)
        return self._w(t, x0) / t[:, None]

    def weight_table(self, t: Tensor) -> Tensor:
        """The weight of every vocabulary item, w(v) / t: (B, V)."""
        t = _wide(t)
        return self.exponent().to(t.dtype)[None, :] / t[:, None]


def leave_one_out_surrogate(losses: Tensor, log_q: Tensor) -> Tensor:
    """REINFORCE with a leave-one-out baseline, as a zero-valued surrogate: (B,).

    ``losses`` (K, B) are the losses of K >= 2 independent mask samples z^k ~ q(. | x0) and ``log_q``
    (K, B) their log-probabilities (differentiable in the schedule). The surrogate is 0 in value; its
    gradient is (1/K) sum_k (f_k - mean_{j != k} f_j) grad log q(z^k), an unbiased estimate of the
    score-function part of grad E_q[f]. Add it to the mean of ``losses`` (the pathwise part).
    """
    k = losses.size(0)
    if k < 2 or losses.shape != log_q.shape:
        raise ValueError(
            f"leave_one_out_surrogate needs K >= 2 samples and matching shapes; got {tuple(losses.shape)} "
            f"and {tuple(log_q.shape)}"
        )
    f = losses.detach()
    baseline = (f.sum(0, keepdim=True) - f) / (k - 1)  # (K, B)
    return ((f - baseline) * (log_q - log_q.detach())).mean(0)
