"""Bad input through the real CLIs, tried the way a new user would.

Each bad input ends in one line ``prog: error: <what and how to fix it>`` or in a counted report.
(Already covered elsewhere: dictionary-size mismatch, MBR with one candidate and --length-beam on DiffuSeq
in test_cli_e2e.py; sampling a seq2seq model semi-autoregressively in test_masked_cli.py; unsafe and
truncated checkpoint files in test_checkpoints.py; empty / too long pairs counted by the data scripts in
test_prepare_data.py.)
"""
import re
import shutil
import sys

import numpy as np
import pytest

from tests.fairseq.cli_helpers import ROOT, cli, generate_args, run_cli, train_args
from tests.fairseq.test_cli_e2e import hypotheses, one_line_error


def losses(proc):
    return re.findall(r"\| train_inner \|.*? loss=([0-9.]+)", proc.stdout + proc.stderr)


# --- data -------------------------------------------------------------------------------------------------
def test_prepare_refuses_misaligned_raw_files(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "val", "test_2016_flickr"):
        (raw / f"{split}.de").write_text("Ein Hund.\nZwei Hunde.\nDrei Hunde.\n")
        (raw / f"{split}.en").write_text("A dog.\nTwo dogs.\n" if split == "train" else "A.\nB.\nC.\n")
    proc = run_cli([sys.executable, ROOT / "data_scripts" / "prepare_multi30k.py", "--raw-dir", raw,
                    "--out-dir", tmp_path / "out", "--vocab-size", "50"], check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "line counts differ" in errors[0] and "'de': 3, 'en': 2" in errors[0], proc.stderr


@pytest.fixture(scope="module")
def rough(data_bin, tmp_path_factory):
    """A data-bin binarized by hand (plain fairseq-preprocess, the training dictionary) from pieces with
    empty lines, lines longer than the models' 128 positions and pieces that are not in the dictionary."""
    root = tmp_path_factory.mktemp("rough")
    tok = data_bin / "tok"
    long_line = " ".join(["▁Hund"] * 200)
    extra = {"de": ["", "", long_line, "▁Quokka ▁im ▁Schnee", "▁Ein ▁Mann ."],
             "en": ["", "▁A ▁dog .", long_line, "▁A ▁quokka ▁in ▁the ▁snow", ""]}
    for split, n in (("train", 300), ("test", 20)):
        for lang in ("de", "en"):
            lines = (tok / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()[:n] + extra[lang]
            (root / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = root / "bin"
    proc = run_cli([cli("fairseq-preprocess"), "--source-lang", "de", "--target-lang", "en", "--trainpref",
                    root / "train", "--testpref", root / "test", "--srcdict", data_bin / "dict.de.txt",
                    "--tgtdict", data_bin / "dict.en.txt", "--destdir", out, "--workers", "1"])
    for lang in ("de", "en"):  # byte-identical to the training dictionaries
        shutil.copy(data_bin / f"dict.{lang}.txt", out / f"dict.{lang}.txt")
    return out, proc.stdout + proc.stderr


def test_unknown_pieces_are_counted_at_binarization(rough):
    _, log = rough
    replaced = re.search(r"\[de\] \S+test\.de: 25 sents, \d+ tokens, ([0-9.]+)% replaced", log)
    assert replaced and float(replaced.group(1)) > 0, log[-2000:]


def test_training_counts_the_sentences_it_skips_and_trains_on_empty_lines(rough, tmp_path):
    data, _ = rough
    proc = run_cli(train_args(data, tmp_path / "ck", "difformer_tiny", "--max-epoch", "1", "--log-interval", "1"))
    log = proc.stdout + proc.stderr
    # the one 200-piece pair is left out of training and counted (fairseq's own report)
    skipped = r"\b1 samples have invalid sizes and will be skipped, max_positions=\(128, 128\)"
    assert re.search(skipped, log), log[-3000:]
    assert "end of epoch 1" in log and (tmp_path / "ck" / "checkpoint_last.pt").is_file()


def test_generate_overlong_sentences_one_line_or_skipped(rough, difformer_dir):
    data, _ = rough
    ckpt = difformer_dir / "checkpoint_last.pt"
    proc = run_cli(generate_args(data, ckpt, "--decoding-steps", "2"), check=False)
    one_line_error(proc, "1 of 25 sentences are longer than the model's maximum positions (128, 128)",
                   "--skip-invalid-size-inputs-valid-test")
    proc = run_cli(generate_args(data, ckpt, "--decoding-steps", "2", "--skip-invalid-size-inputs-valid-test"))
    hyps = hypotheses(proc.stdout)
    assert sorted(hyps) == [i for i in range(25) if i != 22], "all but the overlong sentence, empty ones included"
    assert re.search(r"^S-23\t.*<unk>", proc.stdout, re.M), "the unknown piece is shown as <unk> and decoded"


def damage(data_bin, tmp_path, how):
    bad = tmp_path / "bin"
    shutil.copytree(data_bin, bad)
    data, index = bad / "test.de-en.de.bin", bad / "test.de-en.de.idx"
    if how == "truncated-bin":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif how == "garbage-idx":
        index.write_bytes(b"\x00garbage" * 20)
    else:  # same size, ids beyond the dictionary
        ids = np.fromfile(data, dtype=np.uint16)
        ids[5] = 60000
        ids.tofile(data)
    return bad


@pytest.mark.parametrize("how, fragments", [
    ("truncated-bin", ["test.de-en.de.bin has", "bytes but its index", "truncated", "fairseq-preprocess"]),
    ("garbage-idx", ["test.de-en.de.idx is not a fairseq index file", "fairseq-preprocess"]),
    ("foreign-ids", ["test.de-en.de.bin contains token id 60000", "outside the dictionary", "fairseq-preprocess"]),
])
def test_damaged_binarized_data_is_named(data_bin, tmp_path, how, fragments):
    from fairseq.data import Dictionary

    from fairseq_plugins.errors import DifftextError
    from fairseq_plugins.reliability import check_binarized

    bad = damage(data_bin, tmp_path, how)
    check_binarized(str(data_bin / "test.de-en.de"), Dictionary.load(str(data_bin / "dict.de.txt")))  # intact
    with pytest.raises(DifftextError) as info:
        check_binarized(str(bad / "test.de-en.de"), Dictionary.load(str(bad / "dict.de.txt")))
    assert all(f in str(info.value) for f in fragments) and "\n" not in str(info.value), str(info.value)


def test_damaged_binarized_data_through_generate(data_bin, difformer_dir, tmp_path):
    proc = run_cli(generate_args(damage(data_bin, tmp_path, "truncated-bin"), difformer_dir / "checkpoint_last.pt"),
                   check=False)
    one_line_error(proc, "test.de-en.de.bin has", "truncated", "fairseq-preprocess")


# --- checkpoints ------------------------------------------------------------------------------------------
def test_missing_checkpoint_through_generate(data_bin, tmp_path):
    proc = run_cli(generate_args(data_bin, tmp_path / "none.pt"), check=False)
    one_line_error(proc, f"checkpoint {tmp_path / 'none.pt'} does not exist", "--path", "checkpoint_last.pt")


def test_truncated_checkpoint_through_generate(data_bin, difformer_dir, tmp_path):
    ckpt = tmp_path / "checkpoint_last.pt"
    data = (difformer_dir / "checkpoint_last.pt").read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])
    proc = run_cli(generate_args(data_bin, ckpt), check=False)
    one_line_error(proc, f"checkpoint {ckpt} is truncated or corrupted", "use another checkpoint")


def test_other_arch_into_the_same_save_dir(data_bin, difformer_dir, tmp_path):
    """Rerunning training with another --arch on a --save-dir that holds a Difformer checkpoint."""
    save = tmp_path / "ck"
    shutil.copytree(difformer_dir, save)
    proc = run_cli(train_args(data_bin, save, "diffuseq_tiny", "--max-update", "6"), check=False)
    one_line_error(proc, f"checkpoint {save / 'checkpoint_last.pt'} does not fit this DiffuSeqModel", "missing",
                   "unexpected", "--arch", "new --save-dir")


@pytest.mark.slow
def test_fairseq_transformer_checkpoint_with_the_diffusion_task(data_bin, tmp_path):
    save = tmp_path / "transformer"
    run_cli([cli("fairseq-train"), data_bin, "--task", "translation", "--arch", "transformer",
             "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "8", "--decoder-embed-dim",
             "8", "--encoder-ffn-embed-dim", "16", "--decoder-ffn-embed-dim", "16", "--encoder-attention-heads", "2",
             "--decoder-attention-heads", "2", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "512",
             "--max-update", "1", "--save-dir", save, "--cpu", "--num-workers", "0", "--disable-validation",
             "--no-epoch-checkpoints", "--user-dir", ROOT / "fairseq_plugins"])
    proc = run_cli(generate_args(data_bin, save / "checkpoint_last.pt"), check=False)
    one_line_error(proc, "--task text_diffusion", "fairseq TransformerModel (arch transformer)", "--task translation")


# --- flags ------------------------------------------------------------------------------------------------
def _ranged_options():
    """(config class, field name, interval) of every model option with a range."""
    from dataclasses import fields

    from fairseq_plugins.models.difformer import DifformerConfig
    from fairseq_plugins.models.diffuseq import DiffuSeqConfig
    from fairseq_plugins.models.masked_diffusion import MaskedLMConfig, MaskedSeq2SeqConfig

    return [(config, f.name, f.metadata["range"]) for config in (DifformerConfig, DiffuSeqConfig, MaskedSeq2SeqConfig,
                                                                 MaskedLMConfig) for f in fields(config)
            if "range" in f.metadata]


def test_every_ranged_model_option_is_refused_just_outside_its_range():
    """Each option with a range: its default passes, and a value past either end (or on an open end) is a
    one-line error naming the flag, before the model is built."""
    from argparse import Namespace
    from dataclasses import MISSING, fields

    from fairseq_plugins.errors import DifftextError
    from fairseq_plugins.models.layers import config_defaults

    options = _ranged_options()
    names = {name for _, name, _ in options}
    assert {"noise_factor", "self_condition_prob", "label_smoothing", "dropout", "diffusion_steps", "time_eps",
            "spindle_lambda", "hybrid_lambda", "length_loss_factor", "layers", "model_dim"} <= names, names
    for config, name, interval in options:
        defaults = {f.name: f.default for f in fields(config) if f.default is not MISSING}
        config_defaults(Namespace(**defaults), config)  # the defaults pass
        low, high = (float(x) for x in interval[1:-1].split(","))
        bad = [low - 1] + ([low] if interval[0] == "(" else []) + ([high] if interval[-1] == ")" else [high + 1])
        for value in (v for v in bad if abs(v) != float("inf")):
            with pytest.raises(DifftextError) as info:
                config_defaults(Namespace(**dict(defaults, **{name: value})), config)
            flag = "--" + name.replace("_", "-")
            assert str(info.value).startswith(f"{flag} must be in {interval}, got {value}"), str(info.value)


@pytest.mark.parametrize("arch, flags, fragments", [
    ("difformer_tiny", ["--noise-factor", "0.5"], ["--noise-factor must be in [1, inf), got 0.5"]),
    ("difformer_tiny", ["--self-condition-prob", "1.5"], ["--self-condition-prob must be in [0, 1], got 1.5"]),
    ("mdlm_tiny", ["--time-eps", "0"], ["--time-eps must be in (0, 1), got 0.0"]),
    ("diffuseq_tiny", ["--model-dim", "30", "--attention-heads", "4"],
     ["--attention-heads 4 does not divide --model-dim 30"]),
])
def test_model_option_out_of_range_through_train(data_bin, tmp_path, arch, flags, fragments):
    """Before: a traceback from the core (noise factor), an assertion in fairseq (heads) or silently accepted
    (a self-conditioning probability above 1)."""
    proc = run_cli(train_args(data_bin, tmp_path / "ck", arch, "--max-update", "1", *flags), check=False)
    one_line_error(proc, *fragments)


def test_decoding_noise_factor_below_one_is_one_line(data_bin, difformer_dir):
    proc = run_cli(generate_args(data_bin, difformer_dir / "checkpoint_last.pt", "--decoding-noise-factor", "0.5"),
                   check=False)
    one_line_error(proc, "--decoding-noise-factor must be in [1, inf), got 0.5")


@pytest.mark.parametrize("script, interval", [("examples/quickstart.py", "(0, inf)"),
                                              ("examples/brown_lm.py", "(0, inf)"), ("bench/run.py", "[0.01, inf)")])
def test_a_budget_of_zero_is_refused_before_training(script, interval, tmp_path):
    """fairseq-train --stop-time-hours 0 (or below) means no limit: a zero budget used to train without end."""
    proc = run_cli([sys.executable, ROOT / script, "--budget", "0", "--work-dir", tmp_path], check=False, timeout=120)
    assert proc.returncode == 2 and not list(tmp_path.iterdir()), proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].endswith(f"error: argument --budget: must be in {interval}, got 0.0")


@pytest.mark.parametrize("flags, error", [
    (["--model", "mdlm", "--noise-factor", "8"],
     "error: --noise-factor applies to the continuous model (difformer), not to mdlm; drop it"),
    (["--noise-factor", "0.5"], "error: argument --noise-factor: must be in [1, inf), got 0.5"),
])
def test_quickstart_refuses_a_noise_factor_it_cannot_use(flags, error, tmp_path):
    proc = run_cli([sys.executable, ROOT / "examples" / "quickstart.py", *flags, "--work-dir", tmp_path],
                   check=False, timeout=120)
    assert proc.returncode == 2 and not list(tmp_path.iterdir()), proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].endswith(error)


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_bf16_without_torch_xla_is_not_a_tpu_run(data_bin, tmp_path, device):
    """fairseq 0.12 turns --bf16 into --tpu; without torch_xla difftext undoes that (CPU and GPU)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from fairseq_plugins import compat

    args = [str(a) for a in train_args(data_bin, tmp_path / "ck", "difformer_tiny", "--bf16")[1:] if a != "--cpu"]
    parsed = options.parse_args_and_arch(options.get_training_parser(), args + (["--cpu"] if device == "cpu" else []))
    cfg = convert_namespace_to_omegaconf(parsed)
    assert cfg.common.tpu and cfg.distributed_training.tpu and cfg.optimizer.tpu, "fairseq: --bf16 implies --tpu"
    compat._bf16_without_tpu(cfg)
    assert cfg.common.bf16 and not (cfg.common.tpu or cfg.distributed_training.tpu or cfg.optimizer.tpu)


@pytest.fixture(scope="module")
def bf16_mdlm(data_bin, tmp_path_factory):
    save = tmp_path_factory.mktemp("bf16_mdlm")
    proc = run_cli(train_args(data_bin, save, "mdlm_tiny", "--bf16", "--max-update", "3", "--log-interval", "1"))
    return save / "checkpoint_last.pt", proc


def test_bf16_on_cpu_trains(bf16_mdlm):
    """fairseq 0.12 turns --bf16 into --tpu; with --cpu difftext trains bf16 weights on the CPU."""
    values = [float(x) for x in losses(bf16_mdlm[1])]
    assert len(values) == 3 and all(np.isfinite(values))


@pytest.mark.parametrize("family", ["continuous", "masked"])
def test_bf16_generation_decodes_in_bf16(data_bin, difformer_dir, bf16_mdlm, family):
    """fairseq-generate casts models to fp16 for --fp16 but leaves them in fp32 for --bf16; difftext's models
    cast themselves (prepare_for_inference_): every sentence is decoded and the scores carry bf16 rounding."""
    ckpt = difformer_dir / "checkpoint_last.pt" if family == "continuous" else bf16_mdlm[0]
    runs = [hypotheses(run_cli(generate_args(data_bin, ckpt, "--decoding-steps", "3", *flags)).stdout)
            for flags in ([], ["--bf16"])]
    fp32, bf16 = ({i: float(h.split("\t")[0]) for i, h in r.items()} for r in runs)
    assert sorted(bf16) == sorted(fp32) == list(range(60))
    assert all(np.isfinite(list(bf16.values())))
    assert sum(bf16[i] != fp32[i] for i in fp32) > 30  # fp32 decoding would repeat the scores exactly


def test_bf16_for_inference_only_for_bf16_without_fp16():
    from omegaconf import OmegaConf
    from torch import nn

    from fairseq_plugins.models.layers import bf16_for_inference

    for bf16, fp16, dtype in ((True, False, "bfloat16"), (False, False, "float32"), (True, True, "float32")):
        layer = nn.Linear(2, 2)
        bf16_for_inference(layer, OmegaConf.create({"common": {"bf16": bf16, "fp16": fp16}}))
        assert str(layer.weight.dtype) == f"torch.{dtype}"


@pytest.mark.slow
def test_error_in_a_spawned_data_parallel_process_is_one_line(tmp_path):
    proc = run_cli(train_args(tmp_path / "nowhere", tmp_path / "ck", "difformer_tiny", "--distributed-world-size",
                              "2"), check=False)
    one_line_error(proc, "nowhere", "does not exist")
