"""Prepare IWSLT14 De-En with fairseq's standard split and a joint SentencePiece vocabulary.

    python data_scripts/prepare_iwslt14.py --raw-dir orig/de-en --out-dir data-bin/iwslt14

``--raw-dir`` holds the official 2014-01 release (``de-en.tgz``, unpacked; ``--download`` fetches it):
``train.tags.de-en.{de,en}`` and ``IWSLT14.TED{,X}.*.de-en.{de,en}.xml``. The split is the one of fairseq's
``examples/translation/prepare-iwslt14.sh``, used by every IWSLT14 De-En number in REFERENCES.md:

- train: ``train.tags`` without its XML header lines (url, talkid, keywords, speaker, reviewer, translator, doc;
  the text of title and description is kept), filtered like ``clean-corpus-n.perl -ratio 1.5 ... 1 175`` on Moses
  token counts (exact with sacremoses installed, else a close regex count; the manifest says which);
- valid: every 23rd line of that filtered train (7283 pairs on the full data), held out of train;
- test: the ``<seg>`` lines of TED.dev2010, TEDX.dev2012, TED.tst2010, TED.tst2011, TED.tst2012 concatenated in
  that order (6750 pairs), entities decoded and ’ written as ', exactly as fairseq's script reads them.

Everything is lowercased as in fairseq's script (``--keep-case`` keeps the case). Unlike fairseq's script the
text is not Moses-tokenized: SentencePiece reads it raw, so ``raw/test.en`` is the reference for sacreBLEU on
detokenized output (REFERENCES.md section 7). Training pairs are then filtered in pieces (``--max-len``,
``--max-ratio``); valid and test are kept whole.
"""

from __future__ import annotations

try:
    from . import common, pipeline, readers
except ImportError:
    import common
    import pipeline
    import readers

LANGS = ("de", "en")
TEST_SETS = ("TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012")  # fairseq's order
CLEAN_RATIO, CLEAN_MAX_LEN, VALID_EVERY = 1.5, 175, 23


def read_train(args) -> tuple[dict, dict]:
    """Filtered train.tags lines per language, and what was dropped."""
    lines, headers = {}, {}
    for lang in LANGS:
        lines[lang], headers[lang] = readers.talk_lines(common.find_raw_file(args.raw_dir, f"train.tags.de-en.{lang}"))
    common.check_aligned("train.tags.de-en (without XML header lines)", lines)
    de, en, clean = readers.moses_clean(lines["de"], lines["en"], LANGS, ratio=CLEAN_RATIO, max_len=CLEAN_MAX_LEN)
    return {"de": de, "en": en}, {"header_lines_dropped": headers, "clean_corpus_n": clean}


def read_test(args) -> tuple[dict, dict]:
    """The concatenated official dev/test sets per language, and the lines of each file."""
    lines, per_file = {lang: [] for lang in LANGS}, {}
    for name in TEST_SETS:
        for lang in LANGS:
            segs = readers.read_segs(common.find_raw_file(args.raw_dir, f"IWSLT14.{name}.de-en.{lang}.xml"))
            lines[lang] += segs
            per_file[f"IWSLT14.{name}.de-en.{lang}.xml"] = len(segs)
    return lines, {"files": per_file}


def read(args) -> pipeline.Corpus:
    train, train_stats = read_train(args)
    test, test_stats = read_test(args)
    case = (lambda line: line) if args.keep_case else str.lower
    lines = {"train": {}, "valid": {}, "test": {}}
    for lang in LANGS:
        lines["train"][lang], lines["valid"][lang] = readers.hold_out([case(x) for x in train[lang]], VALID_EVERY)
        lines["test"][lang] = [case(x) for x in test[lang]]
    valid_stats = {"held_out_every": VALID_EVERY, "held_out_of": "the filtered train.tags lines"}
    return pipeline.Corpus(lines, {"train": train_stats, "valid": valid_stats, "test": test_stats})


DATASET = pipeline.Dataset(
    name="iwslt14",
    sides=LANGS,
    read=read,
    raw_files="train.tags.de-en.{de,en} and IWSLT14.TED{,X}.*.de-en.{de,en}.xml (the official de-en.tgz, unpacked)",
    urls=("https://wit3.fbk.eu/archive/2014-01/texts/de/en/de-en.tgz",),
    vocab_size=10000,
)


def main(argv=None) -> None:
    parser = pipeline.parser(DATASET, __doc__)
    parser.add_argument("--keep-case", action="store_true", help="do not lowercase (fairseq's split is lowercased)")
    pipeline.main(DATASET, parser, argv)


if __name__ == "__main__":
    main()
