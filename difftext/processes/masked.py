"""Absorbing-state forward process and the SUBS parameterisation of masked diffusion.

Forward process (D3PM absorbing, Austin et al. 2021; MDLM, Sahoo et al. 2024):
q(z_t | x0) = prod_l Cat(z_t^l; alpha_t x0^l + (1 - alpha_t) m), where alpha_t is a scalar per
sequence (B,) or one keep probability per token (B, L) (spindle, GenMD4). Positions that are not
``maskable`` (padding, bos / eos, any special symbol, a conditioning prefix) are never masked.

SUBS (MDLM sec. 3.2): (1) zero masking probability, the logit of [M] is -inf; (2) carry-over
unmasking, at a position where z_t^l != [M] the model's distribution is the one-hot on z_t^l.

Because of (2), nothing ever reads the network's logits at an unmasked position. A denoiser may
therefore return its logits at the masked positions only: (M, V), one row per position where
z_t == [M], in row-major order (``logits[z_t == mask_id]`` of the full (B, L, V) tensor). Every loss
and sampler accepts both forms (:func:`masked_rows`); the short form skips the output layer and the
softmax at the unmasked positions, about half of them in training.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


def maskable_positions(x: Tensor, protected_ids: Sequence[int]) -> Tensor:
    """Maskable positions of x (B, L): True where the token is none of ``protected_ids``. (B, L) bool."""
    maskable = torch.ones_like(x, dtype=torch.bool)
    for token in protected_ids:
        maskable &= x != token
    return maskable


def per_token(value: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-sequence value (B,) (or an already per-token one (B, L)) against like (B, L)."""
    if value.dim() == 1:
        return value[:, None]
    if value.shape != like.shape:
        raise ValueError(f"expected a (B,) or (B, L) = {tuple(like.shape)} tensor; got {tuple(value.shape)}")
    return value


def _resolve_maskable(
    x0: Tensor, maskable: Optional[Tensor], protected_ids: Optional[Sequence[int]]
) -> Tensor:
    if maskable is None and protected_ids is None:
        raise ValueError(
            "pass `maskable` (a (B, L) bool tensor) or `protected_ids` (pad / bos / eos ids) so that "
            "special symbols are never masked; pass protected_ids=() to allow masking every position"
        )
    if maskable is None:
        return maskable_positions(x0, protected_ids)
    if maskable.shape != x0.shape or maskable.dtype != torch.bool:
        raise ValueError(f"`maskable` must be a bool tensor of shape {tuple(x0.shape)}")
    if protected_ids is not None:
        maskable = maskable & maskable_positions(x0, protected_ids)
    return maskable


def q_sample(
    x0: Tensor,
    alpha_t: Tensor,
    *,
    mask_id: int,
    maskable: Optional[Tensor] = None,
    protected_ids: Optional[Sequence[int]] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Draw z_t ~ q(z_t | x0): each maskable token becomes ``mask_id`` with probability 1 - alpha_t.

    x0: LongTensor (B, L). alpha_t: keep probability, (B,) or (B, L), in [0, 1].
    maskable: bool (B, L) and/or protected_ids: token ids that are never masked (pad, bos, eos, ...).
    Returns z_t: LongTensor (B, L).
    """
    maskable = _resolve_maskable(x0, maskable, protected_ids)
    alpha_t = per_token(alpha_t, x0)
    if bool((alpha_t < 0).any()) or bool((alpha_t > 1).any()):
        raise ValueError("q_sample: alpha_t must lie in [0, 1]; check the schedule and the time t")
    if bool((maskable & (x0 == mask_id)).any()):
        raise ValueError(
            f"q_sample: x0 already contains mask_id={mask_id}; the data must not use the mask symbol"
        )
    u = torch.rand(x0.shape, device=x0.device, generator=generator)  # (B, L)
    masked = (u >= alpha_t) & maskable
    return torch.where(masked, torch.full_like(x0, mask_id), x0)


def q_log_prob(z_t: Tensor, alpha_t: Tensor, *, mask_id: int, maskable: Tensor) -> Tensor:
    """log q(z_t | x0) of a mask pattern, summed over maskable positions: (B,).

    Differentiable in alpha_t ((B,) or (B, L)); used by the REINFORCE estimator of GenMD4.
    """
    alpha_t = per_token(alpha_t, z_t).expand(z_t.shape)
    alpha_t = alpha_t.to(torch.promote_types(alpha_t.dtype, torch.float32))  # logs and their sum: >= fp32
    tiny = torch.finfo(alpha_t.dtype).tiny
    masked = z_t == mask_id
    log_q = torch.where(
        masked, torch.log((1.0 - alpha_t).clamp_min(tiny)), torch.log(alpha_t.clamp_min(tiny))
    )
    return (log_q * maskable.to(log_q.dtype)).sum(-1)


def subs_log_probs(
    logits: Tensor,
    z_t: Tensor,
    *,
    mask_id: int,
    forbidden_ids: Sequence[int] = (),
    carry_over: bool = True,
) -> Tensor:
    """SUBS: the model's log-distribution over x0 given raw logits (B, L, V) and z_t (B, L): (B, L, V).

    At masked positions: log_softmax with the [M] logit (and any ``forbidden_ids``, e.g. pad) at -inf.
    At unmasked positions: carry-over, log of the one-hot on z_t (0 at z_t, -inf elsewhere).
    ``carry_over=False`` skips the second half (the losses, whose unmasked terms are exactly 0,
    save two (B, L, V) tensors): every row is then the masked-position distribution.
    """
    if logits.dim() != 3 or logits.shape[:2] != z_t.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match z_t {tuple(z_t.shape)} as (B, L, V)")
    log_probs = subs_masked_log_probs(logits, mask_id=mask_id, forbidden_ids=forbidden_ids)  # (B, L, V)
    if not carry_over:
        return log_probs
    carry = torch.full_like(log_probs, float("-inf")).scatter_(-1, z_t[..., None], 0.0)  # (B, L, V)
    is_masked = (z_t == mask_id)[..., None]  # (B, L, 1)
    return torch.where(is_masked, log_probs, carry)


def masked_rows(logits: Tensor, z_t: Tensor, mask_id: int) -> Tensor:
    """The logits at the masked positions of z_t (B, L): (M, V) rows in row-major order.

    ``logits`` is the full (B, L, V) tensor or already those M rows (see the module docstring).
    """
    is_masked = z_t == mask_id
    if logits.dim() == 3 and logits.shape[:2] == z_t.shape:
        return logits[is_masked]
    num_masked = int(is_masked.sum())
    if logits.dim() == 2 and logits.size(0) == num_masked:
        return logits
    raise ValueError(
        f"logits {tuple(logits.shape)} fit neither z_t {tuple(z_t.shape)} as (B, L, V) nor its {num_masked} "
        "masked positions as (M, V); a denoiser returns one or the other"
    )


def check_mask_id(mask_id: int, vocab: int) -> None:
    """A ValueError unless the logits' last dimension ``vocab`` includes ``mask_id``."""
    if not 0 <= mask_id < vocab:
        raise ValueError(
            f"mask_id={mask_id} is outside the model's vocabulary of size {vocab}; the output layer "
            "must include the mask symbol"
        )


def subs_masked_log_probs(rows: Tensor, *, mask_id: int, forbidden_ids: Sequence[int] = ()) -> Tensor:
    """SUBS log-distribution over x0 at masked positions from their logits (M, V): (M, V).

    log_softmax with the [M] logit and any ``forbidden_ids`` at -inf, in at least fp32.
    """
    check_mask_id(mask_id, rows.size(-1))
    banned = torch.tensor([mask_id, *forbidden_ids], device=rows.device)
    dtype = torch.promote_types(rows.dtype, torch.float32)  # half-precision logits: softmax in fp32
    return torch.log_softmax(rows.index_fill(-1, banned, float("-inf")), dim=-1, dtype=dtype)


def scatter_masked(values: Tensor, z_t: Tensor, mask_id: int) -> Tensor:
    """Per-row values (M,) back to (B, L) at the masked positions of z_t, 0 elsewhere (differentiable)."""
    is_masked = z_t == mask_id
    return torch.zeros(z_t.shape, dtype=values.dtype, device=values.device).masked_scatter(is_masked, values)


def masked_prior(x: Tensor, maskable: Tensor, *, mask_id: int) -> Tensor:
    """The starting point z_1 of the samplers: ``mask_id`` at maskable positions, x elsewhere. (B, L)."""
    return torch.where(maskable, torch.full_like(x, mask_id), x)
