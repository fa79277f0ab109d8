"""The suite's data: Multi30k De->En and the Brown corpus, SentencePiece 8k, through the project's data scripts.

Smoke mode binarizes the first lines of each file (a vocabulary of 1000) so that everything runs in seconds.
A data-bin is rebuilt only when the command that made it changes (``command.txt`` beside its manifest).
"""
import sys
from pathlib import Path

from bench.common import ROOT, BenchError, run_logged, shell
from data_scripts.common import sha256_file

SMOKE_LINES = {"train": 1500, "val": 50, "test_2016_flickr": 64, "brown.train.txt": 1500, "brown.valid.txt": 100}


def default_raw(name: str) -> Path:
    shared = ROOT.parent / "shared" / "data" / name
    return shared if shared.is_dir() else ROOT / "data" / name


def _slice(raw: Path, out: Path, files) -> Path:
    """The first SMOKE_LINES lines of each raw file (plain or .gz) into ``out``."""
    import gzip

    out.mkdir(parents=True, exist_ok=True)
    for name, n in files:
        src = raw / name
        if src.exists():
            lines = src.read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        elif Path(f"{src}.gz").exists():
            with gzip.open(f"{src}.gz", "rt", encoding="utf-8") as f:
                lines = [line for _, line in zip(range(n), f)]
        else:
            raise BenchError(f"{src} not found; pass the raw data folder (--multi30k / --brown)")
        (out / name).write_text("".join(lines), encoding="utf-8")
    return out


def _build(cmd, out: Path, log: Path, quiet: bool, inputs: str = "") -> Path:
    """Run ``cmd`` unless ``out`` was made by the same command (and ``inputs``, a note on what else it read)."""
    stamp, text = out / "command.txt", shell(cmd) + (f"\n{inputs}" if inputs else "")
    if stamp.is_file() and stamp.read_text() == text and (out / "manifest.json").is_file():
        return out
    run_logged(cmd, log, quiet=quiet)
    stamp.write_text(text)
    return out


def multi30k(raw: Path, work: Path, smoke: bool, quiet: bool = True) -> Path:
    if smoke:
        raw = _slice(raw, work / "raw" / "multi30k", [(f"{split}.{lang}", n) for split, n in SMOKE_LINES.items()
                                                      if "." not in split for lang in ("de", "en")])
    out = work / "data" / "multi30k"
    cmd = [sys.executable, ROOT / "data_scripts" / "prepare_multi30k.py", "--raw-dir", raw, "--out-dir", out,
           "--vocab-size", 1000 if smoke else 8000, "--workers", "1"]
    return _build(cmd, out, work / "logs" / "prepare_multi30k.log", quiet)


def brown(raw: Path, work: Path, smoke: bool, quiet: bool = True) -> Path:
    if smoke:
        raw = _slice(raw, work / "raw" / "brown", [(n, k) for n, k in SMOKE_LINES.items() if n.startswith("brown")])
    out = work / "data" / "brown"
    cmd = [sys.executable, ROOT / "data_scripts" / "prepare_lm.py", "--raw-dir", raw, "--pattern", "brown.{split}.txt",
           "--out-dir", out, "--vocab-size", 1000 if smoke else 8000, "--workers", "1"]
    return _build(cmd, out, work / "logs" / "prepare_brown.log", quiet)


def distilled(mt: Path, teacher: Path, name: str, work: Path, cpu: bool, quiet: bool = True, extra=()) -> Path:
    """``mt`` with its training targets replaced by the teacher checkpoint's beam-5 translations
    (``data_scripts/distill.py``; ``extra``: more of its flags); rebuilt when the teacher checkpoint changes."""
    out = work / "data" / f"{mt.name}_distilled_{name}"
    cmd = [sys.executable, ROOT / "data_scripts" / "distill.py", "--data", mt, "--teacher", teacher, "--out-dir", out,
           "--beam", 5, "--max-tokens", 8192, "--workers", 1, *extra] + (["--cpu"] if cpu else [])
    inputs = f"teacher sha256 {sha256_file(teacher)}"
    return _build(cmd, out, work / "logs" / f"distill_{name}.log", quiet, inputs=inputs)

