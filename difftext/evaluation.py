"""Evaluation metrics of text generation, each under the protocol its papers report (REFERENCES.md, sec. 7).

Numbers are comparable only within one protocol, so every metric here names its protocol:

- ``sacrebleu``: corpus BLEU on detokenized text with sacreBLEU's signature (``tok:13a``; ``intl`` for German
  targets, as WMT reports them).
- ``tokenized_bleu``: fairseq's "BLEU4" / ``fairseq-score`` / ``multi-bleu.perl`` on already tokenized text:
  whitespace tokens, no further tokenization, no smoothing (sacreBLEU with ``tokenize="none"``,
  ``smooth_method="none"``). ``compound_split`` applies the WMT14 En-De convention of fairseq's
  ``scripts/compound_split_bleu.sh`` (``a-b`` -> ``a ##AT##-##AT## b``) to both sides first.
- ``rouge``: ROUGE-1/2/L F1 with rouge-score, Porter stemming on, averaged over sentences (the Gigaword
  convention).
- ``diffuseq``: the protocol of DiffuSeq's ``scripts/eval_seq2seq.py``: NLTK ``sentence_bleu`` with
  ``SmoothingFunction().method4`` on whitespace tokens, averaged over sentences; ROUGE-L F1 averaged over
  sentences (DiffuSeq uses torchmetrics' ROUGEScore, a re-implementation of rouge-score without stemming: we
  call rouge-score itself with ``use_stemmer=False``); per-sentence distinct-1 averaged; mean of
  ``len(hyp.split(' '))``. NLTK rather than sacreBLEU's ``sentence_bleu`` because the protocol is defined by
  NLTK's smoothing method 4, which sacreBLEU does not implement. As in DiffuSeq's ``get_bleu``, the generated
  sentence is passed as NLTK's *reference* and the gold sentence as its *hypothesis* (so the brevity penalty
  applies when the gold sentence is shorter than the output); we keep that order so numbers match theirs.
- ``diversity``: self-BLEU among the candidates of one input (DiffuSeq's ``diversityOfSet``: mean DiffuSeq
  sentence BLEU over pairs i < j, averaged over inputs with at least two candidates; lower = more diverse),
  div-4 (distinct 4-grams among one input's candidates, averaged) and corpus distinct-n (Li et al. 2016:
  unique n-grams / all n-grams over every selected output).

BLEU and ROUGE are on the 0-100 scale; distinct-n and div-4 are fractions in [0, 1]. Empty outputs are
scored as empty strings (they count as wrong) and their number is reported, never dropped.
"""
from __future__ import annotations

import re
import warnings
from statistics import mean
from typing import Dict, List, Optional, Sequence

from sacrebleu.metrics import BLEU

PROTOCOLS = ("sacrebleu", "tokenized_bleu", "rouge", "diffuseq", "diversity", "length")
_COMPOUND = re.compile(r"(\S)-(\S)")


def compound_split(text: str) -> str:
    """WMT14 En-De compound splitting of fairseq's compound_split_bleu.sh: ``a-b`` -> ``a ##AT##-##AT## b``."""
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", text)


def sacrebleu_score(hyps: Sequence[str], refs: Sequence[str], *, tokenize: str = "13a") -> Dict:
    """Corpus sacreBLEU of detokenized text: {"score", "signature"}."""
    bleu = BLEU(tokenize=tokenize)
    return {"score": bleu.corpus_score(list(hyps), [list(refs)]).score, "signature": str(bleu.get_signature())}


def tokenized_bleu(hyps: Sequence[str], refs: Sequence[str], *, split_compounds: bool = False) -> Dict:
    """multi-bleu.perl / fairseq-score BLEU on tokenized text: {"score", "signature"}."""
    if split_compounds:
        hyps, refs = [compound_split(h) for h in hyps], [compound_split(r) for r in refs]
    bleu = BLEU(tokenize="none", smooth_method="none", force=True)
    score = bleu.corpus_score(list(hyps), [list(refs)]).score
    signature = str(bleu.get_signature()) + ("|compound-split" if split_compounds else "")
    return {"score": score, "signature": signature}


def rouge_f1(hyps: Sequence[str], refs: Sequence[str], *, stemmer: bool = True,
             types: Sequence[str] = ("rouge1", "rouge2", "rougeL")) -> Dict[str, float]:
    """Sentence-averaged ROUGE F1 (x100) for each type in ``types``."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(list(types), use_stemmer=stemmer)
    scores = [scorer.score(r, h) for h, r in zip(hyps, refs)]  # score(target, prediction)
    return {t: 100 * mean(s[t].fmeasure for s in scores) if scores else 0.0 for t in types}


def nltk_sentence_bleu(hyp: str, ref: str) -> float:
    """DiffuSeq's ``get_bleu`` (NLTK, smoothing method 4, generated sentence as NLTK's reference), in [0, 1]."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns on zero n-gram overlaps; the score is still defined
        return float(sentence_bleu([hyp.split()], ref.split(), smoothing_function=SmoothingFunction().method4))


def _ngrams(tokens: Sequence[str], n: int) -> List[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams over ``texts`` (whitespace tokens); 0 when there is none."""
    grams = [g for text in texts for g in _ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_tokens(texts: Sequence[str]) -> float:
    """Share of whitespace tokens equal to the token before them in the same text; 0 when there is none.

    The token repetition of non-autoregressive outputs ("a a man man"): positions predicted in parallel settle on
    the same word (Gu et al. 2018; Ghazvininejad et al. 2019 report it as the share of repeated tokens).
    """
    total = repeats = 0
    for text in texts:
        tokens = text.split()
        total += len(tokens)
        repeats += sum(a == b for a, b in zip(tokens, tokens[1:]))
    return repeats / total if total else 0.0


def diffuseq_protocol(hyps: Sequence[str], refs: Sequence[str]) -> Dict[str, float]:
    """DiffuSeq's eval_seq2seq.py numbers: sentence BLEU, ROUGE-L, dist-1 and length, averaged over sentences."""
    n = max(len(hyps), 1)
    return {
        "bleu": 100 * sum(nltk_sentence_bleu(h, r) for h, r in zip(hyps, refs)) / n,
        "rougeL": rouge_f1(hyps, refs, stemmer=False, types=("rougeL",))["rougeL"],
        "dist1": sum(distinct_n([h], 1) for h in hyps) / n,
        "avg_len": sum(len(h.split(" ")) for h in hyps) / n,
    }


def self_bleu(candidates: Sequence[str]) -> Optional[float]:
    """Mean DiffuSeq sentence BLEU (x100) over pairs i < j of one input's candidates; None for fewer than 2."""
    pairs = [(a, b) for i, a in enumerate(candidates) for b in candidates[i + 1:]]
    return 100 * mean(nltk_sentence_bleu(a, b) for a, b in pairs) if pairs else None


def diversity(groups: Sequence[Sequence[str]]) -> Dict[str, Optional[float]]:
    """Self-BLEU and div-4 among each input's candidates (first candidate = the selected output), plus
    corpus distinct-1..4 and the share of repeated tokens (:func:`repeated_tokens`) of the selected outputs.
    Self-BLEU/div-4 are None when no input has 2 candidates."""
    several = [g for g in groups if len(g) >= 2]
    out: Dict[str, Optional[float]] = {
        "self_bleu": mean(self_bleu(g) for g in several) if several else None,
        "div4": mean(distinct_n(g, 4) for g in several) if several else None,
        "inputs_with_several_candidates": len(several),
    }
    selected = [g[0] for g in groups]
    out.update({f"distinct_{n}": distinct_n(selected, n) for n in range(1, 5)})
    out["repeated_tokens"] = repeated_tokens(selected)
    return out


def length_stats(hyps: Sequence[str], refs: Sequence[str]) -> Dict[str, float]:
    """Mean whitespace-token length of outputs and references, and their ratio."""
    hyp_len = mean(len(h.split()) for h in hyps) if hyps else 0.0
    ref_len = mean(len(r.split()) for r in refs) if refs else 0.0
    return {"hyp_mean": hyp_len, "ref_mean": ref_len, "ratio": hyp_len / ref_len if ref_len else 0.0}


def evaluate(groups: Sequence[Sequence[str]], refs: Sequence[str], *, protocols: Sequence[str] = PROTOCOLS,
             tokenize: str = "13a", split_compounds: bool = False, rouge_stemmer: bool = True) -> Dict:
    """Score the selected output (``groups[i][0]``) of every input against ``refs[i]`` under ``protocols``.

    groups: per input, its candidate outputs (several when decoding returned an n-best list).
    """
    if len(groups) != len(refs):
        raise ValueError(f"{len(groups)} inputs with outputs but {len(refs)} references")
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; choose from {list(PROTOCOLS)}")
    hyps = [g[0] if g else "" for g in groups]
    out: Dict = {
        "sentences": len(hyps),
        "empty_hypotheses": sum(not h.strip() for h in hyps),
        "candidates_per_input": max((len(g) for g in groups), default=0),
    }
    if "sacrebleu" in protocols:
        out["sacrebleu"] = sacrebleu_score(hyps, refs, tokenize=tokenize)
    if "tokenized_bleu" in protocols:
        out["tokenized_bleu"] = tokenized_bleu(hyps, refs, split_compounds=split_compounds)
    if "rouge" in protocols:
        out["rouge"] = rouge_f1(hyps, refs, stemmer=rouge_stemmer)
    if "diffuseq" in protocols:
        out["diffuseq"] = diffuseq_protocol(hyps, refs)
    if "diversity" in protocols:
        out["diversity"] = diversity([list(g) if g else [""] for g in groups])
    if "length" in protocols:
        out["length"] = length_stats(hyps, refs)
    return out


def flatten(results: Dict) -> Dict[str, object]:
    """One level of ``{name: number}`` (signatures dropped): the columns of a sweep's CSV."""
    flat: Dict[str, object] = {}
    for key, value in results.items():
        if not isinstance(value, dict):
            flat[key] = value
            continue
        for sub, v in value.items():
            if sub == "signature":
                continue
            if sub == "score":
                flat[key] = v  # sacrebleu, tokenized_bleu
            elif key in ("diffuseq", "length"):
                flat[f"{key}_{sub}"] = v  # diffuseq_bleu, length_ratio, ...
            else:
                flat[sub] = v  # rouge1, self_bleu, distinct_2, ...
    return flat


def format_table(results: Dict) -> str:
    """A human-readable two-column table of :func:`evaluate`'s results, signatures underneath."""
    rows = [(k, v) for k, v in flatten(results).items()]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    for key, value in rows:
        shown = "n/a" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    for key in ("sacrebleu", "tokenized_bleu"):
        if key in results:
            lines.append(f"{key} signature: {results[key]['signature']}")
    return "\n".join(lines)
