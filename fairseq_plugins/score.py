"""Score fairseq-generate output or plain text files under every protocol of :mod:`difftext.evaluation`.

    python -m fairseq_plugins.score --generate gen.out                  # H-/D-/T- lines; T- are the references
    python -m fairseq_plugins.score --generate gen.out --ref test.raw.en # sacreBLEU against raw references
    python -m fairseq_plugins.score --hyp hyp.txt --ref ref.txt --tokenize intl       # German target
    python -m fairseq_plugins.score --generate gen.out --compound-split --json scores.json   # WMT14 En-De
    difftext-score ...                                                   # the same, as a console script

fairseq-generate prints its lines in batch order; they are put back in input order by id. With
``--nbest K`` it prints K hypotheses per input, the selected one first: the first is scored, all K feed
the diversity metrics (self-BLEU among one input's candidates). For plain files, ``--nbest K`` reads K
consecutive hypothesis lines per reference. The table goes to stdout; ``--json FILE`` (``-`` for stdout)
writes the full results with sacreBLEU's signatures.
"""
import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from difftext.evaluation import PROTOCOLS, evaluate, format_table

_LINE = re.compile(r"^([HDTS])-(\d+)\t(.*)$")


class ScoreError(Exception):
    """A user error: reported as one line, ``difftext-score: error: ...``."""


def parse_generate(text: str, field: str = "D") -> Tuple[List[int], List[List[str]], Dict[int, str]]:
    """fairseq-generate output -> (ids in order, hypotheses per id, target per id).

    field: "D" (detokenized, after --post-process/--bpe/--tokenizer) or "H" (before the tokenizer/BPE decoder).
    H/D lines are ``X-<id>\\t<score>\\t<text>`` (text may be empty); T lines are ``T-<id>\\t<text>``.
    """
    hyps: Dict[int, List[str]] = {}
    targets: Dict[int, str] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        kind, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == field:
            hyps.setdefault(idx, []).append(rest.split("\t", 1)[1] if "\t" in rest else "")
        elif kind == "T":
            targets[idx] = rest
    ids = sorted(hyps)
    return ids, [hyps[i] for i in ids], targets


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScoreError(f"{path} not found") from None


def _read_lines(path: Path) -> List[str]:
    """Lines split on "\\n" only (empty lines kept: they are empty hypotheses)."""
    lines = _read(path).split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def load_generate(path: Path, ref: Optional[Path], field: str) -> Tuple[List[List[str]], List[str]]:
    """Hypothesis groups and references of a fairseq-generate output file (references: --ref or T- lines)."""
    return groups_and_refs(_read(path), path, ref, field)


def groups_and_refs(text: str, path: Path, ref: Optional[Path], field: str) -> Tuple[List[List[str]], List[str]]:
    """Like :func:`load_generate` for output ``text`` already read (``path`` names it in errors)."""
    ids, groups, targets = parse_generate(text, field)
    if not ids:
        raise ScoreError(f"{path} has no {field}- lines; is it fairseq-generate output?")
    if ref is not None:
        refs = _read_lines(ref)
        if len(refs) != len(ids) or ids[-1] >= len(refs):
            raise ScoreError(f"{path} has hypotheses for {len(ids)} inputs but {ref} has {len(refs)} lines")
        return groups, [refs[i] for i in ids]
    missing = [i for i in ids if i not in targets]
    if missing:
        raise ScoreError(f"{path} has no T- line for {len(missing)} of {len(ids)} inputs; pass --ref FILE")
    return groups, [targets[i] for i in ids]


def load_plain(hyp: Path, ref: Path, nbest: int) -> Tuple[List[List[str]], List[str]]:
    """Hypothesis groups (``nbest`` consecutive lines each) and references of two plain text files."""
    hyps, refs = _read_lines(hyp), _read_lines(ref)
    if len(hyps) != nbest * len(refs):
        per = f" ({nbest} per reference)" if nbest > 1 else ""
        raise ScoreError(f"{hyp} has {len(hyps)} lines but {ref} has {len(refs)}{per}")
    return [hyps[i * nbest:(i + 1) * nbest] for i in range(len(refs))], refs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="difftext-score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--generate", type=Path, help="fairseq-generate output (its stdout, or generate-<subset>.txt)")
    src.add_argument("--hyp", type=Path, help="plain hypothesis file, one line per reference (see --nbest)")
    parser.add_argument("--ref", type=Path, help="reference file (required with --hyp; with --generate it "
                        "replaces the T- lines, e.g. the raw untokenized references for sacreBLEU)")
    parser.add_argument("--hyp-field", choices=["D", "H"], default="D", help="which fairseq-generate line is "
                        "the hypothesis: D (detokenized, default) or H")
    parser.add_argument("--nbest", type=int, default=1, help="with --hyp: consecutive lines per reference")
    parser.add_argument("--tokenize", default="13a", help="sacreBLEU tokenizer: 13a (default), intl (German "
                        "targets, as WMT), zh, ja-mecab, char, none ...")
    parser.add_argument("--compound-split", action="store_true", help="tokenized BLEU with WMT14 En-De compound "
                        "splitting (##AT##-##AT##), as fairseq's compound_split_bleu.sh")
    parser.add_argument("--no-rouge-stemmer", action="store_true", help="ROUGE without Porter stemming")
    parser.add_argument("--metrics", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS),
                        help="protocols to compute (default: all)")
    parser.add_argument("--json", help="write the results as JSON to this file ('-': stdout, instead of the table)")
    return parser


def score(args: argparse.Namespace) -> Dict:
    if args.nbest < 1:
        raise ScoreError(f"--nbest must be >= 1 (got {args.nbest})")
    if args.generate is not None:
        groups, refs = load_generate(args.generate, args.ref, args.hyp_field)
    else:
        if args.ref is None:
            raise ScoreError("--hyp needs --ref")
        groups, refs = load_plain(args.hyp, args.ref, args.nbest)
    try:
        return evaluate(groups, refs, protocols=args.metrics, tokenize=args.tokenize,
                        split_compounds=args.compound_split, rouge_stemmer=not args.no_rouge_stemmer)
    except (ValueError, KeyError) as err:  # e.g. an unknown sacreBLEU tokenizer
        raise ScoreError(f"{err}") from None


def run(argv=None) -> Dict:
    """The command line: print the table (or JSON) and return the results."""
    args = build_parser().parse_args(argv)
    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs each tokenizer it builds
    try:
        results = score(args)
    except ScoreError as err:
        sys.exit(f"difftext-score: error: {err}")
    if args.json == "-":
        print(json.dumps(results, indent=2))
    else:
        print(format_table(results))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def main(argv=None) -> None:
    """Console-script entry point (``difftext-score``)."""
    run(argv)


if __name__ == "__main__":
    main()
