"""Small neural-network pieces shared by the diffusion models (pure torch)."""
from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) times t (B,) -> (B, dim), as in DDPM/Transformer."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().unsqueeze(-1) * freqs  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimeEmbedding(nn.Module):
    """sinusoid(t * scale) -> Linear -> SiLU -> Linear: the DDPM time MLP. ``scale`` rescales t to ~[0, 1000]."""

    def __init__(self, dim: int, *, scale: float = 1000.0):
        super().__init__()
        self.dim, self.scale = dim, scale
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) in [0, 1] -> (B, dim), in the dtype of the module (fp16/bf16 models included)."""
        emb = timestep_embedding(t * self.scale, self.dim)  # float32 sinusoids
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


def uniform_copy(src: torch.Tensor, src_mask: torch.Tensor, tgt_lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Copy source vectors to target positions by uniform alignment (NAT decoder inputs, Gu et al. 2018).

    src: (B, S, D) with padding where src_mask (B, S) is True (left or right padding); tgt_lengths: (B,).
    Target position j < tgt_length reads source token floor(j * src_len / tgt_len). -> (B, max_len, D).
    """
    src_len = (~src_mask).long().sum(-1).clamp(min=1)  # (B,)
    leading = src_mask.long().cumprod(-1).sum(-1)  # (B,) pads before the first real token
    j = torch.arange(max_len, device=src.device).unsqueeze(0)  # (1, L)
    offset = (j * src_len.unsqueeze(1)) // tgt_lengths.clamp(min=1).unsqueeze(1)  # (B, L)
    idx = leading.unsqueeze(1) + torch.minimum(offset, (src_len - 1).unsqueeze(1))
    return src.gather(1, idx.unsqueeze(-1).expand(-1, -1, src.size(-1)))
