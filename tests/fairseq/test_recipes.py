"""The dataset recipes: valid bash, and every command they would run is accepted by its own parser.

Each recipe is run with DRY_RUN=1 (it prints its commands, shell-quoted, and runs nothing) for every model
family; each fairseq-train / fairseq-generate line is parsed by fairseq's own options parser with
--user-dir fairseq_plugins and converted to fairseq's config (what fairseq-train does before building
anything), every --arch must be registered, and the project's own tools parse their lines.
"""
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.fairseq.cli_helpers import ROOT

RECIPES = sorted((ROOT / "examples" / "recipes").glob("*.sh"))
SCRIPTS = [r for r in RECIPES if r.name != "common.sh"]
MODELS = ["difformer", "diffuseq", "mdlm", "md4", "genmd4", "diffusionbert"]
DISCRETE = {"mdlm", "md4", "genmd4", "diffusionbert"}
ALL_STAGES = "prepare teacher distill train average generate score".split()


def test_every_dataset_has_a_recipe():
    names = {r.stem for r in SCRIPTS}
    assert names == {"iwslt14_de_en", "wmt14_en_de", "wmt16_en_ro", "gigaword", "qqp"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_bash_syntax(recipe):
    proc = subprocess.run(["bash", "-n", str(recipe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def dry_run(recipe: Path, model: str, *stages: str, **env) -> list:
    """The commands a recipe would run, as argument lists."""
    import os

    proc = subprocess.run(["bash", str(recipe), model, *stages], capture_output=True, text=True,
                          env=dict(os.environ, DRY_RUN="1", **env))
    assert proc.returncode == 0, proc.stderr
    commands = []
    for line in proc.stdout.splitlines():
        assert line.startswith("+ "), f"unexpected output: {line}"
        args = shlex.split(line[2:])
        commands.append(args[: args.index(">")] if ">" in args else args)
    return commands


def _registered_arch(arch: str, model: str):
    from fairseq.models import ARCH_MODEL_REGISTRY

    import fairseq_plugins  # noqa: F401  (registers the project's archs)

    if arch not in ARCH_MODEL_REGISTRY:
        if model in DISCRETE:
            pytest.skip(f"--arch {arch}: the masked-diffusion models are not registered in this tree yet")
        pytest.fail(f"--arch {arch} is not a registered architecture")


_PARSED = {}


def _parse_fairseq(args: list):
    """fairseq's namespace of a command line (cached: recipes share their teacher and decoding lines)."""
    if tuple(args) not in _PARSED:
        _PARSED[tuple(args)] = _parse_fairseq_uncached(args)
    return _PARSED[tuple(args)]


def _parse_fairseq_uncached(args: list):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    tool, rest = Path(args[0]).name, args[1:]
    parser = options.get_training_parser() if tool == "fairseq-train" else options.get_generation_parser()
    try:
        namespace = options.parse_args_and_arch(parser, input_args=rest)
    except SystemExit:
        pytest.fail(f"fairseq refuses the recipe's command line: {shlex.join(args)}")
    convert_namespace_to_omegaconf(namespace)
    return namespace


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("recipe", SCRIPTS, ids=lambda p: p.stem)
def test_fairseq_accepts_every_command(recipe, model):
    from data_scripts import distill
    from fairseq_plugins import average_checkpoints, score

    commands = dry_run(recipe, model, *ALL_STAGES)
    tools = [Path(c[0]).name for c in commands]
    assert tools.count("fairseq-train") == 2 and tools.count("fairseq-generate") == 1
    for args in commands:
        tool = Path(args[0]).name
        if tool == "fairseq-train" and "text_diffusion" in args:
            _registered_arch(args[args.index("--arch") + 1], model)
        if tool in ("fairseq-train", "fairseq-generate"):
            _parse_fairseq(args)
        elif args[1:3] == ["-m", "fairseq_plugins.average_checkpoints"]:
            average_checkpoints.build_parser().parse_args(args[3:])
        elif args[1:3] == ["-m", "fairseq_plugins.score"]:
            score.build_parser().parse_args(args[3:])
        elif args[1].endswith("distill.py"):
            distill.parse_args(args[2:])
        else:
            assert Path(args[1]).parent == ROOT / "data_scripts" and Path(args[1]).is_file(), args


def test_published_difformer_iwslt14_settings():
    """The flags that make the published IWSLT14 Difformer, as fairseq will read them."""
    train = [c for c in dry_run(RECIPES[0].parent / "iwslt14_de_en.sh", "difformer", "train")][0]
    ns = _parse_fairseq(train)
    assert ns.arch == "difformer_iwslt_de_en" and ns.data.endswith("data-bin-kd"), "distilled data"
    assert (ns.lr, ns.dropout, ns.max_tokens, ns.max_update, ns.warmup_updates) == ([5e-4], 0.3, 8000, 300000, 10000)
    assert ns.noise_factor == 4 and ns.diffusion_steps == 2000 and ns.fp16 and ns.keep_best_checkpoints == 5
    assert ns.apply_bert_init  # its train.sh: --apply-bert-init
    generate = dry_run(RECIPES[0].parent / "iwslt14_de_en.sh", "difformer", "generate")[0]
    gen = _parse_fairseq(generate)
    assert (gen.decoding_steps, gen.decoding_early_stop, gen.length_beam, gen.noise_beam) == (20, 5, 7, 3)
    assert gen.decoding_method == "ddpm" and gen.decoding_noise_factor == 1  # its generator samples the posterior


def test_published_diffuseq_qqp_decoding():
    """DiffuSeq's sample_seq2seq.py with --step 2000: 2000 ancestral steps, every z0_hat rounded (clamp_step 0),
    MBR over 10 samples."""
    gen = _parse_fairseq(dry_run(RECIPES[0].parent / "qqp.sh", "diffuseq", "generate")[0])
    assert (gen.decoding_steps, gen.decoding_method, gen.clamping, gen.noise_beam) == (2000, "ddpm", True, 10)
    assert gen.candidate_selection == "mbr-bleu" and gen.decoding_early_stop == 0


@pytest.mark.parametrize("gpus, precision, expect", [
    ("4", "", ["--max-tokens", "16000", "--update-freq", "1", "--distributed-world-size", "4", "--ddp-backend",
               "no_c10d", "--fp16"]),
    ("2", "bf16", ["--max-tokens", "16000", "--update-freq", "2", "--distributed-world-size", "2", "--ddp-backend",
                   "no_c10d", "--bf16"]),
    ("0", "", ["--max-tokens", "16000", "--update-freq", "4", "--cpu"]),
])
def test_batch_is_kept_across_gpu_counts(gpus, precision, expect):
    env = {"GPUS": gpus, **({"PRECISION": precision} if precision else {})}
    train = dry_run(RECIPES[0].parent / "wmt14_en_de.sh", "difformer", "train", **env)[0]
    flags = train[train.index("--max-tokens"):train.index("--save-dir")]
    assert flags == expect
