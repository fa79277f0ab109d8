"""Evaluation protocols on hand-checkable examples (no fairseq)."""
import math
import shutil
import subprocess

import pytest

from difftext.evaluation import (
    compound_split,
    diffuseq_protocol,
    distinct_n,
    diversity,
    repeated_tokens,
    evaluate,
    flatten,
    format_table,
    rouge_f1,
    sacrebleu_score,
    self_bleu,
    tokenized_bleu,
)


def test_compound_split_matches_fairseq_perl_rule():
    text = "a-b c-d-e well-known --x 3-4"
    # Non-overlapping left-to-right matches, as perl's s{(\S)-(\S)}{...}g: "d-e" stays joined after "c-d".
    assert compound_split(text) == (
        "a ##AT##-##AT## b c ##AT##-##AT## d-e well ##AT##-##AT## known - ##AT##-##AT## x 3 ##AT##-##AT## 4")
    if shutil.which("perl"):
        perl = subprocess.run(["perl", "-ple", r"s{(\S)-(\S)}{$1 ##AT##-##AT## $2}g"], input=text + "\n",
                              capture_output=True, text=True, check=True).stdout.rstrip("\n")
        assert compound_split(text) == perl


def test_tokenized_bleu_is_unsmoothed_and_untokenized():
    assert tokenized_bleu(["a b c d"], ["a b c d"])["score"] == pytest.approx(100.0)
    # No 4-gram in common: multi-bleu.perl / fairseq-score give 0; sacreBLEU's default smoothing does not.
    hyp, ref = ["the cat sat on mat"], ["the cat is on the mat"]
    assert tokenized_bleu(hyp, ref)["score"] == 0.0
    assert sacrebleu_score(hyp, ref)["score"] > 0.0
    # "x,y" is one token for tokenized BLEU, three for 13a.
    hyp, ref = ["x,y z w v"], ["x , y z w v"]
    assert tokenized_bleu(hyp, ref)["score"] < sacrebleu_score(hyp, ref)["score"]
    sig = tokenized_bleu(["a-b"], ["a-b"], split_compounds=True)["signature"]
    assert "tok:none" in sig and "smooth:none" in sig and sig.endswith("compound-split")


def test_sacrebleu_signature_names_the_tokenizer():
    assert "tok:13a" in sacrebleu_score(["a b"], ["a b"])["signature"]
    assert "tok:intl" in sacrebleu_score(["a b"], ["a b"], tokenize="intl")["signature"]


def test_rouge_hand_values_and_stemming():
    # hyp "the cat sat" vs ref "the cat sat on the mat": R1 F = 2/3, R2: 2 of 2 hyp / 5 ref bigrams, F = 4/7.
    r = rouge_f1(["the cat sat"], ["the cat sat on the mat"])
    assert r["rouge1"] == pytest.approx(200 / 3) and r["rougeL"] == pytest.approx(200 / 3)
    assert r["rouge2"] == pytest.approx(400 / 7)
    assert rouge_f1(["cats running"], ["cat run"])["rouge1"] == pytest.approx(100.0)
    assert rouge_f1(["cats running"], ["cat run"], stemmer=False)["rouge1"] == 0.0


def test_diffuseq_bleu_keeps_its_argument_order():
    # DiffuSeq passes the output as NLTK's reference: a 6-token output against a 4-token gold prefix gets
    # all precisions 1 and brevity penalty exp(1 - 6/4).
    out = diffuseq_protocol(["a b c d e f"], ["a b c d"])
    assert out["bleu"] == pytest.approx(100 * math.exp(-0.5))
    assert out["avg_len"] == 6 and out["dist1"] == 1.0


def test_distinct_n_and_self_bleu():
    assert distinct_n(["a a b", "a b"], 1) == pytest.approx(2 / 5)
    assert distinct_n(["a a b", "a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n([""], 1) == 0.0
    assert self_bleu(["a b c d", "a b c d"]) == pytest.approx(100.0)
    assert self_bleu(["a b c d"]) is None
    div = diversity([["a b c d", "a b c d"], ["x y z w"]])
    assert div["inputs_with_several_candidates"] == 1 and div["self_bleu"] == pytest.approx(100.0)
    assert div["div4"] == pytest.approx(0.5)  # one distinct 4-gram of two
    assert diversity([["a"], ["b"]])["self_bleu"] is None


def test_repeated_tokens_counts_a_token_equal_to_the_one_before_it():
    # "a a man man on on on": 4 of 7 tokens repeat their predecessor; a repeat across two texts does not count
    assert repeated_tokens(["a a man man on on on"]) == pytest.approx(4 / 7)
    assert repeated_tokens(["the dog", "dog runs"]) == 0.0
    assert repeated_tokens(["a b a b", ""]) == 0.0 and repeated_tokens([]) == 0.0
    div = diversity([["x x y", "x y"], ["z"]])  # the selected outputs (first candidates) only: 1 of 4 tokens
    assert div["repeated_tokens"] == pytest.approx(1 / 4)


def test_evaluate_counts_empty_outputs_and_checks_counts():
    res = evaluate([["", "x"], ["two men play football"]], ["the dog runs", "two men play football"])
    assert res["sentences"] == 2 and res["empty_hypotheses"] == 1 and res["candidates_per_input"] == 2
    assert 0 < res["sacrebleu"]["score"] < 100 and res["length"]["hyp_mean"] == 2.0
    flat = flatten(res)
    assert {"sacrebleu", "tokenized_bleu", "rouge1", "rougeL", "diffuseq_bleu", "self_bleu", "distinct_2",
            "repeated_tokens", "length_ratio", "empty_hypotheses"} <= set(flat)
    table = format_table(res)
    assert "empty_hypotheses" in table and "sacrebleu signature: nrefs:1" in table
    with pytest.raises(ValueError, match="2 inputs with outputs but 3 references"):
        evaluate([["a"], ["b"]], ["a", "b", "c"])
    only = evaluate([["a b"]], ["a b"], protocols=["rouge"])
    assert set(only) == {"sentences", "empty_hypotheses", "candidates_per_input", "rouge"}
    assert "n/a" in format_table(evaluate([["a b"]], ["a b"], protocols=["diversity"]))
