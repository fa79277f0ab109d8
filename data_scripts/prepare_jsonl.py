"""Prepare a DiffuSeq-format jsonl dataset (QQP, Quasar-T, Wiki-Auto, CommonsenseConversation...) for fairseq.

    python data_scripts/prepare_jsonl.py --raw-dir datasets/QQP --out-dir data-bin/qqp

``--raw-dir`` holds ``train.jsonl``, ``valid.jsonl`` and ``test.jsonl`` as DiffuSeq ships them
(github.com/Shark-NLP/DiffuSeq, "Datasets"): one ``{"src": ..., "trg": ...}`` object a line (``--src-key`` and
``--tgt-key`` name other fields). Blank lines are skipped and counted; a line that is not such an object stops the
script with its file and line number. Whitespace runs are collapsed; the text is otherwise used as released (cased).
The binarized sides are ``src`` and ``tgt``; ``raw/test.tgt`` holds the references (DiffuSeq scores sentence BLEU
and ROUGE-L against them, REFERENCES.md section 7).

Cleaning: training pairs with an empty side or a side longer than ``--max-len`` pieces are dropped; no
length-ratio filter by default (``--max-ratio`` sets one).
"""

from __future__ import annotations

try:
    from . import common, pipeline, readers
except ImportError:
    import common
    import pipeline
    import readers


def read(args) -> pipeline.Corpus:
    lines, stats = {}, {}
    for split in pipeline.SPLITS:
        src, tgt, blank = readers.read_jsonl(common.find_raw_file(args.raw_dir, f"{split}.jsonl"),
                                             args.src_key, args.tgt_key)
        lines[split], stats[split] = {"src": src, "tgt": tgt}, {"blank_lines_skipped": blank}
    return pipeline.Corpus(lines, stats)


DATASET = pipeline.Dataset(
    name="jsonl",
    sides=("src", "tgt"),
    read=read,
    raw_files="{train,valid,test}.jsonl in DiffuSeq's format",
    no_download="DiffuSeq's datasets are shared as a Google Drive folder (see github.com/Shark-NLP/DiffuSeq); "
    "fetch the dataset's folder by hand and pass it as --raw-dir",
    vocab_size=8000,
    max_ratio=float("inf"),
)


def main(argv=None) -> None:
    parser = pipeline.parser(DATASET, __doc__)
    parser.add_argument("--src-key", default="src", help="jsonl field of the source text")
    parser.add_argument("--tgt-key", default="trg", help="jsonl field of the target text")
    pipeline.main(DATASET, parser, argv)


if __name__ == "__main__":
    main()
