"""Readers of the official raw formats, the standard fairseq splits, and the downloader.

- ``talk_lines``: IWSLT ``train.tags.*`` files (one sentence a line between XML header lines of each talk);
- ``read_segs``: ``<seg id="N">...</seg>`` lines of IWSLT XML and WMT SGML dev/test files;
- ``read_jsonl``: DiffuSeq ``{"src": ..., "trg": ...}`` jsonl;
- ``moses_clean`` + ``hold_out``: fairseq's ``clean-corpus-n.perl`` filter and its every-Nth-line valid split
  (``examples/translation/prepare-iwslt14.sh``, ``prepare-wmt14en2de.sh``);
- ``download``: fetch and unpack the official archives (``--download``; never used by the tests).

Every reader counts what it skips and returns the count, so the manifest can report it.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Sequence

try:
    from . import common
except ImportError:
    import common

# IWSLT train.tags: header lines dropped whole, and tags stripped from lines whose text is kept (title, description),
# as in fairseq's prepare-iwslt14.sh (and its later IWSLT17 scripts for speaker/reviewer/translator/doc lines).
DROPPED_TAGS = ("<url>", "<talkid>", "<keywords>", "<speaker>", "<reviewer", "<translator", "<doc", "</doc>")
STRIPPED_TAGS = re.compile(r"</?(?:title|description)>")
SEG = re.compile(r'<seg id="?\d+"?>\s*(.*?)\s*</seg>')


def talk_lines(path: Path) -> tuple[list[str], int]:
    """The sentences of an IWSLT ``train.tags.*`` file and the number of header lines dropped."""
    kept, dropped = [], 0
    for line in common.read_lines(path):
        if any(tag in line for tag in DROPPED_TAGS):
            dropped += 1
            continue
        kept.append(STRIPPED_TAGS.sub("", line).strip())
    return kept, dropped


def read_segs(path: Path) -> list[str]:
    """The ``<seg>`` texts of an official XML/SGML dev/test file, entities decoded, ’ written as '."""
    segs = []
    for number, line in enumerate(common.read_lines(path), 1):
        if "<seg" not in line:
            continue
        match = SEG.search(line)
        if match is None:
            raise common.PrepareError(f"{path} line {number}: a <seg> without its </seg> on the same line; "
                                      "pass the official file unchanged")
        segs.append(html.unescape(match.group(1)).replace("\u2019", "'"))
    if not segs:
        raise common.PrepareError(f"{path} has no <seg id=...> lines; pass the official XML/SGML file")
    return segs


def read_jsonl(path: Path, src_key: str = "src", tgt_key: str = "trg") -> tuple[list[str], list[str], int]:
    """Source and target texts of a DiffuSeq jsonl file, and the number of blank lines skipped."""
    src, tgt, blank = [], [], 0
    for number, line in enumerate(common.read_lines(path), 1):
        if not line.strip():
            blank += 1
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise common.PrepareError(
                f"{path} line {number} is not JSON ({error.args[0]}); each line must be one "
                f'{{"{src_key}": ..., "{tgt_key}": ...}} object'
            ) from None
        missing = [key for key in (src_key, tgt_key) if not isinstance(record, dict) or key not in record]
        if missing:
            raise common.PrepareError(
                f"{path} line {number} has no {missing[0]!r} field; pass --src-key/--tgt-key with the field names"
            )
        src.append(" ".join(str(record[src_key]).split()))
        tgt.append(" ".join(str(record[tgt_key]).split()))
    return src, tgt, blank


def read_corpora(raw_dir: Path, corpora: dict[str, Sequence[str]], langs: Sequence[str]) -> tuple[dict, dict]:
    """Parallel corpora ``{name: (file stem, alternative stems...)}`` concatenated in order: ``{lang: lines}``,
    and the pairs of each corpus. Files are ``{stem}.{lang}``, found as ``common.find_raw_file`` does."""
    lines, pairs = {lang: [] for lang in langs}, {}
    for name, stems in corpora.items():
        files = {lang: common.find_raw_file(raw_dir, *[f"{stem}.{lang}" for stem in stems]) for lang in langs}
        sides = {lang: common.read_lines(path) for lang, path in files.items()}
        common.check_aligned(name, sides)
        for lang in langs:
            lines[lang] += sides[lang]
        pairs[name] = len(sides[langs[0]])
    return lines, pairs


# ---------------------------------------------------------------------------------------------
# fairseq's standard splits


def word_counter(lang: str) -> tuple[Callable[[str], int], str]:
    """Count Moses tokens (sacremoses when installed, else a regex close to Moses); and the counter's name."""
    try:
        from sacremoses import MosesTokenizer
    except ImportError:
        pattern = re.compile(r"\d+(?:[.,]\d+)*|\w+(?:['’]\w+)?|[^\w\s]")
        return (lambda line: len(pattern.findall(line))), "regex approximation of the Moses tokenizer"
    tokenizer = MosesTokenizer(lang=lang)
    return (lambda line: len(tokenizer.tokenize(line, escape=False))), "sacremoses MosesTokenizer"


def moses_clean(
    src: Sequence[str], tgt: Sequence[str], langs: tuple[str, str], *, ratio: float, max_len: int
) -> tuple[list[str], list[str], dict]:
    """fairseq's ``clean-corpus-n.perl -ratio R ... 1 MAX`` on Moses token counts; returns kept sides and stats."""
    count_src, name = word_counter(langs[0])
    count_tgt, _ = word_counter(langs[1])
    kept_src, kept_tgt = [], []
    for s, t in zip(src, tgt):
        n, m = count_src(s), count_tgt(t)
        if 1 <= n <= max_len and 1 <= m <= max_len and max(n, m) <= ratio * min(n, m):
            kept_src.append(s)
            kept_tgt.append(t)
    print(f"clean-corpus-n (ratio {ratio}, 1-{max_len} tokens, {name}): kept {len(kept_src)} of {len(src)}", flush=True)
    stats = {"ratio": ratio, "min_len": 1, "max_len": max_len, "counter": name, "lines_in": len(src),
             "lines_out": len(kept_src)}
    return kept_src, kept_tgt, stats


def hold_out(lines: Sequence[str], every: int) -> tuple[list[str], list[str]]:
    """(kept, held out): line NR goes to the held-out split when NR % every == 0 (awk, 1-based), as fairseq does."""
    kept = [line for number, line in enumerate(lines, 1) if number % every]
    held = [line for number, line in enumerate(lines, 1) if not number % every]
    return kept, held


# ---------------------------------------------------------------------------------------------
# download


def download(urls: Sequence[str], raw_dir: Path) -> None:
    """Fetch each URL into ``raw_dir`` and unpack ``.tgz``/``.tar.gz``/``.zip`` archives there."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    for url in urls:
        target = raw_dir / url.rstrip("/").rsplit("/", 1)[-1]
        if not target.exists():
            print(f"+ download {url} -> {target}", flush=True)
            try:
                with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as f:
                    shutil.copyfileobj(response, f)
            except OSError as error:
                target.unlink(missing_ok=True)
                raise common.PrepareError(
                    f"download of {url} failed ({error}); fetch it by hand into {raw_dir} and rerun without --download"
                ) from None
        if tarfile.is_tarfile(target):
            with tarfile.open(target) as archive:
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.8.17/3.11.4
                archive.extractall(raw_dir, **safe)
        elif zipfile.is_zipfile(target):
            with zipfile.ZipFile(target) as archive:
                archive.extractall(raw_dir)
