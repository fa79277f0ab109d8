"""Transformer stacks for the diffusion models, built from fairseq's own encoder/decoder layers.

Inputs and outputs are batch-first ``(B, L, C)``; fairseq's layers work time-first internally.
"""
from typing import Optional

import torch
from fairseq.models.transformer import TransformerConfig
from fairseq.modules import LayerNorm
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase
from torch import nn


def layer_config(args, *, layers: int) -> TransformerConfig:
    """A fairseq TransformerConfig with the widths and dropouts of ``args`` (model_dim, ffn_dim, heads...)."""
    cfg = TransformerConfig()
    cfg.dropout, cfg.attention_dropout = args.dropout, args.attention_dropout
    cfg.activation_dropout, cfg.activation_fn = args.activation_dropout, args.activation_fn
    for part in (cfg.encoder, cfg.decoder):
        part.embed_dim, part.ffn_embed_dim = args.model_dim, args.ffn_dim
        part.attention_heads, part.layers = args.attention_heads, layers
        part.normalize_before = args.normalize_before
    cfg.decoder.input_dim = cfg.decoder.output_dim = args.model_dim
    return cfg


class Stack(nn.Module):
    """Positions + N transformer layers (+ final LayerNorm when pre-norm).

    ``cross_attention=False``: bidirectional self-attention only (encoder / DiffuSeq);
    ``cross_attention=True``: each layer also attends to an encoder memory (Difformer decoder).
    Self-attention is never causal: every position sees the whole sequence.
    """

    def __init__(self, args, *, layers: int, max_positions: int, cross_attention: bool):
        super().__init__()
        cfg = layer_config(args, layers=layers)
        self.cross_attention = cross_attention
        if cross_attention:
            self.layers = nn.ModuleList(TransformerDecoderLayerBase(cfg) for _ in range(layers))
        else:
            self.layers = nn.ModuleList(TransformerEncoderLayerBase(cfg) for _ in range(layers))
        self.positions = nn.Embedding(max_positions + 1, args.model_dim, padding_idx=0)  # learned, 1-based
        nn.init.normal_(self.positions.weight, std=args.model_dim**-0.5)
        nn.init.zeros_(self.positions.weight[0])
        self.input_norm = LayerNorm(args.model_dim)
        self.final_norm = LayerNorm(args.model_dim) if args.normalize_before else None
        self.dropout = nn.Dropout(args.dropout)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor,
        *,
        positions: Optional[torch.Tensor] = None,
        memory: Optional[torch.Tensor] = None,
        memory_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x: (B, L, C); padding_mask: (B, L) True at padding; memory: (S, B, C) time-first. -> (B, L, C)."""
        if positions is None:  # 1-based positions of real tokens; padding (index 0) embeds to zero
            positions = (~padding_mask).long().cumsum(-1) * (~padding_mask).long()
        x = self.dropout(self.input_norm(x + self.positions(positions)))
        x = x.transpose(0, 1)  # (L, B, C)
        for layer in self.layers:
            if self.cross_attention:
                x, _, _ = layer(x, memory, memory_padding_mask, self_attn_padding_mask=padding_mask)
            else:
                x = layer(x, padding_mask)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x.transpose(0, 1)
