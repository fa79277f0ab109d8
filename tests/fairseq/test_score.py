"""The scoring command: fairseq-generate parsing, one-line errors, and agreement with fairseq's own BLEU."""
import json
import subprocess
import sys

import pytest

from difftext.evaluation import compound_split, tokenized_bleu
from fairseq_plugins.score import main, parse_generate, run
from tests.fairseq.cli_helpers import ROOT

# Lines in batch order (id 1 before id 0), two hypotheses per id (--nbest 2), one empty hypothesis.
GENERATE = (
    "S-1\tein hund\nT-1\tthe dog runs on the grass\n"
    "H-1\t-0.5\tthe dog runs on grass\nD-1\t-0.5\tthe dog runs on grass\nP-1\t-0.1 -0.2\n"
    "H-1\t-0.7\ta dog runs on the grass\nD-1\t-0.7\ta dog runs on the grass\n"
    "T-0\ttwo men play football\nH-0\t-0.2\t\nD-0\t-0.2\t\nH-0\t-0.3\ttwo men play soccer\n"
    "D-0\t-0.3\ttwo men play soccer\nGenerate test with beam=1: BLEU = 1.0\n"
)


def test_parse_generate_orders_by_id_and_groups_nbest():
    ids, groups, targets = parse_generate(GENERATE)
    assert ids == [0, 1]
    assert groups == [["", "two men play soccer"], ["the dog runs on grass", "a dog runs on the grass"]]
    assert targets == {0: "two men play football", 1: "the dog runs on the grass"}


def test_cli_reports_empty_hypotheses_and_diversity(tmp_path, capsys):
    gen = tmp_path / "gen.txt"
    gen.write_text(GENERATE)
    res = run(["--generate", str(gen), "--json", str(tmp_path / "s.json")])
    assert res["sentences"] == 2 and res["empty_hypotheses"] == 1
    assert res["diversity"]["inputs_with_several_candidates"] == 2
    assert json.loads((tmp_path / "s.json").read_text())["sacrebleu"]["signature"].startswith("nrefs:1")
    assert "empty_hypotheses" in capsys.readouterr().out


def test_cli_plain_files_with_nbest_and_raw_reference(tmp_path):
    (tmp_path / "hyp").write_text("a b c\na b d\n\nx y\n")
    (tmp_path / "ref").write_text("a b c\nx y\n")
    res = run(["--hyp", str(tmp_path / "hyp"), "--ref", str(tmp_path / "ref"), "--nbest", "2", "--json", "-"])
    assert res["sentences"] == 2 and res["empty_hypotheses"] == 1 and res["candidates_per_input"] == 2
    gen = tmp_path / "gen.txt"
    gen.write_text(GENERATE)
    (tmp_path / "raw").write_text("Two men play football.\nThe dog runs on the grass.\n")
    raw = run(["--generate", str(gen), "--ref", str(tmp_path / "raw"), "--metrics", "sacrebleu"])
    assert set(raw) == {"sentences", "empty_hypotheses", "candidates_per_input", "sacrebleu"}


@pytest.mark.parametrize("hyp_lines, nbest", [("a\nb\nc\n", 1), ("a\nb\n", 2)])
def test_count_mismatch_is_one_line_naming_both_files(tmp_path, hyp_lines, nbest):
    (tmp_path / "hyp.txt").write_text(hyp_lines)
    (tmp_path / "ref.txt").write_text("a\nb\n")
    with pytest.raises(SystemExit) as exc:
        main(["--hyp", str(tmp_path / "hyp.txt"), "--ref", str(tmp_path / "ref.txt"), "--nbest", str(nbest)])
    message = str(exc.value.code)
    assert message.startswith("difftext-score: error: ") and "\n" not in message
    assert "hyp.txt has" in message and "ref.txt has 2" in message


def test_module_entry_point_prints_json(tmp_path):
    gen = tmp_path / "gen.txt"
    gen.write_text(GENERATE)
    proc = subprocess.run([sys.executable, "-m", "fairseq_plugins.score", "--generate", str(gen), "--json", "-",
                           "--compound-split"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["tokenized_bleu"]["signature"].endswith("compound-split")
    with pytest.raises(SystemExit, match=r"^difftext-score: error: .*nope not found$"):
        main(["--generate", str(tmp_path / "nope")])


def test_tokenized_bleu_equals_fairseq_score():
    """fairseq-score's computation (fairseq.scoring.bleu on dictionary-encoded whitespace tokens)."""
    from fairseq.data import Dictionary
    from fairseq.scoring import bleu

    hyps = ["the cat sat on the mat .", "a well-known dog runs", "there is nothing here", "x y z"]
    refs = ["the cat is on the mat .", "a well-known dog is running fast", "nothing is there", "x y z w"]
    for split in (False, True):
        d = Dictionary()
        scorer = bleu.Scorer(bleu.BleuConfig(pad=d.pad(), eos=d.eos(), unk=d.unk()))
        for h, r in zip(hyps, refs):
            if split:
                h, r = compound_split(h), compound_split(r)
            scorer.add(d.encode_line(r, add_if_not_exist=True), d.encode_line(h, add_if_not_exist=True))
        assert tokenized_bleu(hyps, refs, split_compounds=split)["score"] == pytest.approx(scorer.score(), abs=1e-6)
