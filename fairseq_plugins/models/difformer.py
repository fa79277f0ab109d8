"""Difformer (Gao et al., NAACL 2024): encoder-decoder embedding diffusion with anchor loss.

- encoder over the source (embeddings shared with the target, projected latent -> model dim);
- decoder reads z_t (+ self-conditioning input, projected) + time embedding, cross-attends to the
  encoder, and predicts z0_hat (x0-parameterisation);
- loss = MSE(z0_hat, z0) + anchor CE(W z0_hat, y) (label-smoothed) + length_loss_factor * length CE;
- z0 = LayerNorm(E[y]) (embedding norm), noise factor F, sqrt schedule, T = 2000;
- a fairseq-NAT-style length predictor over the mean-pooled encoder output.
"""
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from fairseq.models import register_model, register_model_architecture
from torch import nn

from difftext.losses.continuous import masked_mse, token_nll
from difftext.nn import TimeEmbedding, uniform_copy
from fairseq_plugins.models.embedding_diffusion import (
    DecodingProblem,
    EmbeddingDiffusionConfig,
    EmbeddingDiffusionModel,
    architecture_defaults,
)
from fairseq_plugins.models.layers import LengthPredictor, Stack, config_defaults


class Encoded(NamedTuple):
    memory: torch.Tensor  # (S, B, C) encoder output, time-first
    memory_mask: torch.Tensor  # (B, S) True at source padding
    length_lprobs: torch.Tensor  # (B, 256) length-class log-probabilities
    src_latent: torch.Tensor  # (B, S, D) source embeddings (latent space)

    def select(self, index: torch.Tensor) -> "Encoded":
        """Rows ``index`` (N,) of every field: the encoder output reused by N candidates."""
        return Encoded(self.memory.index_select(1, index), self.memory_mask.index_select(0, index),
                       self.length_lprobs.index_select(0, index), self.src_latent.index_select(0, index))


@dataclass
class DifformerConfig(EmbeddingDiffusionConfig):
    encoder_layers: int = field(default=6, metadata={"help": "encoder layers", "range": "[1, inf)"})
    decoder_layers: int = field(default=6, metadata={"help": "decoder (denoiser) layers", "range": "[1, inf)"})
    length_loss_factor: float = field(default=0.1, metadata={"help": "weight of the length-prediction loss",
                                                            "range": "[0, inf)"})
    no_pred_length_offset: bool = field(
        default=False, metadata={"help": "predict the target length itself, not target minus source length (fairseq "
                                 "NAT's offset, the default)"}
    )
    src_embedding_copy: bool = field(
        default=False,
        metadata={"help": "also feed the decoder the source embeddings copied to the target length by uniform "
                  "alignment (NAT decoder inputs, Gu et al. 2018); speeds up early training"},
    )
    apply_bert_init: bool = field(
        default=False,
        metadata={"help": "BERT's initialisation (normal(0, 0.02) weights, zero biases) of the denoiser, as the "
                  "reference code's --apply-bert-init does to its decoder"},
    )


@register_model("difformer", dataclass=DifformerConfig)
class DifformerModel(EmbeddingDiffusionModel):
    def __init__(self, cfg, dictionary):
        super().__init__(cfg, dictionary)
        d, lat = cfg.model_dim, cfg.latent_dim
        self.src_proj = nn.Linear(lat, d)
        self.encoder = Stack(cfg, layers=cfg.encoder_layers, max_positions=cfg.max_source_positions, cross_attention=False)
        self.z_proj = nn.Linear(lat * (2 if cfg.self_condition_prob > 0 else 1), d)
        self.copy_proj = nn.Linear(lat, d) if cfg.src_embedding_copy else None
        self.time = TimeEmbedding(d)
        self.decoder = Stack(cfg, layers=cfg.decoder_layers, max_positions=cfg.max_target_positions, cross_attention=True)
        self.out_proj = nn.Linear(d, lat)
        self.length = LengthPredictor(d, pad=self.pad, offset=not cfg.no_pred_length_offset)
        if cfg.apply_bert_init:
            from fairseq.modules.transformer_sentence_encoder import init_bert_params

            for module in (self.z_proj, self.copy_proj, self.time, self.decoder, self.out_proj):
                if module is not None:
                    module.apply(init_bert_params)

    @classmethod
    def build_model(cls, cfg, task):
        cls.check_dictionaries(task)
        return cls(config_defaults(cfg, DifformerConfig), task.target_dictionary)

    def max_positions(self):
        return (self.cfg.max_source_positions, self.cfg.max_target_positions)

    # --- network pieces -------------------------------------------------------------------------
    def encode(self, src_tokens):
        """-> Encoded: memory (S, B, C) time-first, its padding mask (B, S), length log-probs (B, 256),
        source latents (B, S, D)."""
        mask = src_tokens.eq(self.pad)
        src_latent = self.embed_latent(src_tokens)
        h = self.encoder(self.src_proj(src_latent), mask)  # (B, S, C)
        return Encoded(h.transpose(0, 1), mask, self.length.log_probs(h, mask), src_latent)

    def decoder_context(self, enc: "Encoded", lengths: torch.Tensor, max_len: int) -> torch.Tensor:
        """What the decoder input gets besides z_t, fixed across steps: (B, L, C) or a (B, 1, C) zero."""
        if self.copy_proj is None:
            return enc.memory.new_zeros(lengths.size(0), 1, self.cfg.model_dim)
        return self.copy_proj(uniform_copy(enc.src_latent, enc.memory_mask, lengths, max_len))

    def denoise(self, z_t, t, z0_self_cond, enc: "Encoded", context, padding_mask):
        """z_t: (B, L, D), t: (B,) steps -> z0_hat (B, L, D)."""
        x = z_t
        if self.self_conditioning:
            x = torch.cat([z_t, torch.zeros_like(z_t) if z0_self_cond is None else z0_self_cond], dim=-1)
        time = self.time((t.float() + 1) / self.diffusion.num_steps).unsqueeze(1)  # (B, 1, C)
        h = self.z_proj(x) + time + context
        h = self.decoder(h, padding_mask, memory=enc.memory, memory_padding_mask=enc.memory_mask)
        return self.out_proj(h)

    # --- training ------------------------------------------------------------------------------
    def forward(self, src_tokens, src_lengths, prev_output_tokens=None, tgt_tokens=None, **unused):
        """Named loss terms (fairseq nat_loss contract) for a batch of (source, target) pairs."""
        enc = self.encode(src_tokens)
        tgt_mask = tgt_tokens.ne(self.pad)  # (B, L)
        context = self.decoder_context(enc, tgt_mask.sum(-1), tgt_tokens.size(1))
        z0 = self.embed_latent(tgt_tokens)  # (B, L, D)
        t, weights = self.sample_time(tgt_tokens.size(0), tgt_tokens.device)
        z_t = self.diffusion.q_sample(z0, t)
        z0_self_cond = self.self_condition_input(lambda sc: self.denoise(z_t, t, sc, enc, context, ~tgt_mask))
        z0_hat = self.denoise(z_t, t, z0_self_cond, enc, context, ~tgt_mask)
        mse = masked_mse(z0_hat, z0, tgt_mask)
        anchor = token_nll(self.output_logits(z0_hat), tgt_tokens, tgt_mask, self.cfg.label_smoothing)
        length_target = self.length.targets(src_tokens, tgt_mask.sum(-1))
        length_nll = F.nll_loss(enc.length_lprobs, length_target)
        return {
            "mse": {"loss": (weights * mse.per_example).sum() / mse.tokens.sum(), "factor": 1.0},
            "anchor": {"loss": (weights * anchor.per_example).sum() / anchor.tokens.sum(), "factor": 1.0},
            "length": {"loss": length_nll, "factor": self.cfg.length_loss_factor},
        }

    # --- decoding ------------------------------------------------------------------------------
    def decoding_problem(self, src_tokens, src_lengths, *, length_beam: int, noise_beam: int) -> DecodingProblem:
        """Encode once; K lengths x M noise samples per sentence share the expanded encoder memory."""
        enc = self.encode(src_tokens)
        bsz = src_tokens.size(0)
        k = min(length_beam, LengthPredictor.CLASSES)
        top_classes = enc.length_lprobs.topk(k, dim=-1).indices  # (B, K)
        lengths = self.length.lengths(src_tokens, top_classes, self.cfg.max_target_positions)
        lengths = lengths.repeat_interleave(noise_beam, dim=1).reshape(-1)  # (N,)
        owner = torch.arange(bsz, device=src_tokens.device).repeat_interleave(k * noise_beam)  # (N,)
        max_len = int(lengths.max())
        output_mask = torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)  # (N, L)
        enc = enc.select(owner)
        context = self.decoder_context(enc, lengths, max_len)

        def denoise_fn(z_t, t, z0_self_cond):
            return self.denoise(z_t, t, z0_self_cond, enc, context, ~output_mask)

        return DecodingProblem(
            shape=(owner.numel(), max_len, self.cfg.latent_dim),
            denoise_fn=denoise_fn,
            owner=owner,
            output_mask=output_mask,
            stop_at_eos=False,
        )


def _difformer_defaults(args, **overrides):
    defaults = dict(
        latent_dim=128, model_dim=512, ffn_dim=2048, attention_heads=8, encoder_layers=6, decoder_layers=6,
        dropout=0.1, diffusion_steps=2000, noise_schedule="sqrt", noise_factor=4.0, embed_norm="layernorm",
        self_condition_prob=0.5, label_smoothing=0.1, length_loss_factor=0.1,
    )
    defaults.update(overrides)
    architecture_defaults(args, **defaults)


@register_model_architecture("difformer", "difformer_base")
def difformer_base(args):
    _difformer_defaults(args)


@register_model_architecture("difformer", "difformer_iwslt_de_en")
def difformer_iwslt_de_en(args):
    """The paper's IWSLT14 De-En model: 6+6 layers, d 512, ffn 1024, 4 heads, latent 128, dropout 0.3."""
    _difformer_defaults(args, ffn_dim=1024, attention_heads=4, dropout=0.3)


@register_model_architecture("difformer", "difformer_small")
def difformer_small(args):
    """3+3 layers, d 256, ffn 1024, 4 heads: the size used by the quickstart and the benchmarks."""
    _difformer_defaults(args, model_dim=256, ffn_dim=1024, attention_heads=4, encoder_layers=3, decoder_layers=3)


@register_model_architecture("difformer", "difformer_tiny")
def difformer_tiny(args):
    """For tests: 1+1 layers, d 32."""
    _difformer_defaults(
        args, latent_dim=16, model_dim=32, ffn_dim=64, attention_heads=2, encoder_layers=1, decoder_layers=1,
        diffusion_steps=100, max_source_positions=128, max_target_positions=128,
    )
