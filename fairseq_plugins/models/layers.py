"""Transformer stacks for the diffusion models, built from fairseq's own encoder/decoder layers.

Inputs and outputs are batch-first ``(B, L, C)``; fairseq's layers work time-first internally.
Also the pieces every family shares: the transformer size options (:class:`StackConfig`) and the
fairseq-NAT-style length predictor (:class:`LengthPredictor`).
"""
from dataclasses import MISSING, dataclass, field, fields
from typing import Optional

import torch
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models.transformer import TransformerConfig
from fairseq.utils import safe_getattr
from fairseq.modules import LayerNorm
from fairseq.modules.rotary_positional_embedding import apply_rotary_pos_emb
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase
from omegaconf import OmegaConf, open_dict
from torch import nn

from fairseq_plugins.errors import DifftextError, in_range


def architecture_defaults(args, **defaults):
    """Fill every field of ``args`` that the user did not set from ``defaults`` (fairseq arch presets)."""
    for name, value in defaults.items():
        setattr(args, name, safe_getattr(args, name, value))


def config_defaults(cfg, config_class):
    """``cfg`` with every field of ``config_class`` it lacks set to the field's default (in place; returned).

    A checkpoint stores the model config it was trained with, under its arch name (``difformer_small``), and
    fairseq merges a model's dataclass defaults only into configs named after the model itself, so a field added
    after the checkpoint was saved would be missing when the model is built again. Defaults that interpolate
    other config groups (``${task.x}``) are left out: a checkpoint's config always has those fields. Then every
    option's range is checked (:func:`check_ranges`).
    """
    if not OmegaConf.is_config(cfg):
        check_ranges(cfg, config_class)
        return cfg
    missing = {}
    for f in fields(config_class):
        if f.name in cfg:
            continue
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if default is not MISSING and not (isinstance(default, str) and default.startswith("${")):
            missing[f.name] = default.value if hasattr(default, "value") else default  # ChoiceEnum members
    if missing:
        with open_dict(cfg):
            cfg.update(missing)
    check_ranges(cfg, config_class)
    return cfg


def check_ranges(cfg, config_class) -> None:
    """One-line errors, before anything is built, for model options outside their range (the ``range`` of each
    field's metadata) and for a width the attention heads do not divide."""
    for f in fields(config_class):
        interval = f.metadata.get("range")
        value = getattr(cfg, f.name, None)
        if interval is not None and value is not None:
            in_range(f.name, value, interval, f.metadata.get("help", "").split(" (")[0].split(";")[0])
    dim, heads = getattr(cfg, "model_dim", None), getattr(cfg, "attention_heads", None)
    if dim and heads and dim % heads:
        raise DifftextError(f"--attention-heads {heads} does not divide --model-dim {dim}; use a number of heads that "
                            "divides it (each head gets model-dim / heads channels)")


def check_joined_dictionary(model_name: str, task) -> None:
    """Models that share one embedding between source and target need fairseq-preprocess --joined-dictionary."""
    src, tgt = task.source_dictionary, task.target_dictionary
    if len(src) != len(tgt) or any(a != b for a, b in zip(src.symbols, tgt.symbols)):
        raise DifftextError(
            f"{model_name} shares one embedding between source and target, but the data has separate "
            f"dictionaries ({len(src)} and {len(tgt)} types); binarize with fairseq-preprocess --joined-dictionary"
        )


def bf16_for_inference(model: nn.Module, cfg) -> None:
    """``--bf16`` at inference: fairseq-generate casts models to fp16 for ``--fp16`` but leaves them in fp32 for
    ``--bf16``; this casts them to bf16, as fairseq's trainer does for ``--bf16`` training. Called from the
    models' ``prepare_for_inference_(cfg)``, which fairseq-generate/-interactive call with the command's config."""
    common = getattr(cfg, "common", None)
    if common is not None and getattr(common, "bf16", False) and not getattr(common, "fp16", False):
        model.to(dtype=torch.bfloat16)


@dataclass
class StackConfig(FairseqDataclass):
    """Transformer size and regularisation options shared by every model family."""

    model_dim: int = field(default=512, metadata={"help": "transformer width", "range": "[1, inf)"})
    ffn_dim: int = field(default=2048, metadata={"help": "transformer feed-forward width", "range": "[1, inf)"})
    attention_heads: int = field(default=8, metadata={"help": "attention heads per layer", "range": "[1, inf)"})
    normalize_before: bool = field(default=False, metadata={"help": "pre-norm transformer layers"})
    activation_fn: ChoiceEnum(["relu", "gelu"]) = field(default="gelu", metadata={"help": "FFN activation"})
    dropout: float = field(default=0.1, metadata={"help": "dropout probability", "range": "[0, 1)"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout on attention weights",
                                                             "range": "[0, 1)"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation",
                                                              "range": "[0, 1)"})
    max_source_positions: int = field(default=256, metadata={"help": "maximum source length (tokens)",
                                                              "range": "[1, inf)"})
    max_target_positions: int = field(default=256, metadata={"help": "maximum target length (tokens)",
                                                              "range": "[1, inf)"})
    position_encoding: ChoiceEnum(["learned", "rotary"]) = field(
        default="learned", metadata={"help": "learned absolute positions added to the input, or rotary positions "
                                     "in every self-attention (RoFormer; MDLM's DiT and MD4's transformer)"}
    )


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
            for layer in self.layers:  # the memory's keys and values once per reverse process, not per step
                layer.encoder_attn = MemoryAttention(layer.encoder_attn)
        else:
            self.layers = nn.ModuleList(TransformerEncoderLayerBase(cfg) for _ in range(layers))
        self.rotary = safe_getattr(args, "position_encoding", "learned") == "rotary"
        if self.rotary:  # positions enter through every self-attention's queries and keys
            self.positions = None
            for layer in self.layers:
                layer.self_attn = RotarySelfAttention(layer.self_attn)
        else:
            for layer in self.layers:
                layer.self_attn = SelfAttention(layer.self_attn)
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
        memory: Optional[torch.Tensor] = None,
        memory_padding_mask: Optional[torch.Tensor] = None,
        layer_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x: (B, L, C); padding_mask: (B, L) True at padding; memory: (S, B, C) time-first. -> (B, L, C).

        layer_bias: (B, 1, C) added to the input of every layer (layer-wise time embedding).
        """
        if not self.rotary:  # padding (index 0) embeds to zero
            x = x + self.positions(token_positions(padding_mask))
        x = self.dropout(self.input_norm(x))
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


def token_positions(padding_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) True at padding -> 1-based positions counted over the real tokens, 0 at padding."""
    real = (~padding_mask).long()
    return real.cumsum(-1) * real


class _Attention(nn.Module):
    """Takes over the projections of a fairseq ``MultiheadAttention`` (same parameter names, so state dicts keep
    their keys) and attends with ``F.scaled_dot_product_attention``. Called as fairseq's layers call theirs."""

    def __init__(self, attention):
        super().__init__()
        if attention.bias_k is not None or attention.add_zero_attn:
            raise DifftextError(f"{type(self).__name__} does not implement add_bias_kv / add_zero_attn")
        self.num_heads, self.head_dim = attention.num_heads, attention.head_dim
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj)
        self.dropout = attention.dropout_module.p

    def _get_input_buffer(self, incremental_state):  # fairseq's decoder layer asks; there is no cache
        if incremental_state is not None:
            raise DifftextError(f"{type(self).__name__} keeps no incremental decoding state")
        return {}

    def _heads(self, x):  # (L, B, C) -> (L, B, H, dh)
        return x.view(x.size(0), x.size(1), self.num_heads, self.head_dim)

    def _attend(self, q, k, v, key_padding_mask):
        """q (Lq, B, H, dh), k and v (Lk, B, H, dh), key_padding_mask (B, Lk) True at padding -> (Lq, B, C)."""
        length, batch = q.size(0), q.size(1)
        q, k, v = (x.permute(1, 2, 0, 3) for x in (q, k, v))  # (B, H, L, dh)
        keep = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.permute(2, 0, 1, 3).reshape(length, batch, self.num_heads * self.head_dim))


class SelfAttention(_Attention):
    """Bidirectional self-attention through ``F.scaled_dot_product_attention`` (fairseq's own goes through
    ``F.multi_head_attention_forward``, whose Python overhead dominates small decoding batches)."""

    def forward(self, query, key=None, value=None, key_padding_mask=None, attn_mask=None, **unused):
        """query (L, B, C) time-first; key_padding_mask (B, L) True at padding. -> ((L, B, C), None)."""
        if (key is not None and key is not query) or attn_mask is not None or unused.get("incremental_state"):
            raise DifftextError("SelfAttention is full bidirectional self-attention: no other keys, no attention "
                                "mask, no incremental state")
        q, k, v = (self._heads(proj(query)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        return self._attend(q, k, v, key_padding_mask), None


class RotarySelfAttention(_Attention):
    """Self-attention with rotary position embeddings (Su et al., RoFormer).

    Queries and keys are rotated by the angle of their token's position, so attention scores depend on
    relative positions only. Positions are counted over the real tokens (from the key padding mask), so left or
    right padding does not move them.
    """

    def __init__(self, attention, base: float = 10000.0):
        super().__init__(attention)
        self.register_buffer(
            "inv_freq", base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim),
            persistent=False)

    def forward(self, query, key=None, value=None, key_padding_mask=None, attn_mask=None, **unused):
        """query (L, B, C) time-first; key_padding_mask (B, L) True at padding. -> ((L, B, C), None)."""
        if (key is not None and key is not query) or attn_mask is not None or unused.get("incremental_state"):
            raise DifftextError("rotary positions are implemented for full bidirectional self-attention only; "
                                "use --position-encoding learned")
        length, batch, _ = query.shape
        if key_padding_mask is None:
            key_padding_mask = torch.zeros(batch, length, dtype=torch.bool, device=query.device)
        angles = token_positions(key_padding_mask).t().unsqueeze(-1).float() * self.inv_freq  # (L, B, dh/2)
        angles = torch.cat([angles, angles], -1).unsqueeze(2)  # (L, B, 1, dh), the halves rotate_half pairs
        cos, sin = angles.cos().to(query.dtype), angles.sin().to(query.dtype)
        q, k = apply_rotary_pos_emb(self._heads(self.q_proj(query)), self._heads(self.k_proj(query)), cos, sin)
        return self._attend(q, k, self._heads(self.v_proj(query)), key_padding_mask), None


class MemoryAttention(_Attention):
    """Cross-attention to an encoder memory, its keys and values projected once per memory rather than per call.

    A reverse process calls the decoder at every step with the same memory tensor, so the memory's projections
    are kept and reused while no gradient is recorded and the memory is the same, unmodified tensor (same object,
    same version counter); training, any other memory, or a memory made under ``torch.inference_mode`` (which
    keeps no version counter) projects afresh. The last memory's keys and values
    stay referenced until the next call.
    """

    def __init__(self, attention):
        super().__init__(attention)
        self._memo = None  # (key, value, key version, value version, projected k, projected v)

    def forward(self, query, key, value, key_padding_mask=None, attn_mask=None, **unused):
        """query (L, B, C), key = value = memory (S, B, C), key_padding_mask (B, S). -> ((L, B, C), None)."""
        if attn_mask is not None or unused.get("incremental_state"):
            raise DifftextError("MemoryAttention attends to a whole encoder memory: no attention mask, no "
                                "incremental state")
        # Inference-mode tensors keep no version counter, so an in-place change could not be seen: not reused.
        reusable = not torch.is_grad_enabled() and not (key.is_inference() or value.is_inference())
        memo = self._memo
        if reusable and memo is not None and memo[0] is key and memo[1] is value \
                and memo[2] == key._version and memo[3] == value._version:
            k, v = memo[4], memo[5]
        else:
            k, v = self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
            self._memo = (key, value, key._version, value._version, k, v) if reusable else None
        return self._attend(self._heads(self.q_proj(query)), k, v, key_padding_mask), None


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
