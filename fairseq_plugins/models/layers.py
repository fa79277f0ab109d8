"""Transformer stacks for the diffusion models, built from fairseq's own encoder/decoder layers.

Inputs and outputs are batch-first ``(B, L, C)``; fairseq's layers work time-first internally.
Also the pieces every family shares: the transformer size options (:class:`StackConfig`) and the
fairseq-NAT-style length predictor (:class:`LengthPredictor`).
"""
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models.transformer import TransformerConfig
from fairseq.utils import safe_getattr
from fairseq.modules import LayerNorm
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase
from torch import nn

from fairseq_plugins.errors import DifftextError


def architecture_defaults(args, **defaults):
    """Fill every field of ``args`` that the user did not set from ``defaults`` (fairseq arch presets)."""
    for name, value in defaults.items():
        setattr(args, name, safe_getattr(args, name, value))


def check_joined_dictionary(model_name: str, task) -> None:
    """Models that share one embedding between source and target need fairseq-preprocess --joined-dictionary."""
    src, tgt = task.source_dictionary, task.target_dictionary
    if len(src) != len(tgt) or any(a != b for a, b in zip(src.symbols, tgt.symbols)):
        raise DifftextError(
            f"{model_name} shares one embedding between source and target, but the data has separate "
            f"dictionaries ({len(src)} and {len(tgt)} types); binarize with fairseq-preprocess --joined-dictionary"
        )


@dataclass
class StackConfig(FairseqDataclass):
    """Transformer size and regularisation options shared by every model family."""

    model_dim: int = field(default=512, metadata={"help": "transformer width"})
    ffn_dim: int = field(default=2048, metadata={"help": "transformer feed-forward width"})
    attention_heads: int = field(default=8, metadata={"help": "attention heads per layer"})
    normalize_before: bool = field(default=False, metadata={"help": "pre-norm transformer layers"})
    activation_fn: ChoiceEnum(["relu", "gelu"]) = field(default="gelu", metadata={"help": "FFN activation"})
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout on attention weights"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    max_source_positions: int = field(default=256, metadata={"help": "maximum source length (tokens)"})
    max_target_positions: int = field(default=256, metadata={"help": "maximum target length (tokens)"})


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
        layer_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x: (B, L, C); padding_mask: (B, L) True at padding; memory: (S, B, C) time-first. -> (B, L, C).

        layer_bias: (B, 1, C) added to the input of every layer (layer-wise time embedding).
        """
        if positions is None:  # 1-based positions of real tokens; padding (index 0) embeds to zero
            positions = (~padding_mask).long().cumsum(-1) * (~padding_mask).long()
        x = self.dropout(self.input_norm(x + self.positions(positions)))
        x = x.transpose(0, 1)  # (L, B, C)
        bias = None if layer_bias is None else layer_bias.transpose(0, 1)  # (1, B, C)
        for layer in self.layers:
            if bias is not None:
                x = x + bias
            if self.cross_attention:
                x, _, _ = layer(x, memory, memory_padding_mask, self_attn_padding_mask=padding_mask)
            else:
                x = layer(x, padding_mask)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x.transpose(0, 1)


class LengthPredictor(nn.Linear):
    """Target length from the mean-pooled encoder output: 256 classes (fairseq NAT, Gu et al. 2018).

    With ``offset`` the classes are target minus source length, centred at 128. Lengths count every
    target token, its eos included.
    """

    CLASSES = 256

    def __init__(self, dim: int, *, pad: int, offset: bool):
        super().__init__(dim, self.CLASSES)
        self.pad, self.offset = pad, offset

    def log_probs(self, h: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """h (B, S, C) encoder output, padding_mask (B, S) -> length-class log-probabilities (B, 256), fp32."""
        keep = (~padding_mask).unsqueeze(-1).type_as(h)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1)  # (B, C)
        return F.log_softmax(self(pooled).float(), dim=-1)

    def targets(self, src_tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Class of each target length (B,) -> (B,)."""
        if self.offset:
            lengths = lengths - src_tokens.ne(self.pad).sum(-1) + self.CLASSES // 2
        return lengths.clamp(0, self.CLASSES - 1)

    def lengths(self, src_tokens: torch.Tensor, classes: torch.Tensor, max_length: int) -> torch.Tensor:
        """Target lengths (B, K) of classes (B, K), at least 2 (a token and eos) and at most max_length."""
        if self.offset:
            classes = classes - self.CLASSES // 2 + src_tokens.ne(self.pad).sum(-1, keepdim=True)
        return classes.clamp(2, max_length)
