"""Prepare Multi30k De-En (Task 1, raw cased) for fairseq with a joint SentencePiece vocabulary.

    python data_scripts/prepare_multi30k.py --raw-dir data/multi30k --out-dir data-bin/multi30k

Reads ``train``, ``val`` and ``test_2016_flickr`` (``.de``/``.en``, plain or ``.gz``) from ``--raw-dir``
(the repository ships them in data/multi30k; ``--download`` fetches them from github.com/multi30k/dataset),
trains one SentencePiece model on the training text of both languages, encodes every split, drops
bad training pairs (valid and test are kept whole) and binarizes with ``fairseq-preprocess
--joined-dictionary``. The output layout and manifest are described in ``data_scripts/pipeline.py``.

Decode outputs with ``fairseq-generate ... --post-process sentencepiece``.
"""

from __future__ import annotations

try:
    from . import common, pipeline
except ImportError:
    import common
    import pipeline

STEMS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}  # fairseq split -> raw file stem
URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw"


def read(args) -> pipeline.Corpus:
    """The three splits as shipped (cased, untokenized)."""
    lines = {
        split: {lang: common.read_lines(common.find_raw_file(args.raw_dir, f"{stem}.{lang}")) for lang in ("de", "en")}
        for split, stem in STEMS.items()
    }
    return pipeline.Corpus(lines, {split: {"raw_stem": stem} for split, stem in STEMS.items()})


DATASET = pipeline.Dataset(
    name="multi30k",
    sides=("de", "en"),
    read=read,
    raw_files="{train,val,test_2016_flickr}.{de,en}[.gz] (data/multi30k in the repository)",
    urls=tuple(f"{URL}/{stem}.{lang}.gz" for stem in STEMS.values() for lang in ("de", "en")),
)


def main(argv=None) -> None:
    pipeline.main(DATASET, pipeline.parser(DATASET, __doc__), argv)


if __name__ == "__main__":
    main()
