"""The shipped Multi30k corpus and ``data_scripts/prepare_multi30k.py``, run through its real CLI."""

import gzip
import hashlib
import importlib.util
import json
import re
import struct
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "data" / "multi30k"
SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "multi30k"
SCRIPT = REPO / "data_scripts" / "prepare_multi30k.py"
STEMS = {"train": 29000, "val": 1014, "test_2016_flickr": 1000}
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
LANGS = ("de", "en")
TRAIN_LIMIT = 2000


def load_common():
    spec = importlib.util.spec_from_file_location("data_scripts_common", REPO / "data_scripts" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_table() -> dict:
    """``{file name: (lines, sha256)}`` as stated in data/multi30k/README.md."""
    rows = re.findall(r"^\| `([\w.]+\.gz)` \| \w+ \| (\d+) \| `([0-9a-f]{64})` \|$",
                      (SHIPPED / "README.md").read_text(encoding="utf-8"), flags=re.M)
    return {name: (int(lines), sha) for name, lines, sha in rows}


def run_prepare(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)


def idx_length(path: Path) -> int:
    """Number of sentences in a fairseq mmap ``.idx`` file (header: magic, version, dtype, length)."""
    with open(path, "rb") as f:
        assert f.read(9) == b"MMIDIDX\x00\x00"
        f.read(8 + 1)
        return struct.unpack("<Q", f.read(8))[0]


def spm_normalized(line: str) -> str:
    """The raw line as SentencePiece's nmt_nfkc rule leaves it (NFKC, whitespace runs collapsed)."""
    return " ".join(unicodedata.normalize("NFKC", line).split())


# ----------------------------------------------------------------------------------------------
# (a) the shipped corpus


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("lang", LANGS)
def test_shipped_file_has_stated_lines_and_checksum(stem, lang):
    name = f"{stem}.{lang}.gz"
    data = gzip.decompress((SHIPPED / name).read_bytes())
    assert readme_table()[name] == (STEMS[stem], hashlib.sha256(data).hexdigest())
    assert data.count(b"\n") == STEMS[stem] and data.endswith(b"\n")


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("lang", LANGS)
def test_shipped_file_matches_shared_copy(stem, lang):
    reference = SHARED / f"{stem}.{lang}"
    if not reference.is_file():
        pytest.skip(f"reference copy {reference} absent (only on the development machines)")
    assert gzip.decompress((SHIPPED / f"{stem}.{lang}.gz").read_bytes()) == reference.read_bytes()


# ----------------------------------------------------------------------------------------------
# helpers of data_scripts/common.py


def test_read_lines_plain_gz_and_crlf(tmp_path):
    common = load_common()
    (tmp_path / "a.txt").write_bytes("Zwei Männer\r\n\nein\u2028Hund\n".encode())
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress((tmp_path / "a.txt").read_bytes()))
    expected = ["Zwei Männer", "", "ein\u2028Hund"]
    assert common.read_lines(tmp_path / "a.txt") == expected
    assert common.read_lines(tmp_path / "a.txt.gz") == expected


def test_clean_pairs_counts_every_reason(capsys):
    common = load_common()
    src = [["a"], [], ["a"] * 5, ["a"] * 4, ["a"] * 2]
    tgt = [["b"], ["b"], ["b"], ["b"] * 4, ["b"] * 3]
    kept, counts = common.clean_pairs(src, tgt, max_len=4, max_ratio=2.0)
    assert kept == [(["a"], ["b"]), (["a"] * 4, ["b"] * 4), (["a"] * 2, ["b"] * 3)]
    assert counts == {"empty": 1, "too_long": 1, "ratio": 0}
    _, counts = common.clean_pairs([["a"] * 3], [["b"]], max_len=4, max_ratio=2.0)
    assert counts == {"empty": 0, "too_long": 0, "ratio": 1}
    assert "dropped empty=1 too_long=1 ratio=0" in capsys.readouterr().out


def test_run_prints_command_and_names_it_on_failure(capsys):
    common = load_common()
    common.run([sys.executable, "-c", "pass", "a b"])
    assert f"+ {sys.executable} -c pass 'a b'" in capsys.readouterr().out
    with pytest.raises(common.CommandError, match="exit status 3: .* -c 'raise SystemExit\\(3\\)'"):
        common.run([sys.executable, "-c", "raise SystemExit(3)"])


# ----------------------------------------------------------------------------------------------
# (b) the prepare script on a slice of the shipped corpus


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    pytest.importorskip("sentencepiece")
    if importlib.util.find_spec("fairseq_cli") is None:
        pytest.skip("fairseq is not installed")
    out = tmp_path_factory.mktemp("multi30k") / "bin"
    proc = run_prepare("--raw-dir", str(SHIPPED), "--out-dir", str(out),
                       "--train-limit", str(TRAIN_LIMIT), "--vocab-size", "600", "--workers", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return out, proc, manifest


def test_dictionary_is_joined(prepared):
    out, _, manifest = prepared
    de, en = (out / "dict.de.txt").read_bytes(), (out / "dict.en.txt").read_bytes()
    assert de == en
    lines = de.count(b"\n")
    assert manifest["dictionary"]["lines"] == lines
    assert manifest["dictionary"]["size"] == lines + 4
    assert manifest["dictionary"]["size"] % 8 == 0  # fairseq pads with madeupwords
    assert lines <= 600 + 8


def test_manifest_counts_match_files(prepared):
    out, _, manifest = prepared
    splits = manifest["splits"]
    assert splits["train"]["lines_raw"] == 29000
    assert splits["train"]["lines_in"] == TRAIN_LIMIT
    assert splits["train"]["lines_out"] + sum(splits["train"]["dropped"].values()) == TRAIN_LIMIT
    assert splits["valid"]["lines_in"] == splits["valid"]["lines_out"] == 1014
    assert splits["test"]["lines_in"] == splits["test"]["lines_out"] == 1000
    for split in SPLITS:
        for lang in LANGS:
            tok = (out / "tok" / f"{split}.{lang}").read_bytes().count(b"\n")
            assert tok == splits[split]["lines_out"]
            assert idx_length(out / f"{split}.de-en.{lang}.idx") == tok
            assert (out / f"{split}.de-en.{lang}.bin").stat().st_size > 0
    assert manifest["sentencepiece"]["sha256"] == hashlib.sha256((out / "spm.model").read_bytes()).hexdigest()
    assert manifest["sentencepiece"]["vocab_size"] == 600


def test_commands_are_printed_and_recorded(prepared):
    _, proc, manifest = prepared
    spm_cmd, preprocess_cmd = manifest["commands"]
    assert spm_cmd.startswith("cd ") and " && spm_train --input=raw/train.de,raw/train.en " in spm_cmd
    assert "--vocab_size=600" in spm_cmd and "--bos_id=-1 --eos_id=-1" in spm_cmd
    assert preprocess_cmd.startswith("fairseq-preprocess --source-lang de --target-lang en")
    assert "--joined-dictionary" in preprocess_cmd
    assert f"+ {spm_cmd}" in proc.stdout and f"+ {preprocess_cmd}" in proc.stdout
    assert "clean train: kept" in proc.stdout


def test_pieces_decode_back_to_raw(prepared):
    import sentencepiece as spm

    out, _, _ = prepared
    common = load_common()
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    for split, stem in SPLITS.items():
        for lang in LANGS:
            raw = common.read_lines(SHIPPED / f"{stem}.{lang}.gz")
            tok = common.read_lines(out / "tok" / f"{split}.{lang}")
            pairs = list(zip(raw, tok))[:300]  # train: the first lines all pass cleaning
            for raw_line, tok_line in pairs:
                assert sp.decode(tok_line.split()) == spm_normalized(raw_line)
                assert common.decode_pieces(tok_line) == spm_normalized(raw_line)
    assert common.read_lines(out / "raw" / "valid.de") == common.read_lines(SHIPPED / "val.de.gz")


def test_fairseq_reads_back_the_pieces(prepared):
    from fairseq.data import Dictionary, data_utils

    out, _, manifest = prepared
    common = load_common()
    dictionary = Dictionary.load(str(out / "dict.en.txt"))
    assert len(dictionary) == manifest["dictionary"]["size"]
    dataset = data_utils.load_indexed_dataset(str(out / "valid.de-en.en"), dictionary)
    tok = common.read_lines(out / "tok" / "valid.en")
    assert len(dataset) == len(tok)
    for i in range(0, len(tok), 50):
        assert dictionary.string(dataset[i]) == tok[i]
        assert dataset[i][-1] == dictionary.eos()


# ----------------------------------------------------------------------------------------------
# (c) errors a user can cause


def test_missing_raw_dir_is_one_line_error(tmp_path):
    missing = tmp_path / "no_such_dir"
    proc = run_prepare("--raw-dir", str(missing), "--out-dir", str(tmp_path / "out"))
    assert proc.returncode != 0
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1 and str(missing) in message


def test_missing_file_names_it(tmp_path):
    (tmp_path / "raw").mkdir()
    proc = run_prepare("--raw-dir", str(tmp_path / "raw"), "--out-dir", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "train.de" in proc.stderr


def test_vocab_too_large_says_the_limit(tmp_path):
    pytest.importorskip("sentencepiece")
    proc = run_prepare("--raw-dir", str(SHIPPED), "--out-dir", str(tmp_path / "out"),
                       "--train-limit", "50", "--vocab-size", "8000")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "--vocab-size 8000 is too large" in last and "at most" in last
