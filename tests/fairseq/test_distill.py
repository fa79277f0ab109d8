"""Knowledge distillation end to end: a tiny fairseq transformer teacher, data_scripts/distill.py, and a
text_diffusion model trained on the distilled data-bin, all through the real CLIs on a small Multi30k slice."""
import hashlib
import json
import re
import sys

import pytest

from tests.fairseq.cli_helpers import ROOT, SLICE, cli, generate_args, run_cli, train_args

N = SLICE["train"]  # training sentences
MAX_SOURCE_POSITIONS = 40  # the teacher skips longer sources: the failure path, counted and reported
TEACHER = ["--task", "translation", "--arch", "transformer", "--share-all-embeddings", "--encoder-layers", "1",
           "--decoder-layers", "1", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
           "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
           "--decoder-attention-heads", "2", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2048",
           "--max-update", "10", "--no-epoch-checkpoints", "--disable-validation", "--cpu", "--num-workers", "0",
           "--seed", "1"]


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pieces(data, split, lang):
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(data / f"dict.{lang}.txt"))
    dataset = data_utils.load_indexed_dataset(str(data / f"{split}.de-en.{lang}"), dictionary)
    return [dictionary.string(dataset[i]) for i in range(len(dataset))], dataset.sizes


@pytest.fixture(scope="module")
def distilled(data_bin, tmp_path_factory):
    tmp, data = tmp_path_factory.mktemp("kd"), data_bin  # the session's Multi30k slice (conftest.py)
    run_cli([cli("fairseq-train"), data, *TEACHER, "--save-dir", tmp / "teacher"])
    teacher = tmp / "teacher" / "checkpoint_last.pt"
    out = tmp / "kd"
    proc = run_cli([sys.executable, ROOT / "data_scripts" / "distill.py", "--data", data, "--teacher", teacher,
                    "--out-dir", out, "--cpu", "--max-len-a", "0", "--max-len-b", "8", "--workers", "1",
                    "--generate-args", f"--max-source-positions {MAX_SOURCE_POSITIONS}"])
    return data, teacher, out, proc, json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def test_same_sentences_same_dictionary(distilled):
    data, _, out, _, manifest = distilled
    source, sizes = pieces(data, "train", "de")
    assert len(source) == N == manifest["splits"]["train"]["lines_in"] == manifest["splits"]["train"]["lines_out"]
    assert pieces(out, "train", "de")[0] == source  # the sources are the original ones, in order
    for lang in ("de", "en"):
        assert sha(out / f"dict.{lang}.txt") == sha(data / f"dict.{lang}.txt")
    original = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["dictionary"]["sha256"] == original["dictionary"]["sha256"]
    assert manifest["dictionary"]["size"] == original["dictionary"]["size"]
    assert manifest["sentencepiece"] == original["sentencepiece"]
    for split in ("valid", "test"):  # copied unchanged
        for suffix in ("de.bin", "de.idx", "en.bin", "en.idx"):
            assert (out / f"{split}.de-en.{suffix}").read_bytes() == (data / f"{split}.de-en.{suffix}").read_bytes()


def test_targets_are_the_teacher_beam_output_in_order(distilled):
    data, teacher, out, proc, manifest = distilled
    kd = manifest["distillation"]
    assert (kd["beam"], kd["teacher_sha256"]) == (5, sha(teacher))
    hyps = {int(m.group(1)): m.group(2) for m in
            re.finditer(r"^H-(\d+)\t\S+\t(.*)$", (out / "teacher" / "generate-train.txt").read_text(), re.M)}
    reference, sizes = pieces(data, "train", "en")
    _, source_sizes = pieces(data, "train", "de")
    skipped = [i for i, n in enumerate(source_sizes) if n > MAX_SOURCE_POSITIONS]
    assert 0 < len(skipped) < N
    assert kd["failed"] == len(skipped) == manifest["splits"]["train"]["teacher_failed"]
    assert kd["failed_ids"] == skipped[:1000] and sorted(hyps) == [i for i in range(N) if i not in skipped]
    targets = pieces(out, "train", "en")[0]
    for i in range(N):
        assert targets[i] == (reference[i] if i in skipped else hyps[i])
    assert sum(targets[i] != reference[i] for i in hyps) > len(hyps) // 2  # the teacher's output, not the reference
    assert f"{len(skipped)} failed (kept their reference)" in proc.stdout
    assert "--gen-subset train --beam 5" in manifest["commands"][0]
    assert "--srcdict" in manifest["commands"][1] and "--tgtdict" in manifest["commands"][1]


def test_diffusion_model_trains_on_distilled_data_and_decodes_the_original(distilled, tmp_path):
    data, _, out, _, _ = distilled
    proc = run_cli(train_args(out, tmp_path, "difformer_tiny", "--max-update", "3"))
    assert re.search(r"num_updates 3\b", proc.stdout + proc.stderr)
    generated = run_cli(generate_args(data, tmp_path / "checkpoint_last.pt", "--decoding-steps", "2"))
    assert len(re.findall(r"^H-\d+\t", generated.stdout, re.M)) == 60  # same dictionary: the check lets it in


def test_missing_teacher_is_one_line(tmp_path):
    proc = run_cli([sys.executable, ROOT / "data_scripts" / "distill.py", "--data", tmp_path, "--teacher",
                    tmp_path / "none.pt", "--out-dir", tmp_path / "kd", "--src", "de", "--tgt", "en"], check=False)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        f"error: teacher checkpoint not found: {tmp_path / 'none.pt'}; pass --teacher with a .pt file"]


def test_a_beam_of_zero_is_refused_before_the_teacher_loads(tmp_path):
    proc = run_cli([sys.executable, ROOT / "data_scripts" / "distill.py", "--data", tmp_path, "--teacher",
                    tmp_path / "none.pt", "--out-dir", tmp_path / "kd", "--beam", "0"], check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(
        "error: argument --beam: must be in [1, inf), got 0")
    assert not (tmp_path / "kd").exists()
