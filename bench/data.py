"""The suite's data: Multi30k De->En and the Brown corpus, SentencePiece 8k, through the project's data scripts.

Smoke mode binarizes the first lines of each file (a vocabulary of 1000) so that everything runs in seconds.
A data-bin is rebuilt only when the command that made it changes (``command.txt`` beside its manifest).
"""
import sys
from pathlib import Path

from bench.common import ROOT, BenchError, run_logged, shell

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


def _build(cmd, out: Path, log: Path, quiet: bool) -> Path:
    stamp = out / "command.txt"
    if stamp.is_file() and stamp.read_text() == shell(cmd) and (out / "manifest.json").is_file():
        return out
    run_logged(cmd, log, quiet=quiet)
    stamp.write_text(shell(cmd))
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
