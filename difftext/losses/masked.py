"""Training objectives of masked (absorbing-state) diffusion, as pure functions of tensors.

Every function takes the raw network logits, the data x0 (B, L) and its noised z_t (B, L), applies
SUBS and returns a :class:`MaskedLoss`. The logits are (B, L, V), or (M, V) at the M masked positions
only (:func:`difftext.processes.masked.masked_rows`): no term reads the others.
Only masked positions contribute; ``num_tokens`` counts the maskable positions, so
``nelbo.sum() / num_tokens.sum()`` is a bound in nats per token.

- :func:`mdlm_loss` (MDLM, Sahoo et al. 2024): the Rao-Blackwellised continuous-time NELBO through
  the total noise sigma(t): sigma'(t) / (e^{sigma(t)} - 1) * sum_{l: z_t^l = m} -log <x_theta^l, x0^l>.
- :func:`md4_loss` (MD4, Shi et al. 2024): the same objective as MD4's weighted CE integral,
  w(t) * sum_{l: z_t^l = m} x0^l . log mu_theta^l with w(t) = alpha'_t / (1 - alpha_t) <= 0.
- :func:`d3pm_loss` (D3PM absorbing, DiffusionBERT, He et al. 2023): the discrete-time term
  L_{t-1} = (alpha_bar_{t-1} - alpha_bar_t) / (1 - alpha_bar_t) * sum_masked -log p(x0), plus the
  hybrid CE term lambda_hybrid * sum_masked -log p(x0).
- :func:`genmd4_loss` / :func:`genmd4_rloo_loss` (GenMD4, Shi et al. 2024 sec. 6): per masked
  token w_t(x0) (-log mu_{x0}) + sum_v w_t(v) mu_v - w_t(x0), with w_t(v) = w(v)/t, and the
  REINFORCE leave-one-out gradient for the learnable exponents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from difftext.processes.masked import (
    masked_rows,
    per_token,
    q_log_prob,
    q_sample,
    scatter_masked,
    subs_masked_log_probs,
)
from difftext.schedules.masking import GenMD4Schedule, MaskingSchedule, leave_one_out_surrogate


@dataclass
class MaskedLoss:
    """Named terms of a masked-diffusion loss."""

    loss: Tensor  # () objective to minimise, summed over the batch
    nelbo: Tensor  # (B,) estimate of the bound on -log p(x0) per sequence, nats summed over tokens
    num_tokens: Tensor  # (B,) maskable tokens the bound covers
    ce: Tensor  # (B,) unweighted cross-entropy summed over masked positions
    num_masked: Tensor  # (B,) masked positions

    def nats_per_token(self) -> Tensor:
        """Batch bound in nats per token: ()."""
        return self.nelbo.sum() / self.num_tokens.sum().clamp_min(1)


def _check_time(t: Tensor) -> None:
    if bool((t <= 0).any()) or bool((t > 1).any()):
        raise ValueError(
            "continuous time t must lie in (0, 1]; draw it with "
            "difftext.time_samplers.antithetic_continuous(batch_size, eps=1e-3)"
        )


def _masked_nll(
    logits: Tensor, x0: Tensor, z_t: Tensor, mask_id: int, maskable: Optional[Tensor]
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """SUBS log-probs of the masked rows (M, V), -log p(x0) at masked positions (B, L), masked, maskable.

    Carry-over positions contribute exactly 0, so only the rows where z_t is [M] are normalised.
    """
    if x0.shape != z_t.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and z_t {tuple(z_t.shape)} must have the same (B, L) shape")
    if maskable is None:
        maskable = torch.ones_like(x0, dtype=torch.bool)
    log_probs = subs_masked_log_probs(masked_rows(logits, z_t, mask_id), mask_id=mask_id)  # (M, V)
    target = x0[z_t == mask_id]  # (M,)
    nll = scatter_masked(-log_probs.gather(-1, target[:, None]).squeeze(-1), z_t, mask_id)  # (B, L)
    is_masked = (z_t == mask_id) & maskable  # (B, L)
    nll = torch.where(is_masked, nll, torch.zeros_like(nll))
    return log_probs, nll, is_masked, maskable


def _terms(loss: Tensor, nelbo: Tensor, nll: Tensor, is_masked: Tensor, maskable: Tensor) -> MaskedLoss:
    return MaskedLoss(
        loss=loss,
        nelbo=nelbo,
        num_tokens=maskable.sum(-1),
        ce=nll.sum(-1),
        num_masked=is_masked.sum(-1),
    )


def mdlm_loss(
    logits: Tensor,
    x0: Tensor,
    z_t: Tensor,
    t: Tensor,
    schedule: MaskingSchedule,
    *,
    mask_id: int,
    maskable: Optional[Tensor] = None,
) -> MaskedLoss:
    """MDLM continuous-time NELBO at times t (B,), weighted through sigma(t). ``loss`` is nelbo.sum()."""
    _check_time(t)
    sigma = schedule.sigma(t)  # (B,) total noise; +inf where alpha_t = 0 (e.g. the cosine schedule at t = 1)
    weight = torch.where(
        torch.isfinite(sigma), schedule.dsigma(t) / torch.expm1(sigma), schedule.weight(t)
    )  # (B,) = -alpha'_t / (1 - alpha_t), the limit of the sigma form where alpha_t = 0
    _, nll, is_masked, maskable = _masked_nll(logits, x0, z_t, mask_id, maskable)
    nelbo = (per_token(weight, nll) * nll).sum(-1)  # (B,)
    return _terms(nelbo.sum(), nelbo, nll, is_masked, maskable)


def md4_loss(
    logits: Tensor,
    x0: Tensor,
    z_t: Tensor,
    t: Tensor,
    schedule: MaskingSchedule,
    *,
    mask_id: int,
    maskable: Optional[Tensor] = None,
) -> MaskedLoss:
    """MD4 weighted-CE integrand at times t (B,): w(t) sum_masked x0 . log mu. ``loss`` is nelbo.sum()."""
    _check_time(t)
    w = schedule.dalpha(t) / (1.0 - schedule.alpha(t))  # (B,) MD4's w(t) <= 0
    _, nll, is_masked, maskable = _masked_nll(logits, x0, z_t, mask_id, maskable)
    log_likelihood = -nll  # (B, L) x0 . log mu at masked positions, 0 elsewhere
    nelbo = (per_token(w, nll) * log_likelihood).sum(-1)  # (B,)
    return _terms(nelbo.sum(), nelbo, nll, is_masked, maskable)


def d3pm_loss(
    logits: Tensor,
    x0: Tensor,
    z_t: Tensor,
    alpha_s: Tensor,
    alpha_t: Tensor,
    *,
    num_steps: int,
    mask_id: int,
    maskable: Optional[Tensor] = None,
    hybrid_lambda: float = 1e-2,
) -> MaskedLoss:
    """Discrete-time absorbing ELBO at integer steps t in 1..T with s = t - 1, plus the hybrid CE.

    alpha_s, alpha_t: alpha_bar at steps t-1 and t, (B,) (mutual) or (B, L) (spindle).
    ``nelbo`` = T * L_{t-1}, the unbiased one-step estimate of the full bound sum_t L_{t-1} (for
    t ~ U{1..T}; L_T = 0 as alpha_bar_T = 0 and L_0 is the t = 1 term). ``loss`` follows D3PM:
    sum over the batch of L_{t-1} + hybrid_lambda * CE (not scaled by T).
    """
    if num_steps < 1 or hybrid_lambda < 0:
        raise ValueError(
            f"d3pm_loss needs num_steps >= 1 and hybrid_lambda >= 0; got {num_steps}, {hybrid_lambda}"
        )
    _, nll, is_masked, maskable = _masked_nll(logits, x0, z_t, mask_id, maskable)
    alpha_s, alpha_t = per_token(alpha_s, nll), per_token(alpha_t, nll)
    coef = ((alpha_s - alpha_t) / (1.0 - alpha_t).clamp_min(1e-12)).clamp_min(0.0)  # (B, 1) or (B, L)
    vlb_t = (coef * nll).sum(-1)  # (B,) L_{t-1}
    ce = nll.sum(-1)  # (B,)
    terms = _terms((vlb_t + hybrid_lambda * ce).sum(), num_steps * vlb_t, nll, is_masked, maskable)
    return terms


def genmd4_loss(
    logits: Tensor,
    x0: Tensor,
    z_t: Tensor,
    t: Tensor,
    schedule: GenMD4Schedule,
    *,
    mask_id: int,
    maskable: Optional[Tensor] = None,
) -> MaskedLoss:
    """GenMD4 NELBO integrand at times t (B,) for one mask sample z_t. Differentiable in the schedule.

    Does not include the gradient through the mask sample; see :func:`genmd4_rloo_loss`.
    """
    _check_time(t)
    w_table = schedule.weight_table(t)  # (B, V)
    if w_table.size(-1) != logits.size(-1):
        raise ValueError(
            f"GenMD4Schedule has {w_table.size(-1)} exponents but the logits have V={logits.size(-1)}; "
            "build it with vocab_size equal to the model's output size"
        )
    log_mu, nll, is_masked, maskable = _masked_nll(logits, x0, z_t, mask_id, maskable)  # log_mu (M, V)
    w_x0 = schedule.weight(t, x0)  # (B, L)
    row_seq = (z_t == mask_id).nonzero()[:, 0]  # (M,) the sequence of each masked row
    expected_w = scatter_masked((log_mu.exp() * w_table[row_seq]).sum(-1), z_t, mask_id)  # (B, L) sum_v w_t(v) mu_v
    per_tok = w_x0 * nll + expected_w - w_x0  # (B, L), >= 0
    nelbo = torch.where(is_masked, per_tok, torch.zeros_like(per_tok)).sum(-1)  # (B,)
    return _terms(nelbo.sum(), nelbo, nll, is_masked, maskable)


def genmd4_rloo_loss(
    denoise_fn: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    t: Tensor,
    schedule: GenMD4Schedule,
    *,
    mask_id: int,
    maskable: Tensor,
    num_samples: int = 2,
    generator: Optional[torch.Generator] = None,
) -> MaskedLoss:
    """GenMD4 training loss with K = ``num_samples`` mask samples per sequence (one batched call).

    denoise_fn(z_t (K*B, L), t (K*B,)) -> logits (K*B, L, V) or (M, V). ``nelbo`` is the mean over the K
    samples (B,); ``loss`` adds the zero-valued leave-one-out REINFORCE surrogate, so its gradient
    w.r.t. the exponents is unbiased for grad E_q[NELBO] including the path through the mask sample.
    """
    k, b = num_samples, x0.size(0)
    alpha_t = schedule.alpha(t, x0)  # (B, L)
    z_t = torch.cat(
        [
            q_sample(x0, alpha_t.detach(), mask_id=mask_id, maskable=maskable, generator=generator)
            for _ in range(k)
        ]
    )  # (K*B, L)
    t_k, x0_k, maskable_k = t.repeat(k), x0.repeat(k, 1), maskable.repeat(k, 1)
    terms = genmd4_loss(denoise_fn(z_t, t_k), x0_k, z_t, t_k, schedule, mask_id=mask_id, maskable=maskable_k)
    f = terms.nelbo.view(k, b)  # (K, B)
    log_q = q_log_prob(z_t, alpha_t.repeat(k, 1), mask_id=mask_id, maskable=maskable_k).view(k, b)  # (K, B)
    nelbo = f.mean(0)  # (B,)
    loss = (nelbo + leave_one_out_surrogate(f, log_q)).sum()
    return MaskedLoss(
        loss=loss,
        nelbo=nelbo,
        num_tokens=maskable.sum(-1),
        ce=terms.ce.view(k, b).mean(0),
        num_masked=terms.num_masked.view(k, b).float().mean(0),
    )
