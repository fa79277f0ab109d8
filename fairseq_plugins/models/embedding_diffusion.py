"""Shared base of the continuous embedding-diffusion models (Difformer, DiffuSeq).

A model owns the token embedding E (V, latent_dim), the Gaussian process of ``difftext`` and a denoiser.
It gives the criterion a dict of named loss terms (fairseq's ``nat_loss`` contract) and gives the
generator a :class:`DecodingProblem`: the shape of the latent to denoise, the denoiser closure and what
must stay fixed. The generator runs the reverse process and turns z0_hat into tokens.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.models import BaseFairseqModel
from torch import nn

from difftext.processes.gaussian import GaussianDiffusion, NoiseFactor
from difftext.schedules.gaussian import SCHEDULES, build_schedule
from fairseq_plugins.errors import DifftextError
from fairseq_plugins.models.layers import (  # noqa: F401
    StackConfig,
    architecture_defaults,
    bf16_for_inference,
    check_joined_dictionary,
)


@dataclass
class EmbeddingDiffusionConfig(StackConfig):
    latent_dim: int = field(default=128, metadata={"help": "dimension of the diffused token embeddings",
                                                   "range": "[1, inf)"})
    diffusion_steps: int = field(default=2000, metadata={"help": "number of diffusion steps T", "range": "[1, inf)"})
    noise_schedule: ChoiceEnum(sorted(SCHEDULES)) = field(default="sqrt", metadata={"help": "alpha_bar schedule"})
    noise_factor: float = field(default=1.0, metadata={"help": "noise factor F >= 1 (Difformer: 4 for IWSLT14)",
                                                       "range": "[1, inf)"})
    variance_preserving_noise: bool = field(
        default=False, metadata={"help": "apply F in variance-preserving form (same SNR, unit variance)"}
    )
    embed_norm: ChoiceEnum(["none", "layernorm", "affine"]) = field(
        default="none", metadata={"help": "z0 = LayerNorm(E[y]) (Difformer), optionally with learnable gain/bias"}
    )
    self_condition_prob: float = field(
        default=0.0,
        metadata={"help": "fraction of training steps that feed the previous z0_hat back as input "
                  "(self-conditioning; Difformer uses 0.5); 0 disables it at training and decoding",
                  "range": "[0, 1]"},
    )
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing of the token cross-entropy",
                                                         "range": "[0, 1)"})


@dataclass
class DecodingProblem:
    """What the generator needs to run the reverse process for N candidates."""

    shape: tuple  # (N, L, D) of the latent
    denoise_fn: Callable  # (z_t, t, z0_self_cond) -> z0_hat
    owner: torch.Tensor  # (N,) index of the input sentence of each candidate
    output_mask: torch.Tensor  # (N, L) True at positions that are decoded into output tokens
    keep_mask: Optional[torch.Tensor] = None  # (N, L) positions reset to z0_fixed (partial noising)
    z0_fixed: Optional[torch.Tensor] = None  # (N, L, D)
    # True: the output ends at the first generated eos/pad (DiffuSeq). False: the length is given
    # (length predictor) and eos/pad generated inside it are dropped (Difformer).
    stop_at_eos: bool = True


class EmbeddingDiffusionModel(BaseFairseqModel):
    """Base: token embedding table, embedding norm, Gaussian process; subclasses add the denoiser."""

    def __init__(self, cfg, dictionary):
        super().__init__()
        self.cfg, self.dictionary = cfg, dictionary
        self.pad, self.eos, self.bos = dictionary.pad(), dictionary.eos(), dictionary.bos()
        self.embed = nn.Embedding(len(dictionary), cfg.latent_dim)
        nn.init.normal_(self.embed.weight, mean=0.0, std=cfg.latent_dim**-0.5)
        self.embed_norm = None
        if cfg.embed_norm != "none":
            self.embed_norm = nn.LayerNorm(cfg.latent_dim, elementwise_affine=cfg.embed_norm == "affine")
        noise = NoiseFactor(cfg.noise_factor, cfg.variance_preserving_noise)
        self.diffusion = GaussianDiffusion(build_schedule(cfg.noise_schedule), cfg.diffusion_steps, noise)

    @classmethod
    def check_dictionaries(cls, task):
        check_joined_dictionary(cls.__name__, task)

    def prepare_for_inference_(self, cfg):
        super().prepare_for_inference_(cfg)
        bf16_for_inference(self, cfg)

    def latent_table(self) -> torch.Tensor:
        """The clean latents of all V tokens: (V, latent_dim) = (LayerNorm of) the embedding matrix."""
        w = self.embed.weight
        return self.embed_norm(w) if self.embed_norm is not None else w

    def embed_latent(self, tokens: torch.Tensor) -> torch.Tensor:
        """z0 of tokens (B, L) -> (B, L, latent_dim)."""
        z = self.embed(tokens)
        return self.embed_norm(z) if self.embed_norm is not None else z

    def output_logits(self, z0_hat: torch.Tensor, table: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The tied output layer: logits = z0_hat E^T, (B, L, D) -> (B, L, V). table: :meth:`latent_table`, where
        the caller has it (a decoder rounding its points a chunk at a time)."""
        return z0_hat @ (self.latent_table() if table is None else table).t()

    def decoding_diffusion(self, noise_factor: Optional[float]) -> GaussianDiffusion:
        if noise_factor is None:
            return self.diffusion
        return self.diffusion.with_noise(NoiseFactor(noise_factor, self.cfg.variance_preserving_noise))

    @property
    def self_conditioning(self) -> bool:
        return self.cfg.self_condition_prob > 0

    def self_condition_input(self, run_denoiser) -> Optional[torch.Tensor]:
        """With probability self_condition_prob, a detached first-pass z0_hat to condition on (else None)."""
        if not self.self_conditioning or float(torch.rand(())) >= self.cfg.self_condition_prob:
            return None
        with torch.no_grad():
            return run_denoiser(None).detach()

    def sample_time(self, batch_size: int, device):
        """Training steps (B,) and per-example importance weights (B,): uniform by default."""
        t = torch.randint(0, self.diffusion.num_steps, (batch_size,), device=device)
        return t, torch.ones(batch_size, device=device)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        saved = state_dict.get("embed.weight")
        if saved is not None and saved.shape[0] != len(self.dictionary):
            raise DifftextError(
                f"checkpoint was trained with a dictionary of {saved.shape[0]} types but the data dictionary "
                f"has {len(self.dictionary)}; pass the data-bin directory the model was trained on "
                "(same dict.*.txt)"
            )
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
