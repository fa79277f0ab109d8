"""Shared helpers for the data-preparation scripts in ``data_scripts/``.

Every ``prepare_<dataset>.py`` follows the same pipeline and uses these pieces:

1. read raw text (plain or ``.gz``), one sentence per line, line-aligned across languages;
2. train one joint SentencePiece model over both languages (``train_sentencepiece``);
3. encode every split into space-separated pieces (``encode`` / ``encode_lines``);
4. clean the training pairs, counting every drop by reason (``clean_pairs``);
5. binarize with ``fairseq-preprocess --joined-dictionary`` (``fairseq_preprocess``);
6. record what was done in ``manifest.json`` (``write_manifest``).

Every external command is printed, shell-quoted, before it runs, so a log can be replayed by hand.

SentencePiece and fairseq: the encoded files hold piece *strings* ("▁Zwei ▁junge ..."), never ids.
``fairseq-preprocess`` builds its own dictionary from those strings and adds its own four specials
(``<s> <pad> </s> <unk>``, ids 0-3), so the SentencePiece model reserves only ``<unk>`` (required by
SentencePiece) and disables its bos/eos/pad. Decoding needs no model:
``fairseq-generate --post-process sentencepiece`` (and ``--bpe sentencepiece``) remove the spaces and
turn ``▁`` back into spaces. That gives the text as SentencePiece's default ``nmt_nfkc`` rule
normalized it (NFKC, whitespace runs collapsed), so score against the raw references, not decoded pieces.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
DROP_REASONS = ("empty", "too_long", "ratio")
MANIFEST_KEYS = ("script", "script_version", "splits", "sentencepiece", "dictionary", "commands")


class PrepareError(Exception):
    """An error the user can fix (missing file, bad flag, failed command); its message is one line."""


class CommandError(PrepareError):
    """An external command exited with a nonzero status or could not be started."""


# ---------------------------------------------------------------------------------------------
# commands


def shell_join(cmd: Sequence[str]) -> str:
    """The command as one shell-quoted line, as it would be typed."""
    return shlex.join([str(c) for c in cmd])


def find_executable(name: str) -> str:
    """Locate ``name``, preferring the bin folder of the running Python (an unactivated venv)."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        hint = " (pip install fairseq)" if name.startswith("fairseq-") else ""
        raise CommandError(f"command not found: {name}, neither beside {sys.executable} nor on PATH; install it{hint}")
    return found


def run(cmd: list[str]) -> str:
    """Print ``+ cmd`` and run it; raise ``CommandError`` (one line naming the command) on failure.

    Returns the printed command line, for the manifest.
    """
    line = shell_join(cmd)
    print(f"+ {line}", flush=True)
    exe = find_executable(str(cmd[0]))
    proc = subprocess.run([exe, *[str(c) for c in cmd[1:]]], check=False)
    if proc.returncode != 0:
        raise CommandError(f"command failed with exit status {proc.returncode}: {line}")
    return line


# ---------------------------------------------------------------------------------------------
# text files


def open_text(path: Path, mode: str = "rt"):
    """Open plain or gzip-compressed UTF-8 text; lines end only at ``\\n`` (no newline translation)."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, mode, encoding="utf-8", newline="\n")
    return open(path, mode, encoding="utf-8", newline="\n")


def read_lines(path: Path) -> list[str]:
    """All lines of a plain or ``.gz`` text file, without their line ending (``\\n`` or ``\\r\\n``)."""
    with open_text(path) as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def write_lines(path: Path, lines: Iterable[str]) -> int:
    """Write one line per item (``\\n`` endings); returns the number of lines written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")
            n += 1
    return n


def count_lines(path: Path) -> int:
    """Number of ``\\n``-terminated lines in a plain or ``.gz`` file."""
    with open_text(path) as f:
        return sum(1 for _ in f)


def find_raw_file(raw_dir: Path, name: str, *alternatives: str) -> Path:
    """``raw_dir/name`` (or ``name.gz``), else the first alternative name found; a ``PrepareError`` names them all."""
    for stem in (name, *alternatives):
        for candidate in (raw_dir / stem, raw_dir / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    for stem in (name, *alternatives):  # official archives extract into subfolders (de-en/, training/, dev/)
        found = sorted(raw_dir.rglob(Path(stem).name)) + sorted(raw_dir.rglob(f"{Path(stem).name}.gz"))
        if found:
            return found[0]
    others = "".join(f" or {a}" for a in alternatives)
    raise PrepareError(
        f"missing raw file: {raw_dir / name} (or {name}.gz{others}); check --raw-dir, or pass --download to fetch it"
    )


def check_aligned(name: str, lines: dict[str, Sequence[str]]) -> None:
    """Raise a ``PrepareError`` naming ``name`` unless every side of ``{side: lines}`` has as many lines."""
    counts = {side: len(side_lines) for side, side_lines in lines.items()}
    if len(set(counts.values())) > 1:
        raise PrepareError(f"{name}: line counts differ {counts}; the sides must be line-aligned "
                           "(pass the official, unmodified files)")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# cleaning


def drop_reason(src: Sequence[str], tgt: Sequence[str], max_len: int, max_ratio: float) -> str | None:
    """Why a pair of piece sequences is dropped (one of ``DROP_REASONS``), or None to keep it."""
    if not src or not tgt:
        return "empty"
    if len(src) > max_len or len(tgt) > max_len:
        return "too_long"
    if max(len(src), len(tgt)) / min(len(src), len(tgt)) > max_ratio:
        return "ratio"
    return None


def clean_pairs(
    src: Sequence[Sequence[str]],
    tgt: Sequence[Sequence[str]],
    *,
    max_len: int,
    max_ratio: float,
    name: str = "train",
    unit: str = "pairs",
) -> tuple[list[tuple[Sequence[str], Sequence[str]]], dict[str, int]]:
    """Keep the pairs of piece sequences that pass ``drop_reason``; count each drop reason.

    Lengths are counted in SentencePiece pieces (without the eos fairseq appends). Prints one
    summary line, so nothing is dropped silently. Returns (kept pairs, {reason: count}).
    """
    if len(src) != len(tgt):
        raise PrepareError(f"{name}: {len(src)} source lines but {len(tgt)} target lines; the sides must be aligned")
    counts = Counter({reason: 0 for reason in DROP_REASONS})
    kept = []
    for s, t in zip(src, tgt):
        reason = drop_reason(s, t, max_len, max_ratio)
        if reason is None:
            kept.append((s, t))
        else:
            counts[reason] += 1
    dropped = " ".join(f"{r}={counts[r]}" for r in DROP_REASONS)
    print(
        f"clean {name}: kept {len(kept)} of {len(src)} {unit}; dropped {dropped} "
        f"(max_len={max_len} pieces, max_ratio={max_ratio})",
        flush=True,
    )
    return kept, dict(counts)


def clean_lines(lines: Sequence[Sequence[str]], *, max_len: int, name: str = "train") -> tuple[list, dict[str, int]]:
    """The one-sided ``clean_pairs`` of monolingual data: drop empty and too long lines, count each reason."""
    kept, counts = clean_pairs(lines, lines, max_len=max_len, max_ratio=float("inf"), name=name, unit="lines")
    return [pair[0] for pair in kept], counts


def add_cleaning_args(parser, max_len: int = 250, max_ratio: float = 3.0) -> None:
    """Add ``--max-len`` and ``--max-ratio`` (with a dataset's defaults) to an argparse parser."""
    parser.add_argument(
        "--max-len", type=int, default=max_len, help="drop training pairs with a side longer than this many pieces"
    )
    parser.add_argument(
        "--max-ratio",
        type=float,
        default=max_ratio,
        help="drop training pairs whose longer side has more than this many times the pieces of the shorter "
        "(inf: no ratio filter)",
    )


# ---------------------------------------------------------------------------------------------
# sentencepiece


def spm_train_options(
    inputs: Sequence[str],
    model_prefix: str,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    input_sentence_size: int = 1_000_000,
    num_threads: int = 2,
) -> dict:
    """The ``spm_train`` options used by ``train_sentencepiece`` (see the module docstring for the ids)."""
    return {
        "input": ",".join(inputs),
        "model_prefix": model_prefix,
        "vocab_size": vocab_size,
        "model_type": model_type,
        "character_coverage": character_coverage,
        "input_sentence_size": input_sentence_size,
        "shuffle_input_sentence": "true",
        "unk_id": 0,
        "bos_id": -1,
        "eos_id": -1,
        "pad_id": -1,
        "num_threads": num_threads,
    }


def vocab_error_message(error: Exception, vocab_size: int) -> str | None:
    """A one-line fix for SentencePiece's vocabulary-size errors, else None."""
    text = str(error)
    too_large = re.search(r"Vocabulary size (?:is )?too (?:high|large).*?<=\s*(\d+)", text)
    if too_large:
        limit = too_large.group(1)
        return (
            f"--vocab-size {vocab_size} is too large for this training data (SentencePiece allows at most "
            f"{limit}); rerun with --vocab-size {limit} or less, or with more training data"
        )
    if "smaller than required_chars" in text:
        return (
            f"--vocab-size {vocab_size} is smaller than the number of distinct characters to cover; "
            "rerun with a larger --vocab-size"
        )
    return None


@contextmanager
def working_directory(path: Path):
    """Run the body with ``path`` as the current directory."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def train_sentencepiece(
    files: Sequence[Path],
    model_prefix: Path,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    *,
    input_sentence_size: int = 1_000_000,
    num_threads: int = 2,
    **extra_options,
) -> str:
    """Train one joint SentencePiece model over ``files`` (plain text, all languages together).

    Writes ``model_prefix.model`` and ``model_prefix.vocab``; prints the equivalent ``spm_train``
    command line and returns it. The model is reproducible byte for byte: training runs in the
    model's folder with relative paths (the model file records its options, paths included); files
    with at most ``input_sentence_size`` sentences are used whole, larger ones are sampled by
    SentencePiece's generator seeded with a fixed value. The model depends on ``num_threads``
    (it splits the EM statistics), so keep that fixed to reproduce a model. ``extra_options`` are
    further ``spm_train`` options (``user_defined_symbols="UNK"``).
    """
    import sentencepiece as spm

    workdir = Path(model_prefix).parent
    inputs = [os.path.relpath(f, workdir) for f in files]
    options = spm_train_options(
        inputs, Path(model_prefix).name, vocab_size, model_type, character_coverage, input_sentence_size, num_threads
    )
    options.update(extra_options)  # e.g. user_defined_symbols
    spm_train = shell_join(["spm_train", *[f"--{key}={value}" for key, value in options.items()]])
    line = f"cd {shlex.quote(str(workdir))} && {spm_train}"
    print(f"+ {line}", flush=True)
    spm.set_random_generator_seed(1)
    try:
        with working_directory(workdir):
            spm.SentencePieceTrainer.train(**options, minloglevel=1)
    except RuntimeError as error:
        first_line = (str(error).strip() or repr(error)).splitlines()[0]
        message = vocab_error_message(error, vocab_size) or f"SentencePiece training failed: {first_line}"
        raise PrepareError(message) from error
    return line


def load_sentencepiece(model: Path):
    """A ``SentencePieceProcessor`` for ``model``."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(model))


def encode_lines(sp, lines: Sequence[str]) -> list[list[str]]:
    """Encode raw lines into lists of piece strings (an empty line gives an empty list)."""
    return sp.encode(list(lines), out_type=str)


def encode(spm_model: Path, in_file: Path, out_file: Path) -> list[list[str]]:
    """Encode a plain or ``.gz`` text file into space-separated pieces, one line per input line."""
    pieces = encode_lines(load_sentencepiece(spm_model), read_lines(in_file))
    write_lines(out_file, (" ".join(p) for p in pieces))
    return pieces


def decode_pieces(line: str) -> str:
    """Pieces back to text exactly as ``fairseq``'s ``post_process(line, 'sentencepiece')`` does."""
    return line.replace(" ", "").replace("\u2581", " ").strip()


# ---------------------------------------------------------------------------------------------
# fairseq


def fairseq_preprocess(
    src: str | None,
    tgt: str | None,
    destdir: Path,
    *,
    trainpref: Path,
    validpref: Path | None = None,
    testpref: Path | None = None,
    workers: int = 2,
    joined_dictionary: bool = True,
    srcdict: Path | None = None,
    tgtdict: Path | None = None,
) -> str:
    """Run ``fairseq-preprocess`` on ``{pref}.{src}`` / ``{pref}.{tgt}`` files; returns the command line.

    ``src=tgt=None`` binarizes monolingual data (``--only-source``: ``{pref}`` files, ``dict.txt``).
    ``srcdict``/``tgtdict`` apply given dictionaries instead of building one (then not ``joined_dictionary``).
    fairseq refuses to overwrite a dictionary, so stale dictionaries in ``destdir`` are removed first.
    """
    names = ["dict.txt"] if src is None else [f"dict.{lang}.txt" for lang in (src, tgt)]
    for name in names:
        (Path(destdir) / name).unlink(missing_ok=True)
    cmd = ["fairseq-preprocess", "--only-source"] if src is None else ["fairseq-preprocess", "--source-lang", src]
    if tgt is not None:
        cmd += ["--target-lang", tgt]
    cmd += ["--trainpref", str(trainpref)]
    for flag, value in (("--validpref", validpref), ("--testpref", testpref)):
        if value is not None:
            cmd += [flag, str(value)]
    for flag, value in (("--srcdict", srcdict), ("--tgtdict", tgtdict)):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += ["--destdir", str(destdir)]
    if joined_dictionary and tgt is not None:
        cmd.append("--joined-dictionary")
    cmd += ["--workers", str(workers)]
    return run(cmd)


def dictionary_info(dict_file: Path, *copies: Path) -> dict:
    """Size and sha256 of a fairseq ``dict.*.txt``: its lines, plus the 4 specials fairseq adds when loading it.

    The lines include fairseq's ``madeupwordNNNN`` fillers that pad the size to a multiple of 8. ``copies``
    are the other dictionary files that must be identical to it (a joined dictionary's ``dict.{tgt}.txt``);
    ``fairseq_plugins.manifest`` checks every file of ``files`` against ``size`` and ``sha256``.
    """
    lines = read_lines(dict_file)
    sha = sha256_file(dict_file)
    for copy in copies:
        if sha256_file(copy) != sha:
            raise PrepareError(f"{copy} differs from {dict_file}; a joined dictionary must be one file twice")
    return {
        "file": Path(dict_file).name,
        "files": [Path(f).name for f in (dict_file, *copies)],
        "sha256": sha,
        "lines": len(lines),
        "madeupwords": sum(line.startswith("madeupword") for line in lines),
        "fairseq_specials": len(FAIRSEQ_SPECIALS),
        "size": len(lines) + len(FAIRSEQ_SPECIALS),
        "size_is": "lines of the dict file + fairseq's 4 specials <s> <pad> </s> <unk> (= len(Dictionary))",
    }


# ---------------------------------------------------------------------------------------------
# manifest


def package_version(*names: str) -> str | None:
    """The installed version of the first distribution found among ``names``, else None."""
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def write_manifest(path: Path, manifest: dict) -> None:
    """Write ``manifest`` as indented UTF-8 JSON; it must hold every key of ``MANIFEST_KEYS``."""
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"manifest lacks {missing}")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {path}", flush=True)
