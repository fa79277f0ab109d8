"""Sequence-level knowledge distillation (Kim & Rush, 2016): re-label the training targets with an AR teacher.

    python data_scripts/distill.py --data data-bin/iwslt14 --teacher checkpoints/teacher/checkpoint_best.pt \\
        --out-dir data-bin/iwslt14_kd --beam 5 --max-tokens 8192

The teacher is a fairseq ``transformer`` trained with ``--task translation`` on ``--data`` itself (same
dictionary). Its beam-search translations of the *training* set (``fairseq-generate --gen-subset train``) replace
the training targets; the sources, the dictionary (``--srcdict``/``--tgtdict`` of ``--data``) and the valid and
test sets (copied) stay the original ones, so a model trained on ``--out-dir`` is evaluated exactly like one
trained on ``--data``, and its checkpoints pass the dictionary check against either data-bin. Then train the
diffusion model on ``--out-dir`` (the KD data of the Difformer / DINOISER recipes, REFERENCES.md).

A training sentence the teacher produced nothing for (skipped for its length, or an empty hypothesis) keeps
its reference target (``--on-failure drop`` leaves the pair out instead); every such sentence is counted,
printed and listed in ``manifest.json``, together with the teacher checkpoint's sha256 and the beam settings.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import time
from pathlib import Path

try:
    from . import common
except ImportError:
    import common

from difftext.options import POSITIVE  # refused when parsed, not by fairseq-generate after the teacher has loaded

ROOT = Path(__file__).resolve().parents[1]
HYPOTHESIS = re.compile(r"^H-(\d+)\t[^\t]*\t(.*)$")
COPIED = ("spm.model", "spm.vocab")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--data", type=Path, required=True, help="the data-bin the teacher was trained on")
    p.add_argument("--teacher", type=Path, required=True, help="the teacher checkpoint (fairseq translation task)")
    p.add_argument("--out-dir", type=Path, required=True, help="the distilled data-bin to write")
    p.add_argument("--src", default=None, help="source language (default: from the data-bin)")
    p.add_argument("--tgt", default=None, help="target language (default: from the data-bin)")
    p.add_argument("--beam", type=POSITIVE, default=5, help="beam size")
    p.add_argument("--lenpen", type=float, default=1.0, help="length penalty")
    p.add_argument("--max-len-a", type=float, default=0, help="hypotheses have at most a * source + b tokens")
    p.add_argument("--max-len-b", type=int, default=200, help="see --max-len-a")
    p.add_argument("--max-tokens", type=POSITIVE, default=8192, help="tokens per batch")
    p.add_argument("--batch-size", type=POSITIVE, default=None, help="sentences per batch (besides --max-tokens)")
    p.add_argument("--cpu", action="store_true", help="decode on the CPU")
    p.add_argument("--fp16", action="store_true", help="decode in half precision")
    p.add_argument("--on-failure", choices=("reference", "drop"), default="reference",
                   help="what a sentence without a teacher output becomes: its reference target, or nothing")
    p.add_argument("--generate-args", default="", help="further fairseq-generate options, as one string")
    p.add_argument("--workers", type=POSITIVE, default=2, help="fairseq-preprocess worker processes")
    return p.parse_args(argv)


def languages(args) -> tuple[str, str]:
    """(src, tgt): the flags, else the data-bin's manifest, else the train.{src}-{tgt}.* file names."""
    manifest = read_manifest(args.data)
    src, tgt = args.src or manifest.get("src"), args.tgt or manifest.get("tgt")
    if src is None or tgt is None:
        pairs = {m.group(1, 2) for f in args.data.glob("train.*-*.*.idx")
                 if (m := re.match(r"train\.([^.-]+)-([^.-]+)\.", f.name))}
        if len(pairs) != 1:
            raise common.PrepareError(f"cannot tell the language pair of {args.data} (found {sorted(pairs)}); "
                                      "pass --src and --tgt")
        src, tgt = src or next(iter(pairs))[0], tgt or next(iter(pairs))[1]
    return src, tgt


def read_manifest(data: Path) -> dict:
    path = data / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def check_inputs(args, src: str, tgt: str) -> None:
    if not args.teacher.is_file():
        raise common.PrepareError(f"teacher checkpoint not found: {args.teacher}; pass --teacher with a .pt file")
    for name in (f"dict.{src}.txt", f"dict.{tgt}.txt", f"train.{src}-{tgt}.{src}.idx", f"train.{src}-{tgt}.{tgt}.idx"):
        if not (args.data / name).is_file():
            raise common.PrepareError(f"{args.data / name} not found; pass --data with the binarized data-bin "
                                      "(fairseq-preprocess output) the teacher was trained on")
    if args.out_dir.resolve() == args.data.resolve():
        raise common.PrepareError("--out-dir is --data; write the distilled data-bin to a new folder")


def generate(args, src: str, tgt: str) -> tuple[str, Path]:
    """Beam-search the training set with the teacher; returns the command and fairseq's output file."""
    results = args.out_dir / "teacher"
    cmd = ["fairseq-generate", str(args.data), "--user-dir", str(ROOT / "fairseq_plugins"), "--task", "translation",
           "--source-lang", src, "--target-lang", tgt, "--path", str(args.teacher), "--gen-subset", "train",
           "--beam", str(args.beam), "--nbest", "1", "--lenpen", str(args.lenpen), "--max-len-a", str(args.max_len_a),
           "--max-len-b", str(args.max_len_b), "--max-tokens", str(args.max_tokens),
           "--required-batch-size-multiple", "1", "--skip-invalid-size-inputs-valid-test",
           "--results-path", str(results)]
    if args.batch_size is not None:
        cmd += ["--batch-size", str(args.batch_size)]
    cmd += ["--cpu"] if args.cpu else []
    cmd += ["--fp16"] if args.fp16 else []
    cmd += shlex.split(args.generate_args)
    return common.run(cmd), results / "generate-train.txt"


def hypotheses(path: Path) -> dict[int, str]:
    """``{sentence id: hypothesis pieces}`` from fairseq-generate's H- lines (best hypothesis per id)."""
    found = {}
    for line in common.read_lines(path):
        match = HYPOTHESIS.match(line)
        if match is not None:
            found.setdefault(int(match.group(1)), match.group(2).strip())
    return found


def training_pieces(data: Path, src: str, tgt: str) -> dict[str, list[str]]:
    """The binarized training sides as piece strings, in their original order."""
    from fairseq.data import Dictionary, data_utils

    sides = {}
    for lang in (src, tgt):
        dictionary = Dictionary.load(str(data / f"dict.{lang}.txt"))
        dataset = data_utils.load_indexed_dataset(str(data / f"train.{src}-{tgt}.{lang}"), dictionary)
        sides[lang] = [dictionary.string(dataset[i]) for i in range(len(dataset))]
    return sides


def distilled_targets(args, train: dict, teacher: dict[int, str], src: str, tgt: str) -> tuple[list, list, list]:
    """(sources, targets, ids the teacher failed on): teacher output in original order, failures as asked."""
    sources, targets, failed = [], [], []
    for i, (source, reference) in enumerate(zip(train[src], train[tgt])):
        hypothesis = teacher.get(i, "")
        if not hypothesis:
            failed.append(i)
            if args.on_failure == "drop":
                continue
            hypothesis = reference
        sources.append(source)
        targets.append(hypothesis)
    print(f"teacher output for {len(train[src]) - len(failed)} of {len(train[src])} training sentences; "
          f"{len(failed)} failed ({'kept their reference' if args.on_failure == 'reference' else 'dropped'})"
          + (f": ids {failed[:20]}{' ...' if len(failed) > 20 else ''}" if failed else ""), flush=True)
    return sources, targets, failed


def copy_eval_splits(args, src: str, tgt: str) -> dict:
    """valid/test binaries, SentencePiece model and raw references of --data, copied unchanged."""
    copied = {}
    for path in sorted(args.data.glob(f"*.{src}-{tgt}.*")):
        if not path.name.startswith("train."):
            shutil.copyfile(path, args.out_dir / path.name)
            copied.setdefault(path.name.split(".")[0], []).append(path.name)
    for name in COPIED:
        if (args.data / name).is_file():
            shutil.copyfile(args.data / name, args.out_dir / name)
    if (args.data / "raw").is_dir():
        for path in (args.data / "raw").glob("*"):
            if not path.name.startswith("train."):
                common.write_lines(args.out_dir / "raw" / path.name, common.read_lines(path))
    return {split: {"copied_from": str(args.data), "files": files} for split, files in copied.items()}


def build_manifest(args, src, tgt, stats: dict, failed: list, commands: list[str]) -> dict:
    source = read_manifest(args.data)
    dicts = [args.out_dir / f"dict.{lang}.txt" for lang in (src, tgt)]
    joined = common.sha256_file(dicts[0]) == common.sha256_file(dicts[1])
    return {
        "dataset": f"{source.get('dataset', args.data.name)}_distilled",
        "script": "data_scripts/distill.py",
        "script_version": "1.0",
        "src": src,
        "tgt": tgt,
        "source_data": str(args.data),
        "splits": stats,
        "distillation": {
            "teacher": str(args.teacher),
            "teacher_sha256": common.sha256_file(args.teacher),
            "beam": args.beam, "lenpen": args.lenpen, "max_len_a": args.max_len_a, "max_len_b": args.max_len_b,
            "on_failure": args.on_failure,
            "failed": len(failed),
            "failed_ids": failed[:1000],
        },
        "sentencepiece": source.get("sentencepiece", {"model": None, "sha256": None}),
        "dictionary": {"joined": joined, **common.dictionary_info(*(dicts[:1] if not joined else dicts))},
        "commands": commands,
    }


def distill(args) -> dict:
    """Run the whole distillation; returns the manifest it wrote."""
    start = time.perf_counter()
    src, tgt = languages(args)
    check_inputs(args, src, tgt)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    command, output = generate(args, src, tgt)
    train = training_pieces(args.data, src, tgt)
    sources, targets, failed = distilled_targets(args, train, hypotheses(output), src, tgt)
    common.write_lines(args.out_dir / "tok" / f"train.{src}", sources)
    common.write_lines(args.out_dir / "tok" / f"train.{tgt}", targets)
    commands = [command, common.fairseq_preprocess(
        src, tgt, args.out_dir, trainpref=args.out_dir / "tok" / "train", workers=args.workers,
        joined_dictionary=False, srcdict=args.data / f"dict.{src}.txt", tgtdict=args.data / f"dict.{tgt}.txt")]
    for lang in (src, tgt):  # the original files byte for byte, so their sha256 (and the checkpoint check) match
        shutil.copyfile(args.data / f"dict.{lang}.txt", args.out_dir / f"dict.{lang}.txt")
    stats = {"train": {"lines_in": len(train[src]), "lines_out": len(sources), "teacher_failed": len(failed)},
             **copy_eval_splits(args, src, tgt)}
    manifest = build_manifest(args, src, tgt, stats, failed, commands)
    common.write_manifest(args.out_dir / "manifest.json", manifest)
    print(f"[time] total: {time.perf_counter() - start:.1f} s", flush=True)
    return manifest


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        distill(args)
    except common.PrepareError as error:
        raise SystemExit(f"error: {error}")


if __name__ == "__main__":
    main()
