"""The data-manifest check through the real fairseq-train / fairseq-generate CLIs: a checkpoint remembers the
dictionaries it was trained on, and a data-bin must match its manifest.json."""
import hashlib
import json
import shutil

import pytest

from tests.fairseq.cli_helpers import generate_args, make_data_bin, run_cli, train_args
from tests.fairseq.test_cli_e2e import one_line_error

ARCH = "difformer_tiny"


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def checkpoint(data_bin, tmp_path_factory):
    save = tmp_path_factory.mktemp("manifest_ckpt")
    run_cli(train_args(data_bin, save, ARCH, "--max-update", "3"))
    return save / "checkpoint_last.pt"


def swap_two_symbols(data_dir, langs=("de", "en")):
    """Same dictionary size, other content: the case a size check cannot catch."""
    for lang in langs:
        path = data_dir / f"dict.{lang}.txt"
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        lines[10], lines[11] = lines[11], lines[10]
        path.write_text("".join(lines), encoding="utf-8")


def test_checkpoint_remembers_its_dictionaries(data_bin, checkpoint):
    import fairseq_plugins  # noqa: F401  (installs the safe checkpoint loader)
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))
    fingerprint = state["task_state"]["data_manifest"]
    manifest = json.loads((data_bin / "manifest.json").read_text(encoding="utf-8"))
    for role, lang in (("source", "de"), ("target", "en")):
        entry = fingerprint["dictionaries"][role]
        assert entry == {"file": f"dict.{lang}.txt", "size": manifest["dictionary"]["size"],
                         "sha256": sha(data_bin / f"dict.{lang}.txt")}
        assert entry["sha256"] == manifest["dictionary"]["sha256"]
    assert fingerprint["sentencepiece_sha256"] == manifest["sentencepiece"]["sha256"] == sha(data_bin / "spm.model")
    assert state["model"]["embed.weight"].shape[0] == manifest["dictionary"]["size"]


def test_generate_on_other_data_bin_names_both_dictionaries(data_bin, checkpoint, tmp_path):
    other = make_data_bin(tmp_path, vocab_size=400, train_lines=600)
    proc = run_cli(generate_args(other, checkpoint), check=False)
    size = json.loads((data_bin / "manifest.json").read_text())["dictionary"]["size"]
    other_size = json.loads((other / "manifest.json").read_text())["dictionary"]["size"]
    one_line_error(proc, "checkpoint was trained on data with a source dictionary of "
                   f"{size} types (sha256 {sha(data_bin / 'dict.de.txt')[:12]}, dict.de.txt)",
                   f"but {other} has {other_size} (sha256 {sha(other / 'dict.de.txt')[:12]}",
                   "pass the data-bin the model was trained on")


def test_same_size_other_dictionary_is_refused(data_bin, checkpoint, tmp_path):
    other = tmp_path / "bin"
    shutil.copytree(data_bin, other)
    swap_two_symbols(other)
    (other / "manifest.json").unlink()  # a data-bin from elsewhere: no manifest, only the checkpoint's memory
    lines = [len((d / "dict.de.txt").read_text().splitlines()) for d in (other, data_bin)]
    assert lines[0] == lines[1]
    proc = run_cli(generate_args(other, checkpoint), check=False)
    one_line_error(proc, f"sha256 {sha(data_bin / 'dict.de.txt')[:12]}", f"sha256 {sha(other / 'dict.de.txt')[:12]}",
                   "pass the data-bin the model was trained on")


def test_dictionary_edited_after_the_data_script_is_refused_by_training(data_bin, tmp_path):
    other = tmp_path / "bin"
    shutil.copytree(data_bin, other)
    swap_two_symbols(other, langs=("en",))
    proc = run_cli(train_args(other, tmp_path / "ck", ARCH, "--max-update", "1"), check=False)
    one_line_error(proc, f"{other / 'dict.en.txt'} (sha256 {sha(other / 'dict.en.txt')[:12]}",
                   f"does not match {other / 'manifest.json'}", "re-run the script")


def test_generate_on_the_training_data_bin_still_works(data_bin, checkpoint):
    proc = run_cli(generate_args(data_bin, checkpoint, "--decoding-steps", "2"))
    assert proc.stdout.count("\nH-") + proc.stdout.startswith("H-") == 60
