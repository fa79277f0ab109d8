"""Prepare WMT16 En-Ro (the split of the non-autoregressive literature) with a joint SentencePiece vocabulary.

    python data_scripts/prepare_wmt16.py --raw-dir wmt16_en_ro --out-dir data-bin/wmt16_en_ro

``--raw-dir`` holds the official files unpacked (``--download`` fetches them from statmt.org and OPUS), found in
any subfolder:

- train: Europarl v8 (``europarl-v8.ro-en.{en,ro}``) + SETimes2 (``SETIMES.en-ro.{en,ro}``, OPUS's moses format;
  older copies name it ``SETIMES2.en-ro.*``), concatenated;
- valid: newsdev2016 (``newsdev2016-enro-src.en.sgm``, ``newsdev2016-enro-ref.ro.sgm``);
- test: newstest2016 (``newstest2016-enro-src.en.sgm``, ``newstest2016-enro-ref.ro.sgm``, 1999 sentences).

Romanian text follows Sennrich et al.'s WMT16 scripts, as the data of Lee et al. (2018) and the NAT papers after
it: s/t with cedilla become the comma-below letters, then diacritics are removed (``--ro-diacritics remove``, the
default, applied to every split so the references match; ``normalize`` stops after the first step, ``keep``
leaves the text alone). Text stays cased and untokenized; score with sacreBLEU against ``raw/test.ro``.
Training pairs are filtered in pieces (``--max-len``, ``--max-ratio``); valid and test are kept whole.
"""

from __future__ import annotations

try:
    from . import common, pipeline, readers
except ImportError:
    import common
    import pipeline
    import readers

LANGS = ("en", "ro")
CORPORA = {"europarl-v8": ("europarl-v8.ro-en",), "setimes2": ("SETIMES.en-ro", "SETIMES2.en-ro")}
EVAL = {"valid": "newsdev2016-enro", "test": "newstest2016-enro"}
COMMA_BELOW = str.maketrans({"\u015e": "\u0218", "\u015f": "\u0219", "\u0162": "\u021a", "\u0163": "\u021b"})
NO_DIACRITICS = str.maketrans("\u0218\u0219\u021a\u021b\u0102\u0103\u00c2\u00e2\u00ce\u00ee", "SsTtAaAaIi")


def romanian(lines: list[str], mode: str) -> list[str]:
    """Sennrich's normalise-romanian (cedilla -> comma below) and remove-diacritics, as ``mode`` asks."""
    if mode == "keep":
        return lines
    lines = [line.translate(COMMA_BELOW) for line in lines]
    return lines if mode == "normalize" else [line.translate(NO_DIACRITICS) for line in lines]


def read(args) -> pipeline.Corpus:
    train, per_file = readers.read_corpora(args.raw_dir, CORPORA, LANGS)
    lines = {"train": train}
    for split, stem in EVAL.items():
        lines[split] = {"en": readers.read_segs(common.find_raw_file(args.raw_dir, f"{stem}-src.en.sgm")),
                        "ro": readers.read_segs(common.find_raw_file(args.raw_dir, f"{stem}-ref.ro.sgm"))}
    for split in lines:
        lines[split]["ro"] = romanian(lines[split]["ro"], args.ro_diacritics)
    stats = {"train": {"corpora": per_file}, **{split: {"file_stem": stem} for split, stem in EVAL.items()}}
    stats["train"]["ro_diacritics"] = args.ro_diacritics
    return pipeline.Corpus(lines, stats)


DATASET = pipeline.Dataset(
    name="wmt16_en_ro",
    sides=LANGS,
    read=read,
    raw_files="the unpacked WMT16 En-Ro files (Europarl v8, SETimes2, newsdev2016, newstest2016)",
    urls=(
        "http://data.statmt.org/wmt16/translation-task/training-parallel-ep-v8.tgz",
        "https://object.pouta.csc.fi/OPUS-SETIMES/v2/moses/en-ro.txt.zip",
        "http://data.statmt.org/wmt16/translation-task/dev-romanian-updated.tgz",
        "http://data.statmt.org/wmt16/translation-task/test.tgz",
    ),
    vocab_size=40000,
)


def main(argv=None) -> None:
    parser = pipeline.parser(DATASET, __doc__)
    parser.add_argument("--ro-diacritics", choices=("remove", "normalize", "keep"), default="remove",
                        help="Romanian diacritics: Sennrich's normalisation then removal (default), only the "
                        "normalisation, or none")
    pipeline.main(DATASET, parser, argv)


if __name__ == "__main__":
    main()
