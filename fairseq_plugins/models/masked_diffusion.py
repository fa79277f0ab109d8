"""Masked (absorbing-state) diffusion models: DiffusionBERT, MDLM, MD4 and GenMD4.

One family, the schedule and objective being options (``difftext.masked_diffusion``):

- ``masked_diffusion``: encoder-decoder for sequence-to-sequence. The encoder reads the source; the
  denoiser reads z_t (target tokens, some replaced by [M]), cross-attends to the encoder and predicts
  x0 through the tied embedding (SUBS). A NAT length predictor gives the target length at decoding.
- ``masked_diffusion_lm``: one bidirectional transformer over z_t, for unconditional language
  modelling (task ``text_diffusion_lm``), trained and evaluated with the ELBO.

The mask symbol [M] is an extra row of the embedding after the data dictionary (id = len(dict)), so
the data and its dictionary are the ones every other model uses. Time conditioning follows
DiffusionBERT's designs: ``none`` (time-agnostic), ``prefix`` (a time vector prepended as an extra
position) or ``layerwise`` (a time embedding added to the input of every layer).
Arch presets per paper: ``mdlm_*``, ``md4_*``, ``genmd4_*``, ``diffusionbert_*`` (seq2seq) and
``*_lm_*`` (language models); see the bottom of this file.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture
from torch import nn

from difftext.masked_diffusion import COMPATIBLE, OBJECTIVES, SCHEDULES, MaskedDiffusion, build_masking_schedule
from difftext.nn import TimeEmbedding
from difftext.processes.masked import maskable_positions, masked_prior
from fairseq_plugins.errors import DifftextError
from fairseq_plugins.models.layers import (
    LengthPredictor,
    Stack,
    StackConfig,
    architecture_defaults,
    bf16_for_inference,
    check_joined_dictionary,
    config_defaults,
)

TIME_CONDITIONING = ("none", "prefix", "layerwise")


@dataclass
class MaskedDiffusionConfig(StackConfig):
    objective: ChoiceEnum(OBJECTIVES) = field(
        default="mdlm", metadata={"help": "mdlm / md4: continuous-time NELBO; d3pm: discrete-time absorbing "
                                  "ELBO + hybrid CE (DiffusionBERT); genmd4: learnable per-token schedule"}
    )
    masking_schedule: ChoiceEnum(SCHEDULES) = field(
        default="loglinear", metadata={"help": "alpha_t: loglinear/linear/cosine/polynomial (mdlm, md4), "
                                       "mutual/spindle (d3pm), genmd4 (genmd4)"}
    )
    schedule_exponent: float = field(
        default=1.0, metadata={"help": "w of the polynomial schedule 1 - t^w; initial exponent of genmd4",
                               "range": "(0, inf)"}
    )
    diffusion_steps: int = field(default=2048, metadata={"help": "T of the discrete-time d3pm objective",
                                                        "range": "[1, inf)"})
    spindle_lambda: float = field(default=0.3, metadata={"help": "lambda of the spindle schedule", "range": "[0, 1]"})
    hybrid_lambda: float = field(default=1e-2, metadata={"help": "weight of the hybrid CE term (d3pm)",
                                                        "range": "[0, inf)"})
    time_conditioning: ChoiceEnum(TIME_CONDITIONING) = field(
        default="none", metadata={"help": "none (time-agnostic), prefix time vector, or layer-wise time embedding"}
    )
    time_eps: float = field(default=1e-3, metadata={"help": "continuous training times are drawn in [eps, 1]",
                                                   "range": "(0, 1)"})
    no_antithetic_time: bool = field(
        default=False, metadata={"help": "independent training times, not MDLM's stratified (antithetic) times within "
                                 "a batch (the default)"}
    )
    rloo_samples: int = field(default=2, metadata={"help": "mask samples per sequence of GenMD4's RLOO gradient",
                                                  "range": "[1, inf)"})
    bert_init: Optional[str] = field(
        default=None, metadata={"help": "initialise the transformer from a local Hugging Face BERT directory "
                                "(DiffusionBERT); needs `pip install difftext[bert]`"}
    )


@dataclass
class MaskedSeq2SeqConfig(MaskedDiffusionConfig):
    encoder_layers: int = field(default=6, metadata={"help": "encoder layers", "range": "[1, inf)"})
    decoder_layers: int = field(default=6, metadata={"help": "denoiser layers", "range": "[1, inf)"})
    length_loss_factor: float = field(
        default=0.1, metadata={"help": "weight of the length-prediction loss, relative to a masked token's "
                               "cross-entropy in the objective (scaled by the objective's token weight: 1 for "
                               "mdlm/md4/genmd4, ~5.5e-3 for d3pm at T 2048, so the length term cannot dominate)",
                               "range": "[0, inf)"}
    )
    no_pred_length_offset: bool = field(
        default=False, metadata={"help": "predict the target length itself, not target minus source length (fairseq "
                                 "NAT's offset, the default)"}
    )


@dataclass
class MaskedLMConfig(MaskedDiffusionConfig):
    layers: int = field(default=12, metadata={"help": "transformer layers", "range": "[1, inf)"})


@dataclass
class MaskedDecodingProblem:
    """What the generator needs to sample N candidates with a masked-diffusion sampler."""

    z_1: torch.Tensor  # (N, L) [M] at the positions to generate, fixed tokens elsewhere
    denoise_fn: Callable  # (z_t (N, L), t (N,)) -> logits (M, V+1) at the M masked positions
    owner: torch.Tensor  # (N,) input sentence of each candidate
    output_mask: torch.Tensor  # (N, L) positions that become output tokens
    schedule: object  # sampling schedule
    mask_id: int
    forbidden_ids: tuple  # never generated


class MaskedDiffusionBase(BaseFairseqModel):
    """Shared embedding (+[M] row), schedule/objective, time conditioning and loss terms."""

    is_masked_diffusion = True

    def __init__(self, cfg, dictionary, *, protected_ids, forbidden_ids):
        super().__init__()
        self.cfg, self.dictionary = cfg, dictionary
        self.pad, self.eos, self.bos = dictionary.pad(), dictionary.eos(), dictionary.bos()
        self.mask_id = len(dictionary)
        self.protected_ids, self.forbidden_ids = tuple(protected_ids), tuple(forbidden_ids)
        _check_options(cfg)
        self.embed = nn.Embedding(len(dictionary) + 1, cfg.model_dim, padding_idx=self.pad)
        nn.init.normal_(self.embed.weight, std=cfg.model_dim**-0.5)
        nn.init.zeros_(self.embed.weight[self.pad])
        counts = torch.tensor(list(dictionary.count) + [0], dtype=torch.float64)  # training-set counts (dict.txt)
        schedule = build_masking_schedule(
            cfg.masking_schedule, vocab_size=len(dictionary) + 1, num_steps=cfg.diffusion_steps,
            exponent=cfg.schedule_exponent, eps=cfg.time_eps, spindle_lambda=cfg.spindle_lambda, counts=counts,
        )
        self.diffusion = MaskedDiffusion(
            schedule, objective=cfg.objective, mask_id=self.mask_id, time_eps=cfg.time_eps,
            antithetic=not cfg.no_antithetic_time, hybrid_lambda=cfg.hybrid_lambda, rloo_samples=cfg.rloo_samples,
        )
        self.time = TimeEmbedding(cfg.model_dim) if cfg.time_conditioning != "none" else None

    def prepare_for_inference_(self, cfg):
        super().prepare_for_inference_(cfg)
        bf16_for_inference(self, cfg)

    @property
    def time_agnostic(self) -> bool:
        return self.time is None

    @property
    def extra_positions(self) -> int:
        """Positions the prefix time vector takes."""
        return int(self.cfg.time_conditioning == "prefix")

    def maskable(self, tokens: torch.Tensor) -> torch.Tensor:
        return maskable_positions(tokens, self.protected_ids)

    def time_inputs(self, h, padding_mask, t):
        """Apply time conditioning to the stack input h (B, L, C): -> (h, padding_mask, layer_bias)."""
        if self.time is None:
            return h, padding_mask, None
        emb = self.time(t).unsqueeze(1)  # (B, 1, C)
        if self.cfg.time_conditioning == "layerwise":
            return h, padding_mask, emb
        return torch.cat([emb, h], 1), F.pad(padding_mask, (1, 0), value=False), None

    def output_logits(self, h: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        """Tied output layer over the data vocabulary and [M] at the masked positions of z_t (B, L) only:
        (B, L', C) -> (M, V+1). SUBS never reads the logits of an unmasked position, so they are not computed.
        """
        return h[:, self.extra_positions:][z_t.eq(self.mask_id)] @ self.embed.weight.t()

    def loss_terms(self, denoise_fn, x0: torch.Tensor) -> dict:
        """The objective (per maskable token) and the ELBO statistics, in the criterion's named-terms form."""
        out = self.diffusion(denoise_fn, x0, self.maskable(x0))
        tokens = out.num_tokens.sum()
        return {
            "diffusion": {"loss": out.loss / tokens.clamp_min(1), "factor": 1.0},
            "elbo": {"nats": out.nelbo.sum().detach().float(), "tokens": tokens},
        }

    def decoding_setup(self, z_1, denoise_fn, owner, output_mask) -> MaskedDecodingProblem:
        return MaskedDecodingProblem(
            z_1=z_1, denoise_fn=denoise_fn, owner=owner, output_mask=output_mask,
            schedule=self.diffusion.sampling_schedule, mask_id=self.mask_id, forbidden_ids=self.forbidden_ids,
        )

    def initialise_from_bert(self, stacks):
        from fairseq_plugins.models.bert_init import initialise_from_bert

        initialise_from_bert(self.cfg.bert_init, stacks, self.embed, self.dictionary, self.mask_id)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        saved = state_dict.get("embed.weight")
        if saved is not None and saved.shape[0] != len(self.dictionary) + 1:
            raise DifftextError(
                f"checkpoint was trained with a dictionary of {saved.shape[0] - 1} types but the data dictionary "
                f"has {len(self.dictionary)}; pass the data-bin directory the model was trained on (same dict.*.txt)"
            )
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)


def _check_options(cfg) -> None:
    if cfg.masking_schedule not in COMPATIBLE[cfg.objective]:
        raise DifftextError(
            f"--objective {cfg.objective} is defined for --masking-schedule "
            f"{' / '.join(COMPATIBLE[cfg.objective])}, not {cfg.masking_schedule}; pick a matching pair "
            "(or one of the mdlm_* / md4_* / genmd4_* / diffusionbert_* archs)"
        )
    if cfg.objective == "genmd4" and cfg.rloo_samples < 2:
        raise DifftextError(f"--rloo-samples must be >= 2 for the leave-one-out baseline (got {cfg.rloo_samples})")


def _from_checkpoint(task) -> bool:
    return bool(getattr(task, "building_from_checkpoint", False))


@register_model("masked_diffusion", dataclass=MaskedSeq2SeqConfig)
class MaskedDiffusionSeq2Seq(MaskedDiffusionBase):
    """Encoder-decoder masked diffusion; the target length comes from a length predictor."""

    def __init__(self, cfg, dictionary):
        d = dictionary
        super().__init__(cfg, d, protected_ids=(d.pad(), d.bos(), d.eos()), forbidden_ids=(d.pad(), d.bos(), d.eos()))
        self.encoder = Stack(cfg, layers=cfg.encoder_layers, max_positions=cfg.max_source_positions,
                             cross_attention=False)
        self.decoder = Stack(cfg, layers=cfg.decoder_layers,
                             max_positions=cfg.max_target_positions + self.extra_positions, cross_attention=True)
        self.length = LengthPredictor(cfg.model_dim, pad=self.pad, offset=not cfg.no_pred_length_offset)

    @classmethod
    def build_model(cls, cfg, task):
        check_joined_dictionary(cls.__name__, task)
        model = cls(config_defaults(cfg, MaskedSeq2SeqConfig), task.target_dictionary)
        if cfg.bert_init and not _from_checkpoint(task):
            model.initialise_from_bert([model.encoder, model.decoder])
        return model

    def max_positions(self):
        return (self.cfg.max_source_positions, self.cfg.max_target_positions)

    def encode(self, src_tokens):
        """-> memory (S, B, C) time-first, its padding mask (B, S), length log-probs (B, 256)."""
        mask = src_tokens.eq(self.pad)
        h = self.encoder(self.embed(src_tokens), mask)  # (B, S, C)
        return h.transpose(0, 1), mask, self.length.log_probs(h, mask)

    def denoise(self, z_t, t, memory, memory_mask):
        """z_t (N, L) with [M], t (N,) in [0, 1] -> logits (M, V+1) at the masked positions. Memory rows
        repeat if N = k * B."""
        reps = z_t.size(0) // memory.size(1)
        if reps > 1:  # GenMD4 scores k mask samples of each sequence in one call
            memory, memory_mask = memory.repeat(1, reps, 1), memory_mask.repeat(reps, 1)
        h, padding_mask, bias = self.time_inputs(self.embed(z_t), z_t.eq(self.pad), t)
        h = self.decoder(h, padding_mask, memory=memory, memory_padding_mask=memory_mask, layer_bias=bias)
        return self.output_logits(h, z_t)

    def forward(self, src_tokens, src_lengths, prev_output_tokens=None, tgt_tokens=None, **unused):
        memory, memory_mask, length_lprobs = self.encode(src_tokens)
        terms = self.loss_terms(lambda z_t, t: self.denoise(z_t, t, memory, memory_mask), tgt_tokens)
        length_target = self.length.targets(src_tokens, tgt_tokens.ne(self.pad).sum(-1))
        factor = self.cfg.length_loss_factor * self.diffusion.token_weight  # on the objective's own scale
        terms["length"] = {"loss": F.nll_loss(length_lprobs, length_target), "factor": factor}
        return terms

    def decoding_problem(self, src_tokens, src_lengths, *, length_beam: int, noise_beam: int):
        """K predicted lengths x M samples per sentence: [M] * (length - 1) then eos."""
        memory, memory_mask, length_lprobs = self.encode(src_tokens)
        k = min(length_beam, LengthPredictor.CLASSES)
        lengths = self.length.lengths(src_tokens, length_lprobs.topk(k, dim=-1).indices, self.cfg.max_target_positions)
        lengths = lengths.repeat_interleave(noise_beam, dim=1).reshape(-1)  # (N,)
        owner = torch.arange(src_tokens.size(0), device=src_tokens.device).repeat_interleave(k * noise_beam)
        pos = torch.arange(int(lengths.max()), device=lengths.device).unsqueeze(0)  # (1, L)
        output_mask = pos < (lengths - 1).unsqueeze(1)  # (N, L) generated tokens
        x = torch.full(output_mask.shape, self.pad, dtype=torch.long, device=lengths.device)
        x[pos.expand_as(x) == (lengths - 1).unsqueeze(1)] = self.eos  # (N, L) eos ends every candidate
        z_1 = masked_prior(x, output_mask, mask_id=self.mask_id)
        memory, memory_mask = memory.index_select(1, owner), memory_mask.index_select(0, owner)
        return self.decoding_setup(z_1, lambda z_t, t: self.denoise(z_t, t, memory, memory_mask), owner, output_mask)


@register_model("masked_diffusion_lm", dataclass=MaskedLMConfig)
class MaskedDiffusionLM(MaskedDiffusionBase):
    """A bidirectional transformer over z_t: unconditional masked-diffusion language model.

    Sequences are blocks of a packed token stream (fairseq's ``--sample-break-mode none``); the eos
    separators inside a block are text and are masked like any token, only padding is protected.
    """

    supported_targets = {"future"}

    def __init__(self, cfg, dictionary):
        d = dictionary
        super().__init__(cfg, d, protected_ids=(d.pad(), d.bos()), forbidden_ids=(d.pad(), d.bos()))
        self.stack = Stack(cfg, layers=cfg.layers, max_positions=cfg.max_target_positions + self.extra_positions,
                           cross_attention=False)
        # the longest sequence it is trained on: the task's --tokens-per-sample (set by build_model), which may be
        # shorter than its position table; sampling goes semi-autoregressive beyond it
        self.context_length = cfg.max_target_positions

    @classmethod
    def build_model(cls, cfg, task):
        cfg = config_defaults(cfg, MaskedLMConfig)
        length = getattr(task.cfg, "tokens_per_sample", None)
        if length is not None and length > cfg.max_target_positions:
            raise DifftextError(
                f"--tokens-per-sample {length} is longer than the model's --max-target-positions "
                f"{cfg.max_target_positions}; lower the former or raise the latter"
            )
        model = cls(cfg, task.source_dictionary)
        model.context_length = length or cfg.max_target_positions
        if cfg.bert_init and not _from_checkpoint(task):
            model.initialise_from_bert([model.stack])
        return model

    def max_positions(self):
        return self.cfg.max_target_positions

    def denoise(self, z_t, t):
        """z_t (B, L) with [M], t (B,) in [0, 1] -> logits (M, V+1) at the masked positions."""
        h, padding_mask, bias = self.time_inputs(self.embed(z_t), z_t.eq(self.pad), t)
        return self.output_logits(self.stack(h, padding_mask, layer_bias=bias), z_t)

    def forward(self, src_tokens, src_lengths=None, prev_output_tokens=None, tgt_tokens=None, **unused):
        return self.loss_terms(self.denoise, tgt_tokens)

    def unconditional_problem(self, num_samples: int, length: int, device) -> MaskedDecodingProblem:
        """N sequences of ``length`` tokens, all generated."""
        z_1 = torch.full((num_samples, length), self.mask_id, dtype=torch.long, device=device)
        owner = torch.arange(num_samples, device=device)
        return self.decoding_setup(z_1, self.denoise, owner, torch.ones_like(z_1, dtype=torch.bool))


# --- arch presets -------------------------------------------------------------------------------
PAPERS = {
    # MDLM: log-linear schedule, SUBS, continuous-time NELBO, no time conditioning, antithetic t.
    "mdlm": dict(objective="mdlm", masking_schedule="loglinear", time_conditioning="none"),
    # MD4: linear schedule alpha_t = 1 - t, weighted-CE ELBO, time-conditioned denoiser.
    "md4": dict(objective="md4", masking_schedule="linear", time_conditioning="layerwise"),
    # GenMD4: one learnable exponent per token, REINFORCE leave-one-out with 2 samples.
    "genmd4": dict(objective="genmd4", masking_schedule="genmd4", time_conditioning="layerwise"),
    # DiffusionBERT: T = 2048, spindle (lambda 0.3), time-agnostic, hybrid CE 1e-2.
    "diffusionbert": dict(objective="d3pm", masking_schedule="spindle", time_conditioning="none",
                          diffusion_steps=2048, spindle_lambda=0.3, hybrid_lambda=1e-2),
}
SEQ2SEQ_SIZES = {
    "base": dict(model_dim=512, ffn_dim=2048, attention_heads=8, encoder_layers=6, decoder_layers=6),
    "small": dict(model_dim=256, ffn_dim=1024, attention_heads=4, encoder_layers=3, decoder_layers=3),
    "tiny": dict(model_dim=32, ffn_dim=64, attention_heads=2, encoder_layers=1, decoder_layers=1,
                 max_source_positions=128, max_target_positions=128),
}
LM_SIZES = {  # base: BERT-base / the DiT of MDLM (12 layers, d 768, 12 heads)
    "base": dict(model_dim=768, ffn_dim=3072, attention_heads=12, layers=12, max_target_positions=512),
    "small": dict(model_dim=256, ffn_dim=1024, attention_heads=4, layers=6, max_target_positions=256),
    "tiny": dict(model_dim=32, ffn_dim=64, attention_heads=2, layers=2, max_target_positions=128),
}

# Layer norm placement and positions of the LM presets. MDLM (DiT blocks) and MD4 use pre-norm transformers with
# rotary positions; DiffusionBERT is BERT (post-norm, learned absolute positions, which --bert-init copies).
# Post-norm, the 6-layer LM never learned to use its context: on Brown its bound stayed at the unigram level
# (~6.6 nats) for 4000 updates, and the first layers' gradients were 1e-8 against the last layer's 0.2. Pre-norm
# with learned positions still sat on that plateau after 1250 updates (CE of a masked token 6.81 nats with 15% of
# the block masked, 6.81 with all of it); with rotary positions it left it within 750 (6.15 against 6.82 at 1000
# updates). bench/budget45/results/notes.md has the runs.
LM_STACK = {paper: dict(normalize_before=True, position_encoding="rotary") for paper in ("mdlm", "md4", "genmd4")}
LM_STACK["diffusionbert"] = dict(normalize_before=False, position_encoding="learned")


def _register_presets():
    for paper, options in PAPERS.items():
        for size, dims in SEQ2SEQ_SIZES.items():
            _register("masked_diffusion", f"{paper}_{size}", {**options, **dims}, paper, size)
        for size, dims in LM_SIZES.items():
            _register("masked_diffusion_lm", f"{paper}_lm_{size}", {**options, **dims, **LM_STACK[paper]}, paper, size)


def _register(model: str, name: str, defaults: dict, paper: str, size: str):
    def preset(args):
        architecture_defaults(args, dropout=0.1, activation_fn="gelu", **defaults)

    preset.__doc__ = f"{paper} objective and schedule, {size} size"
    preset.__name__ = name
    register_model_architecture(model, name)(preset)


_register_presets()
