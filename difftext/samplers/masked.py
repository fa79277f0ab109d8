"""Samplers of masked diffusion models (MDLM, Sahoo et al. 2024; MD4, Shi et al. 2024).

Every sampler drives a ``denoise_fn(z_t (B, L), t (B,)) -> logits`` closure from a start z_1 (B, L).
The logits are (B, L, V), or (M, V) at the masked positions only: the samplers read no others (see
:func:`difftext.processes.masked.masked_rows`). In z_1, positions to generate hold ``mask_id``; every
other position (bos, eos, pad, a prompt) is fixed, because unmasked tokens never change. Build z_1 with
:func:`difftext.processes.masked.masked_prior`. The output holds no mask token, and no token of
``forbidden_ids`` (e.g. pad, bos) at a generated position.

- :func:`ddpm_sample`: ancestral sampling on the grid 1 = t_0 > ... > t_N = 0. At each step s < t a
  masked position unmasks with probability (alpha_s - alpha_t) / (1 - alpha_t) to a token drawn from
  the SUBS distribution (for GenMD4 / spindle, alpha is evaluated at the drawn token).
- :func:`ddpm_cache_sample`: MDLM's ddpm_cache for time-agnostic models: when z did not change
  since the last network call, reuse that output. Same draws, same output as ddpm, fewer calls.
- :func:`confidence_sample`: mask-predict (Ghazvininejad et al. 2019): predict every masked token,
  keep the most confident, re-mask the rest; the re-masked count falls linearly to 0 over N steps.
- :func:`semi_ar_sample`: MDLM semi-autoregressive generation of blocks left to right, each
  conditioned on the previous ones, for any total length.
- :func:`filter_log_probs` / :func:`draw_tokens`: temperature (0 = greedy), top-k, top-p.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from difftext.processes.masked import check_mask_id, masked_rows, subs_masked_log_probs
from difftext.schedules.masking import LinearSchedule

DenoiseFn = Callable[[Tensor, Tensor], Tensor]


def filter_log_probs(
    log_probs: Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> Tensor:
    """Temperature, top-k (0 = off) and nucleus top-p (1 = off) filtering of (..., V): normalised (..., V)."""
    if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(
            f"token sampling needs temperature >= 0, top_k >= 0 and top_p in (0, 1]; got "
            f"{temperature}, {top_k}, {top_p}"
        )
    if temperature > 0:
        log_probs = log_probs / temperature
    if top_k > 0:
        kth = log_probs.topk(min(top_k, log_probs.size(-1)), dim=-1).values[..., -1:]
        log_probs = log_probs.masked_fill(log_probs < kth, float("-inf"))
    if top_p < 1.0:
        sorted_lp, order = log_probs.sort(dim=-1, descending=True)
        probs = sorted_lp.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs > top_p  # mass before this token already exceeds p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        log_probs = log_probs.masked_fill(drop, float("-inf"))
    return torch.log_softmax(log_probs, dim=-1)


def draw_tokens(
    log_probs: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """Draw one token per row of log_probs (N, V): tokens (N,) and their unfiltered log-prob (N,)."""
    if log_probs.size(0) == 0:
        return log_probs.new_zeros(0, dtype=torch.long), log_probs.new_zeros(0)
    if temperature == 0:
        tokens = log_probs.argmax(-1)
    else:
        probs = filter_log_probs(log_probs, temperature=temperature, top_k=top_k, top_p=top_p).exp()
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, log_probs.gather(-1, tokens[:, None]).squeeze(-1)


def greedy_masked_tokens(rows: Tensor, banned_ids: Sequence[int], chunk: int = 128) -> Tuple[Tensor, Tensor]:
    """The most likely token of each row of logits (M, V) outside ``banned_ids``, and its SUBS log-prob.

    Equal to the argmax of :func:`subs_masked_log_probs` and its value without any (M, V) output: per
    ``chunk`` rows (so the exponentials stay in cache), the row max, then sum_v e^(x_v - max) and the
    banned tokens' part of it, which is left out of the normaliser. Rows whose banned tokens hold over
    half the mass (where that subtraction would lose precision) or win the argmax are recomputed exactly.
    """
    num = rows.size(0)
    tokens = torch.empty(num, dtype=torch.long, device=rows.device)
    log_prob = torch.empty(num, dtype=torch.float, device=rows.device)
    banned_share = torch.empty(num, dtype=torch.float, device=rows.device)
    banned = torch.tensor(sorted(set(banned_ids)), device=rows.device)
    for i in range(0, num, chunk):
        block = rows[i : i + chunk].float()
        best, tokens[i : i + chunk] = block.max(-1)
        weights = (block - best[:, None]).exp_()  # (chunk, V), the best token's is 1
        total, banned_total = weights.sum(-1), weights.index_select(-1, banned).sum(-1)
        banned_share[i : i + chunk] = banned_total / total
        log_prob[i : i + chunk] = -torch.log(total - banned_total)  # log p(best) = 0 - log(allowed mass)
    redo = (banned_share > 0.5) | torch.isin(tokens, banned)
    if bool(redo.any()):
        exact = torch.log_softmax(rows[redo].float().index_fill(-1, banned, float("-inf")), dim=-1)
        log_prob[redo], tokens[redo] = exact.max(-1)
    return tokens, log_prob


def _draw_at_masked(
    logits: Tensor,
    z_t: Tensor,
    mask_id: int,
    forbidden_ids: Sequence[int],
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """A token for each masked position of z_t and its SUBS log-prob: (M,), (M,). Greedy (temperature 0)
    needs no normalised (M, V) tensor; sampling filters and draws from one."""
    rows = masked_rows(logits, z_t, mask_id)  # (M, V)
    if temperature == 0:
        check_mask_id(mask_id, rows.size(-1))
        return greedy_masked_tokens(rows, (mask_id, *forbidden_ids))
    log_probs = subs_masked_log_probs(rows, mask_id=mask_id, forbidden_ids=forbidden_ids)
    return draw_tokens(log_probs, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)


def _unmask_probability(schedule, t: Tensor, s: Tensor, x0_hat: Tensor, maskable: Tensor) -> Tensor:
    """(alpha_s - alpha_t) / (1 - alpha_t): (B, 1) for scalar schedules, (B, L) for per-token ones."""
    if bool((s <= 0).all()):
        return torch.ones_like(x0_hat, dtype=torch.float)  # the last step reveals every position
    if schedule.per_token:
        alpha_t, alpha_s = schedule.alpha(t, x0_hat, maskable), schedule.alpha(s, x0_hat, maskable)
    else:
        alpha_t, alpha_s = schedule.alpha(t)[:, None], schedule.alpha(s)[:, None]
    return ((alpha_s - alpha_t) / (1.0 - alpha_t).clamp_min(1e-12)).clamp(0.0, 1.0)


def _ddpm_update(
    logits: Tensor,
    z_t: Tensor,
    t: Tensor,
    s: Tensor,
    *,
    schedule,
    mask_id: int,
    maskable: Tensor,
    forbidden_ids: Sequence[int] = (),
    generator: Optional[torch.Generator] = None,
    **token_kwargs,
) -> Tuple[Tensor, Tensor]:
    """z_s (B, L) and the log-prob (B, L) of the token drawn at each masked position (0 elsewhere)."""
    is_masked = z_t == mask_id  # (B, L)
    x0_hat, drawn_lp = z_t.clone(), torch.zeros(z_t.shape, device=z_t.device)
    x0_hat[is_masked], lp = _draw_at_masked(logits, z_t, mask_id, forbidden_ids, generator=generator, **token_kwargs)
    drawn_lp[is_masked] = lp.float()
    p_unmask = _unmask_probability(schedule, t, s, x0_hat, maskable)
    u = torch.rand(z_t.shape, device=z_t.device, generator=generator)  # (B, L)
    return torch.where(is_masked & (u < p_unmask), x0_hat, z_t), drawn_lp


def ddpm_step(logits: Tensor, z_t: Tensor, t: Tensor, s: Tensor, **kwargs) -> Tensor:
    """One ancestral step z_t -> z_s, t and s (B,) with s < t. logits (B, L, V); returns z_s (B, L).

    Keyword arguments: ``schedule``, ``mask_id``, ``maskable`` (B, L), ``forbidden_ids``, ``generator``,
    ``temperature``, ``top_k``, ``top_p``.
    """
    return _ddpm_update(logits, z_t, t, s, **kwargs)[0]


def _check_start(z_1: Tensor, num_steps: int) -> None:
    if z_1.dim() != 2 or z_1.is_floating_point():
        raise ValueError(f"z_1 must be a LongTensor (B, L); got {z_1.dtype} of shape {tuple(z_1.shape)}")
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be >= 1")


def _call(denoise_fn: DenoiseFn, z_t: Tensor, t: float) -> Tensor:
    return denoise_fn(z_t, torch.full((z_t.size(0),), t, device=z_t.device))  # checked by masked_rows


def _ancestral(
    denoise_fn, z_1, *, num_steps, mask_id, schedule, cache, generator, return_scores, **token_kwargs
):
    _check_start(z_1, num_steps)
    schedule = LinearSchedule() if schedule is None else schedule
    maskable, z_t, changed = z_1 == mask_id, z_1, True
    scores = torch.zeros(z_1.shape, device=z_1.device)  # (B, L) log-prob of each token when it was drawn
    grid = [1.0 - i / num_steps for i in range(num_steps)] + [0.0]  # 1 = t_0 > ... > t_N = 0
    for i in range(num_steps):
        if not bool((z_t == mask_id).any()):
            break
        if changed or not cache:
            logits = _call(denoise_fn, z_t, grid[i])
        t, s = (torch.full((z_t.size(0),), v, device=z_t.device) for v in grid[i : i + 2])
        z_s, drawn_lp = _ddpm_update(
            logits, z_t, t, s, schedule=schedule, mask_id=mask_id, maskable=maskable, generator=generator,
            **token_kwargs,
        )
        revealed = z_s != z_t
        scores = torch.where(revealed, drawn_lp, scores)
        changed, z_t = bool(revealed.any()), z_s
    return (z_t, scores) if return_scores else z_t


@torch.no_grad()
def ddpm_sample(denoise_fn: DenoiseFn, z_1: Tensor, **kwargs) -> Tensor:
    """Ancestral sampling from z_1 (B, L): (B, L).

    Keyword arguments: ``num_steps``, ``mask_id``, ``schedule`` (default linear), ``forbidden_ids``,
    ``generator``, ``temperature``, ``top_k``, ``top_p``, ``return_scores``: also return the log-prob
    (B, L) each generated token had when it was drawn (0 at fixed positions).
    """
    return _ancestral(denoise_fn, z_1, cache=False, **_sampling_defaults(kwargs))


@torch.no_grad()
def ddpm_cache_sample(denoise_fn: DenoiseFn, z_1: Tensor, **kwargs) -> Tensor:
    """:func:`ddpm_sample` that skips the network when z is unchanged; only for time-agnostic models."""
    return _ancestral(denoise_fn, z_1, cache=True, **_sampling_defaults(kwargs))


def _sampling_defaults(kwargs: dict) -> dict:
    for name in ("num_steps", "mask_id"):
        if name not in kwargs:
            raise TypeError(f"missing required keyword argument {name!r}")
    return {"schedule": None, "generator": None, "return_scores": False, **kwargs}


def _remask_least_confident(
    tokens: Tensor, scores: Tensor, maskable: Tensor, count: Tensor, mask_id: int
) -> Tensor:
    """Mask the ``count`` (B,) lowest-score maskable positions of tokens (B, L): (B, L)."""
    scores = scores.masked_fill(~maskable, float("inf"))
    order = scores.argsort(dim=-1, stable=True)  # (B, L) positions by increasing confidence
    positions = torch.arange(tokens.size(1), device=tokens.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)  # (B, L) rank of each position
    return torch.where(rank < count[:, None], torch.full_like(tokens, mask_id), tokens)


@torch.no_grad()
def confidence_sample(
    denoise_fn: DenoiseFn,
    z_1: Tensor,
    *,
    num_steps: int,
    mask_id: int,
    schedule=None,
    forbidden_ids: Sequence[int] = (),
    generator: Optional[torch.Generator] = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    return_scores: bool = False,
) -> Tensor:
    """Mask-predict from z_1 (B, L) in ``num_steps`` iterations: (B, L). Greedy by default.

    ``return_scores``: also return each generated token's log-prob at its last prediction (B, L).

    At iteration i the masked fraction is (N - i)/N and that is the t passed to denoise_fn (the
    linear-schedule time; ``schedule`` is accepted for a uniform registry signature and unused).
    """
    _check_start(z_1, num_steps)
    maskable = z_1 == mask_id  # (B, L)
    num_gen = maskable.sum(-1)  # (B,)
    tokens, scores, z_t = z_1.clone(), torch.zeros(z_1.shape, device=z_1.device), z_1
    for i in range(num_steps):
        logits = _call(denoise_fn, z_t, (num_steps - i) / num_steps)
        is_masked = z_t == mask_id
        drawn, confidence = _draw_at_masked(
            logits, z_t, mask_id, forbidden_ids, temperature=temperature, top_k=top_k, top_p=top_p,
            generator=generator,
        )
        tokens[is_masked], scores[is_masked] = drawn, confidence.float()
        count = num_gen * (num_steps - 1 - i) // num_steps  # (B,) linearly down to 0
        z_t = _remask_least_confident(tokens, scores, maskable, count, mask_id)
    return (z_t, scores.masked_fill(~maskable, 0.0)) if return_scores else z_t


SAMPLERS: Dict[str, Callable[..., Tensor]] = {
    "ddpm": ddpm_sample,
    "ddpm_cache": ddpm_cache_sample,
    "confidence": confidence_sample,
}


def get_sampler(name: str) -> Callable[..., Tensor]:
    """Sampler by name; each is called as f(denoise_fn, z_1, num_steps=, mask_id=, schedule=, ...)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown masked-diffusion sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


@torch.no_grad()
def semi_ar_sample(
    denoise_fn: DenoiseFn,
    prefix: Tensor,
    *,
    total_length: int,
    model_length: int,
    block_length: int,
    num_steps: int,
    mask_id: int,
    sampler: str = "ddpm",
    return_scores: bool = False,
    **sampler_kwargs,
) -> Tensor:
    """Generate blocks of ``block_length`` tokens left to right after prefix (B, P): (B, total_length).

    Each block is sampled in a window of at most ``model_length`` tokens: the last
    model_length - block_length tokens generated so far (fixed) followed by the masked block.
    """
    if prefix.dim() != 2 or prefix.size(1) > total_length:
        raise ValueError(
            f"prefix must be (B, P) with P <= total_length={total_length}; got {tuple(prefix.shape)}"
        )
    if not 0 < block_length <= model_length:
        raise ValueError(f"need 0 < block_length ({block_length}) <= model_length ({model_length})")
    if bool((prefix == mask_id).any()):
        raise ValueError(f"the prefix contains mask_id={mask_id}; it must be fully known")
    sample, out = get_sampler(sampler), prefix
    scores = torch.zeros(prefix.shape, device=prefix.device)  # (B, P): the prefix is given
    while out.size(1) < total_length:
        n_new = min(block_length, total_length - out.size(1))
        context = out[:, out.size(1) - min(out.size(1), model_length - n_new) :]
        window = torch.cat([context, out.new_full((out.size(0), n_new), mask_id)], dim=1)
        window, window_scores = sample(
            denoise_fn, window, num_steps=num_steps, mask_id=mask_id, return_scores=True, **sampler_kwargs
        )
        out = torch.cat([out, window[:, -n_new:]], dim=1)
        scores = torch.cat([scores, window_scores[:, -n_new:]], dim=1)
    return (out, scores) if return_scores else out
