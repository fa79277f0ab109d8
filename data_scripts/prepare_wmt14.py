"""Prepare WMT14 En-De with fairseq's split (``prepare-wmt14en2de.sh``) and a joint SentencePiece vocabulary.

    python data_scripts/prepare_wmt14.py --raw-dir wmt14_en_de --out-dir data-bin/wmt14_en_de

``--raw-dir`` holds the official archives unpacked (``--download`` fetches them from statmt.org): Europarl v7
(``training/europarl-v7.de-en.{en,de}``), Common Crawl (``commoncrawl.de-en.{en,de}``), News Commentary
(``training/news-commentary-v12.de-en.*``, fairseq's default, or ``--news-commentary v9``, the WMT14 release that
fairseq's ``--icml17`` uses) and ``test-full/newstest2014-deen-{src.en,ref.de}.sgm``. Files are found in any
subfolder. As in fairseq's script:

- train: the three corpora concatenated, filtered like ``clean-corpus-n.perl -ratio 1.5 ... 1 250`` on Moses token
  counts (exact with sacremoses installed; the manifest says which counter ran);
- valid: every 100th line of that filtered train, held out of train;
- test: newstest2014 (3003 sentences, the full version), ``<seg>`` lines, ’ written as '.

The text stays cased and untokenized (SentencePiece reads it raw); score with sacreBLEU on detokenized output
against ``raw/test.de`` (``-tok intl`` for German, REFERENCES.md section 7); for fairseq's tokenized BLEU with
compound splitting, tokenize both sides with Moses first.
"""

from __future__ import annotations

try:
    from . import common, pipeline, readers
except ImportError:
    import common
    import pipeline
    import readers

LANGS = ("en", "de")
CORPORA = ("europarl-v7.de-en", "commoncrawl.de-en", "news-commentary-{nc}.de-en")
TEST = {"en": "newstest2014-deen-src.en.sgm", "de": "newstest2014-deen-ref.de.sgm"}
CLEAN_RATIO, CLEAN_MAX_LEN, VALID_EVERY = 1.5, 250, 100


def read(args) -> pipeline.Corpus:
    corpora = {name.format(nc=args.news_commentary): (name.format(nc=args.news_commentary),) for name in CORPORA}
    train, per_file = readers.read_corpora(args.raw_dir, corpora, LANGS)
    en, de, clean = readers.moses_clean(train["en"], train["de"], LANGS, ratio=CLEAN_RATIO, max_len=CLEAN_MAX_LEN)
    lines = {"train": {}, "valid": {}}
    for lang, kept in (("en", en), ("de", de)):
        lines["train"][lang], lines["valid"][lang] = readers.hold_out(kept, VALID_EVERY)
    lines["test"] = {lang: readers.read_segs(common.find_raw_file(args.raw_dir, TEST[lang])) for lang in LANGS}
    stats = {
        "train": {"corpora": per_file, "clean_corpus_n": clean},
        "valid": {"held_out_every": VALID_EVERY, "held_out_of": "the filtered training corpora"},
        "test": {"files": TEST},
    }
    return pipeline.Corpus(lines, stats)


DATASET = pipeline.Dataset(
    name="wmt14_en_de",
    sides=LANGS,
    read=read,
    raw_files="the unpacked WMT14 En-De archives (Europarl v7, Common Crawl, News Commentary, test-full)",
    urls=(
        "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz",
        "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz",
        "http://data.statmt.org/wmt17/translation-task/training-parallel-nc-v12.tgz",
        "http://statmt.org/wmt14/training-parallel-nc-v9.tgz",
        "http://statmt.org/wmt14/test-full.tgz",
    ),
    vocab_size=40000,
)


def main(argv=None) -> None:
    parser = pipeline.parser(DATASET, __doc__)
    parser.add_argument("--news-commentary", choices=("v12", "v9"), default="v12",
                        help="News Commentary release (v12: fairseq's default; v9: WMT14's, fairseq's --icml17)")
    pipeline.main(DATASET, parser, argv)


if __name__ == "__main__":
    main()
