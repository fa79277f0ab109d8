"""DiffuSeq (Gong et al., ICLR 2023): encoder-only embedding diffusion with partial noising.

One transformer reads z = EMB(x) ⊕ z_y over ``source ⊕ target region``. Only the target region is
noised; source positions are reset to their clean embeddings at every training and sampling step.
The target region has a fixed length (``--max-target-positions``): the target, its eos, then pad tokens
that the model learns to generate, so at decoding the output length is the position of the first
generated eos/pad. Loss = MSE on the region + rounding loss -log p(y | z0) + tT loss ||a_T z0||^2, with
timesteps drawn by the loss-aware sampler (its history is saved in the model's state dict).
"""
from dataclasses import dataclass, field

import torch
from fairseq import utils
from fairseq.models import register_model, register_model_architecture
from torch import nn

from difftext.losses.continuous import masked_mse, prior_loss, token_nll
from difftext.nn import TimeEmbedding
from difftext.time_samplers import LossAwareSampler
from fairseq_plugins.models.embedding_diffusion import (
    DecodingProblem,
    EmbeddingDiffusionConfig,
    EmbeddingDiffusionModel,
    architecture_defaults,
)
from fairseq_plugins.errors import DifftextError
from fairseq_plugins.models.layers import Stack, config_defaults


@dataclass
class DiffuSeqConfig(EmbeddingDiffusionConfig):
    layers: int = field(default=12, metadata={"help": "transformer layers over source ⊕ target", "range": "[1, inf)"})
    no_loss_aware_sampler: bool = field(
        default=False, metadata={"help": "draw training steps uniformly, not by DiffuSeq's loss-aware (second-moment) "
                                 "sampler (the default)"}
    )


@register_model("diffuseq", dataclass=DiffuSeqConfig)
class DiffuSeqModel(EmbeddingDiffusionModel):
    def __init__(self, cfg, dictionary):
        super().__init__(cfg, dictionary)
        d = cfg.model_dim
        self.in_proj = nn.Linear(cfg.latent_dim * (2 if cfg.self_condition_prob > 0 else 1), d)
        self.time = TimeEmbedding(d)
        max_positions = cfg.max_source_positions + cfg.max_target_positions
        self.stack = Stack(cfg, layers=cfg.layers, max_positions=max_positions, cross_attention=False)
        self.out_proj = nn.Linear(d, cfg.latent_dim)
        self.time_sampler = None if cfg.no_loss_aware_sampler else LossAwareSampler(cfg.diffusion_steps)

    @classmethod
    def build_model(cls, cfg, task):
        cls.check_dictionaries(task)
        return cls(config_defaults(cfg, DiffuSeqConfig), task.target_dictionary)

    def max_positions(self):
        # Training: the target and its eos must fit in the region. Decoding writes its own region, so
        # references of any length are decoded (and scored) rather than filtered out.
        if self.training:
            return (self.cfg.max_source_positions, self.cfg.max_target_positions - 1)
        return (self.cfg.max_source_positions, None)

    def sample_time(self, batch_size, device):
        if self.time_sampler is None or not self.training:
            return super().sample_time(batch_size, device)
        return self.time_sampler.sample(batch_size, device=device)

    # --- layout --------------------------------------------------------------------------------
    def layout(self, src_tokens, tgt_tokens=None):
        """Concatenate right-padded source and the fixed-length target region.

        -> tokens (B, S+R), source mask (B, S+R) True on source positions, padding mask (B, S+R)
        True on source padding only (the stack counts positions over the real tokens, so the target region
        starts right after the last source token).
        """
        src = utils.convert_padding_direction(src_tokens, self.pad, left_to_right=True)
        bsz, region = src.size(0), self.cfg.max_target_positions
        tgt = src.new_full((bsz, region), self.pad)
        if tgt_tokens is not None:
            if tgt_tokens.size(1) > region:
                raise DifftextError(
                    f"a target of {tgt_tokens.size(1)} tokens does not fit DiffuSeq's target region of {region}; "
                    "raise --max-target-positions or pass --skip-invalid-size-inputs-valid-test"
                )
            tgt[:, : tgt_tokens.size(1)] = tgt_tokens
        tokens = torch.cat([src, tgt], dim=1)
        src_pad = src.eq(self.pad)
        padding = torch.cat([src_pad, torch.zeros_like(tgt, dtype=torch.bool)], dim=1)
        is_src = torch.cat([torch.ones_like(src, dtype=torch.bool), torch.zeros_like(tgt, dtype=torch.bool)], 1)
        return tokens, is_src, padding

    def denoise(self, z_t, t, z0_self_cond, padding):
        x = z_t
        if self.self_conditioning:
            x = torch.cat([z_t, torch.zeros_like(z_t) if z0_self_cond is None else z0_self_cond], dim=-1)
        time = self.time((t.float() + 1) / self.diffusion.num_steps).unsqueeze(1)  # (B, 1, C)
        return self.out_proj(self.stack(self.in_proj(x) + time, padding))

    # --- training ------------------------------------------------------------------------------
    def forward(self, src_tokens, src_lengths, prev_output_tokens=None, tgt_tokens=None, **unused):
        tokens, is_src, padding = self.layout(src_tokens, tgt_tokens)
        region = ~is_src  # loss on the whole target region, pads included
        z0 = self.embed_latent(tokens)  # (B, S+R, D)
        t, weights = self.sample_time(tokens.size(0), tokens.device)
        z_t = self.diffusion.q_sample(z0, t, keep_mask=is_src)
        z0_self_cond = self.self_condition_input(lambda sc: self.denoise(z_t, t, sc, padding))
        z0_hat = self.denoise(z_t, t, z0_self_cond, padding)
        mse = masked_mse(z0_hat, z0, region)
        # logits of the target region alone (the layout's last R columns): the source columns carry no rounding loss,
        # and their (V)-wide logits and log-softmax were a quarter of the rounding's work on Multi30k
        r = slice(src_tokens.size(1), None)
        rounding = token_nll(self.output_logits(z0[:, r]), tokens[:, r], region[:, r], self.cfg.label_smoothing)
        t_T = prior_loss(z0, float(self.diffusion.a[-1]), region)
        if self.time_sampler is not None and self.training:
            self.time_sampler.update(t, mse.per_example / mse.tokens.clamp(min=1))
        return {
            "mse": {"loss": (weights * mse.per_example).sum() / mse.tokens.sum(), "factor": 1.0},
            "rounding": {"loss": rounding.mean_per_token(), "factor": 1.0},
            "tT": {"loss": t_T.mean_per_token(), "factor": 1.0},
        }

    # --- decoding ------------------------------------------------------------------------------
    def decoding_problem(self, src_tokens, src_lengths, *, length_beam: int, noise_beam: int) -> DecodingProblem:
        """M noise samples per sentence; the length is where the first eos/pad is generated."""
        owner = torch.arange(src_tokens.size(0), device=src_tokens.device).repeat_interleave(noise_beam)
        tokens, is_src, padding = (x.index_select(0, owner) for x in self.layout(src_tokens))

        def denoise_fn(z_t, t, z0_self_cond):
            return self.denoise(z_t, t, z0_self_cond, padding)

        return DecodingProblem(
            shape=(owner.numel(), tokens.size(1), self.cfg.latent_dim),
            denoise_fn=denoise_fn,
            owner=owner,
            output_mask=~is_src,
            keep_mask=is_src,
            z0_fixed=self.embed_latent(tokens),
        )


def _diffuseq_defaults(args, **overrides):
    defaults = dict(
        latent_dim=128, model_dim=768, ffn_dim=3072, attention_heads=12, layers=12, dropout=0.1,
        diffusion_steps=2000, noise_schedule="sqrt", noise_factor=1.0, embed_norm="none", self_condition_prob=0.0,
        label_smoothing=0.0, max_source_positions=64, max_target_positions=64,
    )
    defaults.update(overrides)
    architecture_defaults(args, **defaults)


@register_model_architecture("diffuseq", "diffuseq_base")
def diffuseq_base(args):
    """The paper's model: 12 layers, width 768, 12 heads, embeddings 128, sequence 128 (64 + 64)."""
    _diffuseq_defaults(args)


@register_model_architecture("diffuseq", "diffuseq_small")
def diffuseq_small(args):
    _diffuseq_defaults(args, model_dim=256, ffn_dim=1024, attention_heads=4, layers=6)


@register_model_architecture("diffuseq", "diffuseq_tiny")
def diffuseq_tiny(args):
    """For tests: 1 layer, d 32, T 100, 64-token target region."""
    _diffuseq_defaults(
        args, latent_dim=16, model_dim=32, ffn_dim=64, attention_heads=2, layers=1, diffusion_steps=100,
        max_source_positions=128, max_target_positions=64,
    )
