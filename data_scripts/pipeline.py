"""The pipeline every ``prepare_<dataset>.py`` runs: raw text -> SentencePiece -> clean -> binarize -> manifest.

A dataset script defines a :class:`Dataset` (its sides: two languages, or one for language modelling; how to read
its official raw files into line-aligned splits; where to download them) and calls :func:`main`. Into
``--out-dir`` it writes::

    raw/{split}.{side}          the text as read (valid/test: the references for sacreBLEU / ROUGE)
    spm.model spm.vocab         the joint SentencePiece model (trained here, or the --spm-model given)
    tok/{split}.{side}          space-separated pieces (train: after cleaning; valid/test: whole)
    dict.{side}.txt *.bin *.idx fairseq-preprocess output (--joined-dictionary; --only-source and dict.txt for LM)
    manifest.json               line counts before/after filtering, dictionary size and sha256, SentencePiece sha256,
                                the commands run (``fairseq_plugins.manifest`` checks it at training and decoding)
"""

from __future__ import annotations

import argparse
import inspect
import math
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

try:
    from . import common, readers
except ImportError:
    import common
    import readers

SPLITS = ("train", "valid", "test")
SPM_THREADS = 2  # fixed, not --workers: the SentencePiece model depends on its thread count


@dataclass
class Corpus:
    """``lines[split][side]``: raw text, line-aligned across sides; ``stats[split]``: what the reader skipped."""

    lines: dict[str, dict[str, list[str]]]
    stats: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class Dataset:
    """What differs between datasets; everything else is the shared pipeline."""

    name: str
    sides: tuple[str, ...]  # two languages (src, tgt by default), or one side: monolingual LM data
    read: Callable[[argparse.Namespace], Corpus]
    raw_files: str  # what --raw-dir must hold, for --help and error messages
    urls: tuple[str, ...] = ()  # official archives that --download fetches into --raw-dir
    no_download: str = ""  # why --download cannot fetch the data (licence, no direct link), when urls is empty
    vocab_size: int = 8000
    max_len: int = 250
    max_ratio: float = 3.0
    user_symbols: tuple[str, ...] = ()  # SentencePiece pieces never split (Gigaword's UNK)


def parser(dataset: Dataset, doc: str) -> argparse.ArgumentParser:
    """The command line shared by every script; a script adds its own options to it."""
    p = argparse.ArgumentParser(description=doc.split("\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--raw-dir", type=Path, default=Path("data") / dataset.name, help=f"folder with {dataset.raw_files}")
    p.add_argument("--out-dir", type=Path, default=Path("data-bin") / dataset.name, help="output folder")
    p.add_argument("--download", action="store_true", help="first fetch the official files into --raw-dir")
    if len(dataset.sides) == 2:
        p.add_argument("--src", choices=dataset.sides, default=dataset.sides[0], help="source side")
        p.add_argument("--tgt", choices=dataset.sides, default=dataset.sides[1], help="target side")
    p.add_argument("--vocab-size", type=int, default=dataset.vocab_size, help="joint SentencePiece vocabulary size")
    p.add_argument("--spm-model", type=Path, default=None, help="apply this SentencePiece model, train none")
    p.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram", help="SentencePiece model type")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training lines")
    p.add_argument("--workers", type=int, default=2, help="fairseq-preprocess worker processes")
    common.add_cleaning_args(p, dataset.max_len, dataset.max_ratio)
    return p


def sides(dataset: Dataset, args: argparse.Namespace) -> tuple[str, ...]:
    """(src, tgt) as chosen on the command line, or the one side of LM data."""
    return (args.src, args.tgt) if len(dataset.sides) == 2 else dataset.sides


def check_args(dataset: Dataset, args: argparse.Namespace) -> None:
    """Reject settings that cannot work, before any work is done."""
    if len(dataset.sides) == 2 and args.src == args.tgt:
        raise common.PrepareError(f"--src and --tgt are both '{args.src}'; pass two different sides")
    if not args.raw_dir.is_dir() and not args.download:
        raise common.PrepareError(
            f"raw dir not found: {args.raw_dir}; pass --raw-dir with {dataset.raw_files}, or add --download"
        )
    if args.spm_model is not None and not args.spm_model.is_file():
        raise common.PrepareError(f"--spm-model {args.spm_model} does not exist; pass a SentencePiece .model file")
    for flag in ("vocab_size", "train_limit", "workers", "max_len"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise common.PrepareError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    if args.max_ratio < 1:
        raise common.PrepareError(f"--max-ratio must be at least 1, got {args.max_ratio}")


@contextmanager
def timed(label: str):
    """Print how long the body took."""
    start = time.perf_counter()
    yield
    print(f"[time] {label}: {time.perf_counter() - start:.1f} s", flush=True)


def fetch(dataset: Dataset, raw_dir: Path) -> list[str]:
    """``--download``: fetch the official archives; returns what was done, for the manifest."""
    if not dataset.urls:
        raise common.PrepareError(f"--download cannot fetch {dataset.name}: {dataset.no_download}")
    readers.download(dataset.urls, raw_dir)
    return [f"download {url}" for url in dataset.urls]


def check_corpus(corpus: Corpus, names: tuple[str, ...]) -> None:
    """Every split has every side, line-aligned, and train is not empty."""
    for split, by_side in corpus.lines.items():
        common.check_aligned(split, {side: by_side[side] for side in names})
    if not corpus.lines.get("train", {}).get(names[0]):
        raise common.PrepareError("the training split is empty; check --raw-dir")


def train_spm(dataset: Dataset, args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """Train the joint model on OUT/raw/train.*, or copy --spm-model; returns the commands run."""
    out = args.out_dir
    if args.spm_model is not None:
        if args.spm_model.resolve() != (out / "spm.model").resolve():
            shutil.copyfile(args.spm_model, out / "spm.model")
        return []
    files = [out / "raw" / f"train.{side}" for side in names]
    extra = {"user_defined_symbols": ",".join(dataset.user_symbols)} if dataset.user_symbols else {}
    return [common.train_sentencepiece(files, out / "spm", args.vocab_size, args.model_type,
                                       num_threads=SPM_THREADS, **extra)]


def encode_train(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """Encode train, drop bad lines (counted by reason), write OUT/tok/train.*; returns the split's statistics."""
    out = args.out_dir
    sp = common.load_sentencepiece(out / "spm.model")
    pieces = [common.encode_lines(sp, common.read_lines(out / "raw" / f"train.{side}")) for side in names]
    if len(names) == 1:
        kept, dropped = common.clean_lines(pieces[0], max_len=args.max_len)
        kept = [(line,) for line in kept]
    else:
        kept, dropped = common.clean_pairs(pieces[0], pieces[1], max_len=args.max_len, max_ratio=args.max_ratio)
    for i, side in enumerate(names):
        common.write_lines(out / "tok" / f"train.{side}", (" ".join(row[i]) for row in kept))
    return {"lines_in": len(pieces[0]), "lines_out": len(kept), "dropped": dropped}


def encode_eval(args: argparse.Namespace, split: str, names: tuple[str, ...]) -> dict:
    """Encode a valid/test split whole into OUT/tok; returns its statistics (empty lines are counted)."""
    out, empty = args.out_dir, {}
    for side in names:
        pieces = common.encode(out / "spm.model", out / "raw" / f"{split}.{side}", out / "tok" / f"{split}.{side}")
        empty[side] = sum(not p for p in pieces)
    if any(empty.values()):
        print(f"note: {split} is kept whole but has empty lines {empty}", flush=True)
    return {"lines_in": len(pieces), "lines_out": len(pieces), "empty": empty}


def binarize(args: argparse.Namespace, names: tuple[str, ...], splits: list[str]) -> str:
    """fairseq-preprocess OUT/tok into OUT (joined dictionary; --only-source for one side)."""
    tok = args.out_dir / "tok"
    suffix = f".{names[0]}" if len(names) == 1 else ""  # --only-source reads {pref} itself, not {pref}.{lang}
    prefs = {f"{split}pref": tok / f"{split}{suffix}" for split in splits}
    src, tgt = (None, None) if len(names) == 1 else names
    return common.fairseq_preprocess(src, tgt, args.out_dir, workers=args.workers, **prefs)


def build_manifest(dataset: Dataset, args, names, stats: dict, commands: list[str]) -> dict:
    """The manifest: what went in, what came out, and how (see ``common.MANIFEST_KEYS``)."""
    out = args.out_dir
    dicts = [out / "dict.txt"] if len(names) == 1 else [out / f"dict.{side}.txt" for side in names]
    return {
        "dataset": dataset.name,
        "script": f"data_scripts/{Path(inspect.getsourcefile(dataset.read)).name}",
        "script_version": "2.0",
        **({"src": names[0], "tgt": names[1]} if len(names) == 2 else {"side": names[0]}),
        "raw_dir": str(args.raw_dir),
        "splits": stats,
        "cleaning": {"applied_to": ["train"], "unit": "sentencepiece pieces", "max_len": args.max_len,
                     "max_ratio": args.max_ratio if len(names) == 2 and math.isfinite(args.max_ratio) else None},
        "sentencepiece": {
            "model": "spm.model",
            "sha256": common.sha256_file(out / "spm.model"),
            "given": str(args.spm_model) if args.spm_model else None,
            "vocab_size": common.load_sentencepiece(out / "spm.model").get_piece_size(),
            "model_type": None if args.spm_model else args.model_type,
            "num_threads": SPM_THREADS,
            "user_defined_symbols": list(dataset.user_symbols),
            "trained_on": None if args.spm_model else [f"raw/train.{side}" for side in names],
        },
        "dictionary": {"joined": len(names) == 2, **common.dictionary_info(*dicts)},
        "commands": commands,
        "versions": {
            "python": sys.version.split()[0],
            "sentencepiece": common.package_version("sentencepiece"),
            "fairseq": common.package_version("fairseq", "fairseq-fixed"),
        },
    }


def prepare(dataset: Dataset, args: argparse.Namespace) -> dict:
    """Run the whole pipeline; returns the manifest it wrote."""
    check_args(dataset, args)
    start, names = time.perf_counter(), sides(dataset, args)
    commands = fetch(dataset, args.raw_dir) if args.download else []
    with timed("read"):
        corpus = dataset.read(args)
    check_corpus(corpus, names)
    splits = [split for split in SPLITS if split in corpus.lines]
    lines_raw = len(corpus.lines["train"][names[0]])
    if args.train_limit is not None:
        corpus.lines["train"] = {side: lines[: args.train_limit] for side, lines in corpus.lines["train"].items()}
    for split in splits:
        for side in names:
            common.write_lines(args.out_dir / "raw" / f"{split}.{side}", corpus.lines[split][side])
    with timed("sentencepiece"):
        commands += train_spm(dataset, args, names)
    with timed("encode + clean"):
        stats = {"train": encode_train(args, names)}
        stats.update({split: encode_eval(args, split, names) for split in splits[1:]})
    with timed("fairseq-preprocess"):
        commands.append(binarize(args, names, splits))
    stats["train"]["lines_raw"] = lines_raw
    for split, extra in corpus.stats.items():
        stats[split].update(extra)
    manifest = build_manifest(dataset, args, names, stats, commands)
    common.write_manifest(args.out_dir / "manifest.json", manifest)
    print(f"[time] total: {time.perf_counter() - start:.1f} s", flush=True)
    return manifest


def main(dataset: Dataset, arg_parser: argparse.ArgumentParser, argv=None) -> None:
    """Parse the command line and prepare; a ``PrepareError`` ends the script with its one-line message."""
    args = arg_parser.parse_args(argv)
    try:
        prepare(dataset, args)
    except common.PrepareError as error:
        raise SystemExit(f"error: {error}")
