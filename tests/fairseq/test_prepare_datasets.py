"""The data scripts of ``data_scripts/`` through their real CLIs, on small slices of the real corpora in
``../shared/data`` laid out as the official releases are (IWSLT14 with the real official XML dev/test files)."""
import hashlib
import html
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fairseq.cli_helpers import SHARED
from tests.fairseq.test_prepare_data import idx_length, spm_normalized

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "data_scripts"
IWSLT_XML = SHARED / "iwslt14_de_en" / "orig_xml"
IWSLT_TEST = {"TED.dev2010": 887, "TEDX.dev2012": 1165, "TED.tst2010": 1565, "TED.tst2011": 1433, "TED.tst2012": 1700}
HEADER = ["<url>http://www.ted.com/talks/talk{i}.html</url>", "<keywords>talks, science</keywords>",
          "<speaker>Speaker {i}</speaker>", "<talkid>{i}</talkid>", "<title>Title {i}</title>",
          "<description>Description of talk {i}</description>", '<reviewer href="r">Reviewer</reviewer>',
          '<translator href="t">Translator</translator>']

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is only on the development machines")


def load(name):
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(f"data_scripts_{name}", SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


common, readers = load("common"), load("readers")


def run_script(script, *args):
    proc = subprocess.run([sys.executable, str(SCRIPTS / script), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    return proc


def prepared(script, raw, out, *args):
    proc = run_script(script, "--raw-dir", raw, "--out-dir", out, "--workers", "1", *args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc, json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def head(path, n, start=0):
    return path.read_text(encoding="utf-8").splitlines()[start:start + n]


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_binarized(out, manifest, files):
    """Every split's tok file, .idx and manifest count agree; the dictionary entry matches the files."""
    for split, stats in manifest["splits"].items():
        for tok, idx in files(split):
            assert len(common.read_lines(out / "tok" / tok)) == stats["lines_out"] == idx_length(out / idx)
        assert stats["lines_in"] == stats["lines_out"] + sum(stats.get("dropped", {}).values())
    entry = manifest["dictionary"]
    for name in entry["files"]:
        assert sha(out / name) == entry["sha256"]
        assert entry["size"] == len(common.read_lines(out / name)) + 4
    assert manifest["sentencepiece"]["sha256"] == sha(out / "spm.model")


def check_round_trip(out, split, side, n=200):
    """The pieces decode back to the raw text (as SentencePiece normalizes it)."""
    raw = common.read_lines(out / "raw" / f"{split}.{side}")
    tok = common.read_lines(out / "tok" / f"{split}.{side}")
    assert len(raw) == len(tok)
    for raw_line, tok_line in list(zip(raw, tok))[:n]:
        assert common.decode_pieces(tok_line) == spm_normalized(raw_line)


def pair_files(src, tgt):
    return lambda split: [(f"{split}.{lang}", f"{split}.{src}-{tgt}.{lang}.idx") for lang in (src, tgt)]


# ----------------------------------------------------------------------------------------------
# IWSLT14 De-En: a fake train.tags in the official format + the real official XML dev/test files


def fake_iwslt_raw(raw, talks=3, per_talk=100):
    """train.tags.de-en.{de,en}: talks of `per_talk` lines of the real IWSLT14 text, each after its XML header."""
    content = {}
    for lang in ("de", "en"):
        text = [html.unescape(x) for x in head(SHARED / "iwslt14_de_en" / f"valid.{lang}", talks * per_talk)]
        lines, content[lang] = [], []
        for i in range(talks):
            lines += [h.format(i=i) for h in HEADER] + text[i * per_talk:(i + 1) * per_talk]
            content[lang] += [f"Title {i}", f"Description of talk {i}"] + text[i * per_talk:(i + 1) * per_talk]
        write(raw / f"train.tags.de-en.{lang}", lines)
    for xml in IWSLT_XML.glob("*.xml"):
        shutil.copyfile(xml, raw / xml.name)
    return content


@pytest.fixture(scope="module")
def iwslt(tmp_path_factory):
    raw = tmp_path_factory.mktemp("iwslt_raw")
    content = fake_iwslt_raw(raw)
    out = tmp_path_factory.mktemp("iwslt") / "bin"
    proc, manifest = prepared("prepare_iwslt14.py", raw, out, "--vocab-size", "500")
    return out, proc, manifest, content


def test_iwslt_standard_split_counts(iwslt):
    out, proc, manifest, content = iwslt
    splits = manifest["splits"]
    assert splits["train"]["header_lines_dropped"] == {"de": 18, "en": 18}  # 6 of the 8 header lines, 3 talks
    clean = splits["train"]["clean_corpus_n"]
    assert clean["lines_in"] == 306 and (clean["ratio"], clean["max_len"]) == (1.5, 175)
    de, en, _ = readers.moses_clean(content["de"], content["en"], ("de", "en"), ratio=1.5, max_len=175)
    assert clean["lines_out"] == len(en) < 306
    assert splits["valid"]["lines_in"] == splits["valid"]["lines_out"] == len(en) // 23
    assert splits["train"]["lines_raw"] == len(en) - len(en) // 23
    assert common.read_lines(out / "raw" / "valid.en") == [x.lower() for x in en[22::23]]
    assert common.read_lines(out / "raw" / "valid.de") == [x.lower() for x in de[22::23]]
    assert splits["test"]["lines_in"] == splits["test"]["lines_out"] == sum(IWSLT_TEST.values()) == 6750
    assert manifest["dictionary"]["size"] == 504 and manifest["sentencepiece"]["vocab_size"] == 500
    check_binarized(out, manifest, pair_files("de", "en"))
    assert "clean train: kept" in proc.stdout


def test_iwslt_headers_dropped_text_kept_lowercased(iwslt):
    out = iwslt[0]
    train = "\n".join(common.read_lines(out / "raw" / "train.en") + common.read_lines(out / "raw" / "valid.en"))
    for fragment in ("<", "http://", "speaker 0", "reviewer", "translator", "talks, science"):
        assert fragment not in train
    assert "title 1" in train and "description of talk 2" in train
    assert train == train.lower()


def test_iwslt_test_is_the_official_xml_in_fairseq_order(iwslt):
    out, _, manifest, _ = iwslt
    test = {lang: common.read_lines(out / "raw" / f"test.{lang}") for lang in ("de", "en")}
    start = 0
    for name, n in IWSLT_TEST.items():
        for lang in ("de", "en"):
            segs = readers.read_segs(IWSLT_XML / f"IWSLT14.{name}.de-en.{lang}.xml")
            assert len(segs) == n == manifest["splits"]["test"]["files"][f"IWSLT14.{name}.de-en.{lang}.xml"]
            assert test[lang][start:start + n] == [s.lower() for s in segs]
        start += n
    text = "\n".join(test["en"])
    assert "&amp;" not in text and " & " in text  # entities decoded (tst2010 has &amp;)
    assert "\u2019" not in text  # TEDX.dev2012 writes ’, fairseq's script writes '
    check_round_trip(out, "test", "en")
    check_round_trip(out, "test", "de")


# ----------------------------------------------------------------------------------------------
# Gigaword, QQP (DiffuSeq jsonl), Brown (LM)


@pytest.fixture(scope="module")
def gigaword(tmp_path_factory):
    raw, giga = tmp_path_factory.mktemp("giga_raw"), SHARED / "gigaword"
    for side in ("article", "title"):
        write(raw / f"train.{side}.txt", head(giga / f"train.{side}.txt", 1500))
        shutil.copyfile(giga / f"valid.{side}.txt", raw / f"valid.{side}.txt")
    write(raw / "Giga" / "input.txt", head(giga / "train.article.txt", 200, start=9000))  # the release's test layout
    write(raw / "Giga" / "task1_ref0.txt", head(giga / "train.title.txt", 200, start=9000))
    out = tmp_path_factory.mktemp("giga") / "bin"
    return raw, out, *prepared("prepare_gigaword.py", raw, out, "--vocab-size", "600")


def test_gigaword_counts_and_unk_convention(gigaword):
    raw, out, _, manifest = gigaword
    splits = manifest["splits"]
    assert [splits[s]["lines_in"] for s in ("train", "valid", "test")] == [1500, 500, 200]
    assert splits["test"]["files"] == {"src": "Giga/input.txt", "tgt": "Giga/task1_ref0.txt"}
    assert splits["train"]["dropped"]["ratio"] == 0 and manifest["cleaning"]["max_ratio"] is None
    for split, (src, tgt) in {"train": ("train.article.txt", "train.title.txt"),
                              "test": ("Giga/input.txt", "Giga/task1_ref0.txt")}.items():
        expected = {side: (raw / name).read_text(encoding="utf-8").split().count("<unk>")
                    for side, name in (("src", src), ("tgt", tgt))}
        assert splits[split]["unk_tokens"] == expected and expected["src"] > 0
        assert "<unk>" not in (out / "raw" / f"{split}.src").read_text(encoding="utf-8")
    # UNK is one piece, in the dictionary, and decodes back
    tok = (out / "tok" / "test.src").read_text(encoding="utf-8").split()
    assert tok.count("UNK") == splits["test"]["unk_tokens"]["src"]
    assert any(line.startswith("UNK ") for line in common.read_lines(out / "dict.src.txt"))
    assert manifest["sentencepiece"]["user_defined_symbols"] == ["UNK"]
    check_binarized(out, manifest, pair_files("src", "tgt"))
    check_round_trip(out, "test", "tgt")


@pytest.fixture(scope="module")
def qqp(tmp_path_factory):
    raw, lines = tmp_path_factory.mktemp("qqp_raw"), head(SHARED / "qqp" / "valid.jsonl", 2048)
    write(raw / "train.jsonl", lines[:1500])
    write(raw / "valid.jsonl", lines[1500:1650] + [""] + lines[1650:1800])  # one blank line
    (raw / "test.jsonl").write_text("\n".join(lines[1800:]), encoding="utf-8")  # no final newline, as shipped
    out = tmp_path_factory.mktemp("qqp") / "bin"
    return lines, out, *prepared("prepare_jsonl.py", raw, out, "--vocab-size", "500")


def test_qqp_jsonl_counts_and_round_trip(qqp):
    lines, out, _, manifest = qqp
    splits = manifest["splits"]
    assert [splits[s]["lines_in"] for s in ("train", "valid", "test")] == [1500, 300, 248]
    assert splits["valid"]["blank_lines_skipped"] == 1
    assert (manifest["src"], manifest["tgt"]) == ("src", "tgt")
    records = [json.loads(x) for x in lines[1800:]]
    assert common.read_lines(out / "raw" / "test.tgt") == [" ".join(r["trg"].split()) for r in records]
    check_binarized(out, manifest, pair_files("src", "tgt"))
    check_round_trip(out, "test", "src")
    check_round_trip(out, "train", "tgt")


@pytest.fixture(scope="module")
def brown(tmp_path_factory):
    raw = tmp_path_factory.mktemp("brown_raw")
    write(raw / "brown.train.txt", head(SHARED / "brown" / "brown.train.txt", 2000) + [""])  # one empty line
    write(raw / "brown.valid.txt", head(SHARED / "brown" / "brown.valid.txt", 300))
    out = tmp_path_factory.mktemp("brown") / "bin"
    return out, *prepared("prepare_lm.py", raw, out, "--pattern", "brown.{split}.txt", "--vocab-size", "400")


def test_lm_only_source_layout_for_fairseq_language_modeling(brown):
    from fairseq.data import Dictionary, data_utils

    out, proc, manifest = brown
    splits = manifest["splits"]
    assert splits["train"]["lines_in"] == 2001 and splits["train"]["dropped"]["empty"] == 1
    assert splits["train"]["lines_out"] == 2000 and splits["valid"]["lines_out"] == 300 and "test" not in splits
    assert "--only-source" in manifest["commands"][-1] and "note: no" in proc.stdout
    assert manifest["dictionary"]["files"] == ["dict.txt"] and manifest["dictionary"]["size"] == 408
    check_binarized(out, manifest, lambda split: [(f"{split}.txt", f"{split}.idx")])
    check_round_trip(out, "valid", "txt")
    # what fairseq's language_modeling task does: dict.txt, then {data}/{split} through load_indexed_dataset
    dictionary = Dictionary.load(str(out / "dict.txt"))
    dataset = data_utils.load_indexed_dataset(str(out / "valid"), dictionary)
    tok = common.read_lines(out / "tok" / "valid.txt")
    assert len(dictionary) == manifest["dictionary"]["size"] and len(dataset) == len(tok) == 300
    assert [dictionary.string(dataset[i]) for i in range(0, 300, 30)] == tok[::30]


def test_manifest_check_binds_lm_task(brown):
    from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

    from fairseq_plugins.errors import DifftextError
    from fairseq_plugins.manifest import bind_data_manifest

    out, _, manifest = brown
    task = LanguageModelingTask.setup_task(LanguageModelingConfig(data=str(out)))
    fingerprint = bind_data_manifest(task, str(out))
    assert fingerprint["dictionaries"]["dictionary"] == {"file": "dict.txt", "size": 408,
                                                         "sha256": manifest["dictionary"]["sha256"]}
    assert task.state_dict()["data_manifest"] == fingerprint
    task.load_state_dict({"data_manifest": fingerprint})  # a checkpoint of the same data loads
    other = json.loads(json.dumps(fingerprint))
    other["dictionaries"]["dictionary"].update(sha256="0" * 64, size=400)
    with pytest.raises(DifftextError, match=r"dictionary of 400 types .* but .* has 408 .*pass the data-bin"):
        task.load_state_dict({"data_manifest": other})


# ----------------------------------------------------------------------------------------------
# WMT14 En-De and WMT16 En-Ro: the official layouts, filled with small real text


def multi30k(lang, n, start=0):
    return head(SHARED / "multi30k" / f"train.{lang}", n, start)


def test_wmt14_layout_split_and_counts(tmp_path):
    raw = tmp_path / "raw"
    corpora = ("training/europarl-v7.de-en", "commoncrawl.de-en", "training/news-commentary-v12.de-en")
    for i, corpus in enumerate(corpora):
        for lang in ("en", "de"):
            write(raw / f"{corpus}.{lang}", multi30k(lang, 300, 300 * i))
    (raw / "test-full").mkdir()
    shutil.copyfile(IWSLT_XML / "IWSLT14.TED.dev2010.de-en.en.xml", raw / "test-full" / "newstest2014-deen-src.en.sgm")
    shutil.copyfile(IWSLT_XML / "IWSLT14.TED.dev2010.de-en.de.xml", raw / "test-full" / "newstest2014-deen-ref.de.sgm")
    out = tmp_path / "bin"
    _, manifest = prepared("prepare_wmt14.py", raw, out, "--vocab-size", "500")
    splits = manifest["splits"]
    assert splits["train"]["corpora"] == {"europarl-v7.de-en": 300, "commoncrawl.de-en": 300,
                                          "news-commentary-v12.de-en": 300}
    kept = splits["train"]["clean_corpus_n"]["lines_out"]
    assert splits["train"]["clean_corpus_n"]["lines_in"] == 900 and 800 < kept <= 900
    assert splits["valid"]["lines_out"] == kept // 100 and splits["train"]["lines_raw"] == kept - kept // 100
    assert splits["test"]["lines_out"] == 887 and (manifest["src"], manifest["tgt"]) == ("en", "de")
    check_binarized(out, manifest, pair_files("en", "de"))


def test_wmt16_layout_and_romanian_diacritics(tmp_path):
    raw = tmp_path / "raw"
    ro = multi30k("de", 400)
    ro[0] = "Şi ţara, în câmpul său, are ştiinţă şi îndrăzneală."
    write(raw / "europarl-v8.ro-en.en", multi30k("en", 200))
    write(raw / "europarl-v8.ro-en.ro", ro[:200])
    write(raw / "setimes" / "SETIMES.en-ro.en", multi30k("en", 200, 200))
    write(raw / "setimes" / "SETIMES.en-ro.ro", ro[200:])
    for split, name, xml in (("dev", "newsdev2016", "tst2010"), ("test", "newstest2016", "tst2011")):
        (raw / split).mkdir()
        shutil.copyfile(IWSLT_XML / f"IWSLT14.TED.{xml}.de-en.en.xml", raw / split / f"{name}-enro-src.en.sgm")
        shutil.copyfile(IWSLT_XML / f"IWSLT14.TED.{xml}.de-en.de.xml", raw / split / f"{name}-enro-ref.ro.sgm")
    out = tmp_path / "bin"
    _, manifest = prepared("prepare_wmt16.py", raw, out, "--vocab-size", "500")
    splits = manifest["splits"]
    assert splits["train"]["corpora"] == {"europarl-v8": 200, "setimes2": 200} and splits["train"]["lines_in"] == 400
    assert (splits["valid"]["lines_out"], splits["test"]["lines_out"]) == (1565, 1433)
    assert common.read_lines(out / "raw" / "train.ro")[0] == "Si tara, in campul sau, are stiinta si indrazneala."
    check_binarized(out, manifest, pair_files("en", "ro"))


# ----------------------------------------------------------------------------------------------
# errors a user can cause: one line naming the problem and the fix


def one_line(proc, *fragments):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_iwslt_missing_xml_file_is_named(tmp_path):
    fake_iwslt_raw(tmp_path, talks=1, per_talk=30)
    (tmp_path / "IWSLT14.TED.tst2011.de-en.en.xml").unlink()
    one_line(run_script("prepare_iwslt14.py", "--raw-dir", tmp_path, "--out-dir", tmp_path / "out"),
             "missing raw file", "IWSLT14.TED.tst2011.de-en.en.xml", "--raw-dir", "--download")


@pytest.mark.parametrize("bad, fragments", [
    ('{"src": "a b", "trg": "c"', ("train.jsonl line 2 is not JSON", '{"src": ..., "trg": ...}')),
    ('{"src": "a b", "target": "c"}', ("train.jsonl line 2 has no 'trg' field", "--src-key/--tgt-key")),
])
def test_jsonl_bad_line_is_named(tmp_path, bad, fragments):
    good = '{"src": "a b", "trg": "c d"}'
    write(tmp_path / "train.jsonl", [good, bad])
    one_line(run_script("prepare_jsonl.py", "--raw-dir", tmp_path, "--out-dir", tmp_path / "out"), *fragments)


def test_missing_raw_dir_offers_download_and_licensed_data_says_why(tmp_path):
    one_line(run_script("prepare_wmt16.py", "--raw-dir", tmp_path / "none", "--out-dir", tmp_path / "out"),
             "raw dir not found", str(tmp_path / "none"), "--download")
    proc = run_script("prepare_gigaword.py", "--raw-dir", tmp_path / "none", "--out-dir", tmp_path / "o", "--download")
    one_line(proc, "--download cannot fetch gigaword", "LDC", "--raw-dir")


def test_lm_pattern_without_split(tmp_path):
    one_line(run_script("prepare_lm.py", "--raw-dir", tmp_path, "--out-dir", tmp_path / "out", "--pattern", "x.txt"),
             "--pattern 'x.txt' has no {split}")


def test_download_fetches_and_unpacks(tmp_path):
    import tarfile

    write(tmp_path / "src" / "de-en" / "train.tags.de-en.en", ["<url>u</url>", "hello"])
    with tarfile.open(tmp_path / "de-en.tgz", "w:gz") as archive:
        archive.add(tmp_path / "src" / "de-en", arcname="de-en")
    raw = tmp_path / "raw"
    readers.download([(tmp_path / "de-en.tgz").as_uri()], raw)
    assert common.find_raw_file(raw, "train.tags.de-en.en") == raw / "de-en" / "train.tags.de-en.en"
    assert readers.talk_lines(raw / "de-en" / "train.tags.de-en.en") == (["hello"], 1)
