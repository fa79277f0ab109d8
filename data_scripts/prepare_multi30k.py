"""Prepare Multi30k De-En (Task 1, raw cased) for fairseq with a joint SentencePiece vocabulary.

    python data_scripts/prepare_multi30k.py --raw-dir data/multi30k --out-dir data-bin/multi30k

Reads ``train``, ``val`` and ``test_2016_flickr`` (``.de``/``.en``, plain or ``.gz``) from ``--raw-dir``,
trains one SentencePiece model on the training text of both languages, encodes every split, drops
bad training pairs (valid and test are kept whole) and binarizes with ``fairseq-preprocess
--joined-dictionary``. Writes into ``--out-dir``::

    spm.model spm.vocab             joint SentencePiece model
    raw/{train,valid,test}.{de,en}  untokenized text (valid/test: the references for sacreBLEU)
    tok/{train,valid,test}.{de,en}  space-separated pieces (train: after cleaning)
    dict.{de,en}.txt                one joined fairseq dictionary (the two files are identical)
    {split}.de-en.{de,en}.{bin,idx} fairseq binarized data (with the default --src de --tgt en)
    manifest.json                   counts, dictionary size, checksums and the commands run

Decode outputs with ``fairseq-generate ... --post-process sentencepiece``.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

try:
    from . import common
except ImportError:
    import common

SCRIPT_VERSION = "1.0"
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}  # fairseq split -> raw file stem
LANGS = ("de", "en")
SPM_THREADS = 2  # fixed, not --workers: the SentencePiece model depends on its thread count


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--raw-dir", type=Path, default=Path("data/multi30k"), help="folder with the raw files")
    parser.add_argument("--out-dir", type=Path, default=Path("data-bin/multi30k"), help="output folder")
    parser.add_argument("--src", choices=LANGS, default="de", help="source language")
    parser.add_argument("--tgt", choices=LANGS, default="en", help="target language")
    parser.add_argument("--vocab-size", type=int, default=8000, help="joint SentencePiece vocabulary size")
    parser.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram", help="SentencePiece model")
    parser.add_argument("--train-limit", type=int, default=None, help="use only the first N training pairs")
    parser.add_argument("--workers", type=int, default=2, help="fairseq-preprocess worker processes")
    common.add_cleaning_args(parser)
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Reject settings that cannot work, before any work is done."""
    if args.src == args.tgt:
        raise common.PrepareError(f"--src and --tgt are both '{args.src}'; pass two different languages")
    if not args.raw_dir.is_dir():
        raise common.PrepareError(
            f"raw dir not found: {args.raw_dir}; pass --raw-dir with the Multi30k files "
            "(data/multi30k in the repository)"
        )
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


def read_raw(args: argparse.Namespace) -> tuple[dict, int]:
    """``{split: {lang: lines}}`` with train cut to ``--train-limit``, and the uncut train size."""
    files = {
        split: {lang: common.find_raw_file(args.raw_dir, f"{stem}.{lang}") for lang in LANGS}
        for split, stem in SPLITS.items()
    }
    raw = {}
    for split, by_lang in files.items():
        raw[split] = {lang: common.read_lines(path) for lang, path in by_lang.items()}
        counts = {lang: len(lines) for lang, lines in raw[split].items()}
        if len(set(counts.values())) != 1:
            raise common.PrepareError(f"{split}: line counts differ {counts}; the language files must be aligned")
    train_lines_raw = len(raw["train"][args.src])
    if args.train_limit is not None:
        raw["train"] = {lang: lines[: args.train_limit] for lang, lines in raw["train"].items()}
    return raw, train_lines_raw


def write_raw(args: argparse.Namespace, raw: dict) -> None:
    """The text as read (train after ``--train-limit``) under OUT/raw: spm input and BLEU references."""
    for split in SPLITS:
        for lang in LANGS:
            common.write_lines(args.out_dir / "raw" / f"{split}.{lang}", raw[split][lang])


def train_spm(args: argparse.Namespace) -> str:
    """Train the joint model on OUT/raw/train.{src,tgt}; returns the equivalent command line."""
    files = [args.out_dir / "raw" / f"train.{lang}" for lang in (args.src, args.tgt)]
    return common.train_sentencepiece(
        files, args.out_dir / "spm", args.vocab_size, args.model_type, num_threads=SPM_THREADS
    )


def encode_train(args: argparse.Namespace) -> dict:
    """Encode train, drop bad pairs, write OUT/tok/train.*; returns the split's statistics."""
    out, src, tgt = args.out_dir, args.src, args.tgt
    sp = common.load_sentencepiece(out / "spm.model")
    pieces = {lang: common.encode_lines(sp, common.read_lines(out / "raw" / f"train.{lang}")) for lang in (src, tgt)}
    kept, dropped = common.clean_pairs(pieces[src], pieces[tgt], max_len=args.max_len, max_ratio=args.max_ratio)
    for side, lang in enumerate((src, tgt)):
        common.write_lines(out / "tok" / f"train.{lang}", (" ".join(pair[side]) for pair in kept))
    return {"raw_stem": SPLITS["train"], "lines_in": len(pieces[src]), "lines_out": len(kept), "dropped": dropped}


def encode_eval(args: argparse.Namespace, split: str) -> dict:
    """Encode a valid/test split whole into OUT/tok; returns its statistics (empty lines are counted)."""
    out, empty = args.out_dir, {}
    for lang in (args.src, args.tgt):
        pieces = common.encode(out / "spm.model", out / "raw" / f"{split}.{lang}", out / "tok" / f"{split}.{lang}")
        empty[lang] = sum(not p for p in pieces)
    if any(empty.values()):
        print(f"note: {split} is kept whole but has empty lines {empty}", flush=True)
    n = len(pieces)
    return {"raw_stem": SPLITS[split], "lines_in": n, "lines_out": n, "empty": empty}


def build_manifest(args: argparse.Namespace, stats: dict, commands: list[str]) -> dict:
    """The manifest: what went in, what came out, and how (see ``common.MANIFEST_KEYS``)."""
    out = args.out_dir
    return {
        "dataset": "multi30k",
        "script": "data_scripts/prepare_multi30k.py",
        "script_version": SCRIPT_VERSION,
        "src": args.src,
        "tgt": args.tgt,
        "raw_dir": str(args.raw_dir),
        "splits": stats,
        "cleaning": {
            "applied_to": ["train"],
            "unit": "sentencepiece pieces",
            "max_len": args.max_len,
            "max_ratio": args.max_ratio,
        },
        "sentencepiece": {
            "model": "spm.model",
            "sha256": common.sha256_file(out / "spm.model"),
            "vocab_size": args.vocab_size,
            "model_type": args.model_type,
            "character_coverage": 1.0,
            "num_threads": SPM_THREADS,
            "trained_on": [f"raw/train.{args.src}", f"raw/train.{args.tgt}"],
        },
        "dictionary": {"joined": True, **common.dictionary_info(out / f"dict.{args.src}.txt")},
        "commands": commands,
        "versions": {
            "python": sys.version.split()[0],
            "sentencepiece": common.package_version("sentencepiece"),
            "fairseq": common.package_version("fairseq", "fairseq-fixed"),
        },
    }


def prepare(args: argparse.Namespace) -> dict:
    """Run the whole pipeline; returns the manifest it wrote."""
    check_args(args)
    start = time.perf_counter()
    with timed("read"):
        raw, train_lines_raw = read_raw(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_raw(args, raw)
    with timed("sentencepiece train"):
        commands = [train_spm(args)]
    with timed("encode + clean"):
        stats = {"train": encode_train(args), **{split: encode_eval(args, split) for split in ("valid", "test")}}
    tok = args.out_dir / "tok"
    with timed("fairseq-preprocess"):
        commands.append(
            common.fairseq_preprocess(
                args.src,
                args.tgt,
                args.out_dir,
                trainpref=tok / "train",
                validpref=tok / "valid",
                testpref=tok / "test",
                workers=args.workers,
            )
        )
    stats["train"]["lines_raw"] = train_lines_raw
    manifest = build_manifest(args, stats, commands)
    common.write_manifest(args.out_dir / "manifest.json", manifest)
    print(f"[time] total: {time.perf_counter() - start:.1f} s", flush=True)
    return manifest


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        prepare(args)
    except common.PrepareError as error:
        raise SystemExit(f"error: {error}")


if __name__ == "__main__":
    main()
