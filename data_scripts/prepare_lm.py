"""Prepare monolingual text (Brown, or any one-sentence-a-line corpus) for fairseq language modelling.

    python data_scripts/prepare_lm.py --raw-dir ../shared/data/brown --pattern 'brown.{split}.txt' \\
        --out-dir data-bin/brown

``--raw-dir`` holds ``{split}.txt`` files (``--pattern`` names them otherwise) for train and valid, and test when
there is one. ``--download`` fetches the Brown corpus from NLTK's data index, strips its part-of-speech tags and
splits it by document (every 10th document from the 9th to valid, from the 10th to test, the rest to train).

SentencePiece is trained on the training text and the data is binarized with ``fairseq-preprocess
--only-source`` into ``{split}.bin/.idx`` and ``dict.txt``, the layout fairseq's language-modelling datasets
(``--task language_modeling``, and difftext's ``text_diffusion_lm``) read. Empty training lines and lines longer
than ``--max-len`` pieces are dropped and counted; valid and test are kept whole.
"""

from __future__ import annotations

from pathlib import Path

try:
    from . import common, pipeline
except ImportError:
    import common
    import pipeline

SIDE = "txt"
BROWN_URL = "https://raw.githubusercontent.com/nltk/nltk_data/gh-pages/packages/corpora/brown.zip"


def read(args) -> pipeline.Corpus:
    if "{split}" not in args.pattern:
        raise common.PrepareError(f"--pattern {args.pattern!r} has no {{split}}; pass e.g. 'brown.{{split}}.txt'")
    if args.download:
        brown_to_text(args.raw_dir, args.pattern)
    lines, stats = {}, {}
    for split in pipeline.SPLITS:
        name = args.pattern.format(split=split)
        if split == "test" and not any((args.raw_dir / n).is_file() for n in (name, f"{name}.gz")):
            print(f"note: no {args.raw_dir / name}; binarizing train and valid only", flush=True)
            continue
        lines[split] = {SIDE: common.read_lines(common.find_raw_file(args.raw_dir, name))}
        stats[split] = {"file": name}
    return pipeline.Corpus(lines, stats)


def brown_to_text(raw_dir: Path, pattern: str) -> None:
    """NLTK's tagged Brown files (``brown/ca01`` ...) as one untagged sentence a line, split by document."""
    documents = sorted(p for p in (raw_dir / "brown").glob("c[a-r][0-9][0-9]") if p.is_file())
    if not documents:
        raise common.PrepareError(f"no Brown documents under {raw_dir / 'brown'}; the download did not unpack")
    splits = {"train": [], "valid": [], "test": []}
    for index, document in enumerate(documents):
        split = {8: "valid", 9: "test"}.get(index % 10, "train")
        for line in common.read_lines(document):
            if line.strip():
                splits[split].append(" ".join(token.rsplit("/", 1)[0] for token in line.split()))
    for split, lines in splits.items():
        common.write_lines(raw_dir / pattern.format(split=split), lines)


DATASET = pipeline.Dataset(
    name="lm",
    sides=(SIDE,),
    read=read,
    raw_files="{train,valid[,test]}.txt, one sentence a line (see --pattern)",
    urls=(BROWN_URL,),
    vocab_size=8000,
    max_len=1024,
)


def main(argv=None) -> None:
    parser = pipeline.parser(DATASET, __doc__)
    parser.add_argument("--pattern", default="{split}.txt", help="raw file names, with {split} for train/valid/test")
    pipeline.main(DATASET, parser, argv)


if __name__ == "__main__":
    main()
