"""Prepare Gigaword headline generation (Rush et al., 2015: article -> title) for fairseq.

    python data_scripts/prepare_gigaword.py --raw-dir sumdata --out-dir data-bin/gigaword

``--raw-dir`` holds Rush et al.'s preprocessed release (lowercased, PTB-tokenized, digits as ``#``), as in
github.com/harvardnlp/sent-summary: ``train.{article,title}.txt``, ``valid.{article,title}.filter.txt`` (or
``valid.{article,title}.txt``) and the test set as ``test.{article,title}.txt`` (or ``Giga/input.txt`` with
``Giga/task1_ref0.txt``). The text is used as released (no re-tokenization, no lowercasing) on the sides
``src`` (article) and ``tgt`` (title).

Unknown words: the release writes them ``<unk>`` (some copies ``UNK``). Both become the single token ``UNK``,
a SentencePiece user-defined symbol that is never split (``<unk>`` would be cut into ``<``, ``unk``, ``>``), so a
model can copy it and ROUGE counts it as the word ``unk`` in hypothesis and reference alike, the usual convention.
Score decoded titles against ``raw/test.tgt`` with ROUGE-1/2/L F1 (rouge-score, stemming on; REFERENCES.md 7).

Cleaning: training pairs with a side longer than ``--max-len`` pieces or an empty side are dropped; there is no
length-ratio filter by default (a title is much shorter than its article).
"""

from __future__ import annotations

import re

try:
    from . import common, pipeline
except ImportError:
    import common
    import pipeline

UNK = "UNK"
UNK_TOKEN = re.compile(r"(?<!\S)(?:<unk>|UNK)(?!\S)")
FILES = {  # split -> side -> (file name, alternatives)
    "train": {"src": ("train.article.txt",), "tgt": ("train.title.txt",)},
    "valid": {"src": ("valid.article.filter.txt", "valid.article.txt"),
              "tgt": ("valid.title.filter.txt", "valid.title.txt")},
    "test": {"src": ("test.article.txt", "Giga/input.txt"), "tgt": ("test.title.txt", "Giga/task1_ref0.txt")},
}


def unk_to_token(lines: list[str]) -> tuple[list[str], int]:
    """Lines with every ``<unk>``/``UNK`` token written ``UNK``, and how many there were."""
    count = sum(len(UNK_TOKEN.findall(line)) for line in lines)
    return [UNK_TOKEN.sub(UNK, line).strip() for line in lines], count


def read(args) -> pipeline.Corpus:
    lines, stats = {}, {}
    for split, by_side in FILES.items():
        lines[split], stats[split] = {}, {"files": {}, "unk_tokens": {}}
        for side, names in by_side.items():
            path = common.find_raw_file(args.raw_dir, *names)
            lines[split][side], stats[split]["unk_tokens"][side] = unk_to_token(common.read_lines(path))
            stats[split]["files"][side] = str(path.relative_to(args.raw_dir))
    return pipeline.Corpus(lines, stats)


DATASET = pipeline.Dataset(
    name="gigaword",
    sides=("src", "tgt"),
    read=read,
    raw_files="Rush et al.'s train/valid/test {article,title} files (see --help)",
    no_download="the Gigaword text is licensed by the LDC; fetch Rush et al.'s preprocessed release "
    "(github.com/harvardnlp/sent-summary) by hand and pass --raw-dir",
    vocab_size=16000,
    max_ratio=float("inf"),
    user_symbols=(UNK,),
)


def main(argv=None) -> None:
    pipeline.main(DATASET, pipeline.parser(DATASET, __doc__), argv)


if __name__ == "__main__":
    main()
