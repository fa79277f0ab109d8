"""The models of the benchmark suite: how each trains and decodes, under one shared configuration.

Every translation model is 3+3 layers (DiffuSeq, encoder-only: 6), d 256, 4 heads, ffn 1024, shared
embeddings, trained on the same batches (``--max-tokens``, ``--seed 1``) with the same optimiser (Adam
(0.9, 0.98), lr 1e-3, inverse-sqrt with 300 warmup updates, clip 1, weight decay 0.01, dropout 0.1: the
quickstart's, which converged fastest on this data). What each paper prescribes on top comes with its arch
preset or flags below (label smoothing 0.1 for the AR transformer and CMLM, CMLM's BERT init and learned
positions, Difformer's noise factor 4 and source-embedding copy). Language models: 6 layers, d 256.
A model with a ``teacher`` (``difformer_kd``) trains on the teacher's beam-5 translations of the training set
(sequence-level knowledge distillation, as the Difformer paper trains), from the teacher's finished budget run in
the same work directory: its own budget is equal, the teacher's is spent before it.
"""
import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

OPTIMISER = ["--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--clip-norm", "1.0", "--weight-decay", "0.01",
             "--lr", "1e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "300", "--warmup-init-lr", "1e-7",
             "--dropout", "0.1"]
SIZES = {  # fairseq's own transformer flags for the baselines: the size of the *_small / *_tiny presets
    "small": dict(layers=3, dim=256, ffn=1024, heads=4, lm_layers=6),
    "tiny": dict(layers=1, dim=32, ffn=64, heads=2, lm_layers=2),
}


def transformer_dims(size: str) -> List[str]:
    s = SIZES[size]
    return [
        "--encoder-layers", str(s["layers"]), "--decoder-layers", str(s["layers"]),
        "--encoder-embed-dim", str(s["dim"]), "--decoder-embed-dim", str(s["dim"]),
        "--encoder-ffn-embed-dim", str(s["ffn"]), "--decoder-ffn-embed-dim", str(s["ffn"]),
        "--encoder-attention-heads", str(s["heads"]), "--decoder-attention-heads", str(s["heads"]),
        "--share-all-embeddings"]


def lm_dims(size: str) -> List[str]:
    s = SIZES[size]
    return ["--decoder-layers", str(s["lm_layers"]), "--decoder-embed-dim", str(s["dim"]),
            "--decoder-input-dim", str(s["dim"]), "--decoder-output-dim", str(s["dim"]),  # (their default: 512)
            "--decoder-ffn-embed-dim", str(s["ffn"]), "--decoder-attention-heads", str(s["heads"]),
            "--share-decoder-input-output-embed"]


@dataclass(frozen=True)
class DecodeConfig:
    """One decoding setting: a name, its fairseq-generate flags and the grid coordinates it stands for."""
    name: str
    flags: Tuple[str, ...]
    steps: int = 0
    length_beam: int = 1
    noise_beam: int = 1
    selection: str = "score"
    early_stop: int = 0  # steps left out at the end (Difformer's early stop): steps - early_stop network calls


@dataclass(frozen=True)
class Spec:
    name: str
    label: str
    family: str            # ar | cmlm | continuous | discrete | lm_ar | lm_discrete
    task: Tuple[str, ...]  # --task and its flags
    arch: Tuple[str, ...]  # --arch and the model's own flags (size included)
    criterion: Tuple[str, ...]
    cost_only: bool = False            # only the training-cost window (no budget run, no decoding)
    self_conditioning: bool = False
    grid: Dict[str, Sequence] = field(default_factory=dict)
    decode_flags: Tuple[str, ...] = ()
    # sequence-level knowledge distillation (the Difformer recipe): train on this model's beam-5 translations of
    # the training set, made by its finished budget run (valid, test and dictionary unchanged)
    teacher: Optional[str] = None

    @property
    def lm(self) -> bool:
        return self.family.startswith("lm_")

    @property
    def diffusion(self) -> bool:
        return self.family in ("continuous", "discrete", "lm_discrete")


def _diffusion_grid(steps, length_beams, noise_beams, selections, *, masked: bool, temperature: float):
    out = []
    for s, k, m, sel in itertools.product(steps, length_beams, noise_beams, selections):
        if sel != "score" and k * m < 2:
            continue  # MBR needs at least two candidates
        flags = ["--decoding-steps", str(s), "--length-beam", str(k), "--noise-beam", str(m),
                 "--candidate-selection", sel]
        if masked and m > 1:
            flags += ["--token-temperature", str(temperature)]  # greedy choices would give identical candidates
        out.append(DecodeConfig(f"s{s}_k{k}_m{m}_{sel}", tuple(flags), s, k, m, sel))
    return out


def decode_configs(spec: Spec, grid: Dict) -> Tuple[List[DecodeConfig], str]:
    """(the decoding grid of ``spec``, the name of its default setting: learning curve, memory, profile)."""
    if spec.family == "ar":
        return [DecodeConfig(f"beam{b}", ("--beam", str(b)), length_beam=b) for b in grid["beams"]], \
            f"beam{max(grid['beams'])}"
    if spec.family == "cmlm":
        it = grid["cmlm_iterations"]
        configs = [DecodeConfig(f"iter{it}_lb{k}", ("--iter-decode-max-iter", str(it), "--iter-decode-with-beam",
                                                    str(k), "--iter-decode-force-max-iter"), it, k)
                   for k in grid["cmlm_length_beams"]]
        return configs, configs[-1].name
    masked = spec.family == "discrete"
    length_beams = grid["length_beams"] if spec.name != "diffuseq" else [1]  # no length predictor
    configs = _diffusion_grid(grid["steps"], length_beams, grid["noise_beams"], grid["selections"],
                              masked=masked, temperature=grid["token_temperature"])
    if not masked and 20 in grid["steps"] and 7 in length_beams and 3 in grid["noise_beams"] \
            and "mbr-bleu" in grid["selections"]:
        configs.append(PAPER_CONTINUOUS)
    default = grid["default_masked" if masked else "default_continuous"]
    names = [c.name for c in configs]
    if default not in names:  # the default setting is always decoded
        s, k, m, sel = default.split("_", 3)
        configs += _diffusion_grid([int(s[1:])], [int(k[1:])], [int(m[1:])], [sel], masked=masked,
                                   temperature=grid["token_temperature"])
    return configs, default


# Difformer's published decoding (its evaluate.sh): 20 steps with early stop 5 (its generator runs steps 19 down to
# 5: 15 network calls), length beam 7 x noise beam 3, sentence-BLEU MBR; decoded with a full grid (20 steps, length
# beam 7 and noise beam 3 in it), as item 3's "paper configuration"
PAPER_CONTINUOUS = DecodeConfig("s20_e5_k7_m3_mbr-bleu", ("--decoding-steps", "20", "--decoding-early-stop", "5",
                                                          "--length-beam", "7", "--noise-beam", "3",
                                                          "--candidate-selection", "mbr-bleu"), 20, 7, 3, "mbr-bleu", 5)
FULL_GRID = {"beams": [1, 5], "cmlm_iterations": 10, "cmlm_length_beams": [3, 5], "steps": [5, 10, 20],
             "length_beams": [1, 3, 7], "noise_beams": [1, 3], "selections": ["score", "mbr-bleu"],
             "token_temperature": 0.5, "default_continuous": "s10_k1_m1_score", "default_masked": "s10_k3_m1_score"}
# smoke: untrained AR models rarely emit eos, so their outputs are capped (ar_flags: decoding and distillation)
SMOKE_GRID = {"beams": [1, 2], "ar_flags": ["--max-len-a", "0", "--max-len-b", "12"], "cmlm_iterations": 2,
              "cmlm_length_beams": [2], "steps": [2], "length_beams": [1],
              "noise_beams": [2], "selections": ["mbr-bleu"], "token_temperature": 0.5,
              "default_continuous": "s2_k1_m1_score", "default_masked": "s2_k2_m1_score"}

CONTINUOUS = ("--decoding-noise-factor", "1", "--clamping")  # the quickstart's decoding (README "Quickstart")
MASKED = ("--sampler", "confidence")                        # mask-predict, as CMLM


def specs(size: str) -> Dict[str, Spec]:
    """All models of the suite at ``size`` (small: the benchmark; tiny: the smoke mode)."""
    td, crit = ("--task", "text_diffusion"), ("--criterion", "text_diffusion_loss")
    def difformer_with(factor):  # the paper's noise factor is 4
        return ("--arch", f"difformer_{size}", "--src-embedding-copy", "--noise-factor", str(factor))

    difformer = difformer_with(4)
    out = [
        Spec("ar", "AR transformer", "ar", ("--task", "translation"),
             ("--arch", "transformer", *transformer_dims(size)),
             ("--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1")),
        Spec("cmlm", "CMLM (mask-predict)", "cmlm", ("--task", "translation_lev", "--noise", "random_mask"),
             ("--arch", "cmlm_transformer", *transformer_dims(size), "--apply-bert-init", "--encoder-learned-pos",
              "--decoder-learned-pos"), ("--criterion", "nat_loss", "--label-smoothing", "0.1")),
        Spec("difformer", "Difformer", "continuous", td, (*difformer, "--self-condition-prob", "0"), crit,
             decode_flags=CONTINUOUS),
        Spec("difformer_sc", "Difformer + self-conditioning", "continuous", td,
             (*difformer, "--self-condition-prob", "0.5"), crit, decode_flags=CONTINUOUS, self_conditioning=True),
        Spec("diffuseq", "DiffuSeq", "continuous", td, ("--arch", f"diffuseq_{size}"), crit, decode_flags=CONTINUOUS),
        Spec("difformer_kd", "Difformer, distilled data", "continuous", td, (*difformer, "--self-condition-prob", "0"),
             crit, decode_flags=CONTINUOUS, teacher="ar"),
    ]
    for factor in (8, 16):  # outside the default set: the paper's F = 4 against more noise at this budget
        out.append(Spec(f"difformer_nf{factor}", f"Difformer, noise factor {factor}", "continuous", td,
                        (*difformer_with(factor), "--self-condition-prob", "0"), crit, decode_flags=CONTINUOUS))
    out.append(Spec("difformer_kd_nf16", "Difformer, distilled data, noise factor 16", "continuous", td,
                    (*difformer_with(16), "--self-condition-prob", "0"), crit, decode_flags=CONTINUOUS, teacher="ar"))
    for name, label in (("mdlm", "MDLM"), ("md4", "MD4"), ("genmd4", "GenMD4"), ("diffusionbert", "DiffusionBERT")):
        out.append(Spec(name, label, "discrete", td, ("--arch", f"{name}_{size}"), crit, decode_flags=MASKED))
    out.append(Spec("diffusionbert_kd", "DiffusionBERT, distilled data", "discrete", td,
                    ("--arch", f"diffusionbert_{size}"), crit, decode_flags=MASKED, teacher="ar"))
    lm_task = ("--tokens-per-sample", "128", "--sample-break-mode", "none")
    out.append(Spec("transformer_lm", "AR transformer LM", "lm_ar", ("--task", "language_modeling", *lm_task),
                    ("--arch", "transformer_lm", *lm_dims(size)), ("--criterion", "cross_entropy")))
    for name, label in (("mdlm_lm", "MDLM LM"), ("md4_lm", "MD4 LM")):
        out.append(Spec(name, label, "lm_discrete", ("--task", "text_diffusion_lm", *lm_task),
                        ("--arch", f"{name.replace('_lm', '')}_lm_{size}"), crit))
    return {s.name: s for s in out}


DEFAULT_MODELS = ["ar", "cmlm", "difformer", "difformer_sc", "diffuseq", "mdlm", "md4", "diffusionbert",
                  "difformer_kd", "transformer_lm", "mdlm_lm", "md4_lm"]
SMOKE_MODELS = ["ar", "cmlm", "difformer", "diffuseq", "mdlm", "difformer_kd", "transformer_lm",
                "mdlm_lm"]  # one per code path
