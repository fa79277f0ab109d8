"""Decoding sweep: quality and speed of fairseq-generate over a grid of decoding settings, as CSV and plots.

    python -m fairseq_plugins.sweep data-bin/iwslt14 --path ck/checkpoint_avg.pt --out-dir sweeps/iwslt14 \\
        --steps 5 10 20 50 --length-beam 1 3 7 --noise-beam 1 3 --selection score mbr-bleu \\
        --ref data/iwslt14/raw/test.en --post-process sentencepiece --batch-size 128
    difftext-sweep ...   # the same, as a console script

The grid is steps x length beam x noise beam x selection. MBR points with a single candidate
(K x M = 1) are invalid and skipped (their number is reported). Each point runs ``fairseq-generate``
in a subprocess (so every point starts from the same state) with ``--nbest K*M``, and is scored by
:func:`difftext.evaluation.evaluate`: sacreBLEU against ``--ref`` (raw references) if given, else against
fairseq's own detokenized T- lines; diversity over the K x M candidates of each input. Any flag the sweep
does not know is passed to fairseq-generate unchanged (``--cpu``, ``--batch-size``, ``--clamping``,
``--decoding-noise-factor``, ``--post-process``, ``--seed`` ...).

Speed comes from fairseq's own timer ("Translated N sentences (T tokens) in S s"), which counts decoding
only; ``wall_s`` is the whole command (start-up and model loading included). Written to ``--out-dir``:
``sweep.csv`` (one row per point), ``quality_vs_speed.png``, ``quality_vs_steps.png``, and each point's
generate output under ``generate/``.
"""
import argparse
import csv
import itertools
import logging
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Sequence, Tuple

from difftext.evaluation import PROTOCOLS, evaluate, flatten
from difftext.options import POSITIVE
from fairseq_plugins.score import ScoreError, groups_and_refs

SELECTIONS = ("score", "mbr-bleu", "mbr-rouge")
GRID_FLAGS = ("--decoding-steps", "--length-beam", "--noise-beam", "--candidate-selection", "--nbest", "--path",
              "--task", "--user-dir", "--gen-subset")
SPEED_COLUMNS = ["sentences", "tokens", "decode_s", "sentences_per_s", "tokens_per_s", "wall_s"]
_SPEED = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in [\d.]+s \(([\d.]+) sentences/s, "
                    r"([\d.]+) tokens/s\)")


class Point(NamedTuple):
    steps: int
    length_beam: int
    noise_beam: int
    selection: str

    @property
    def candidates(self) -> int:
        return self.length_beam * self.noise_beam

    @property
    def name(self) -> str:
        return f"steps{self.steps}_k{self.length_beam}_m{self.noise_beam}_{self.selection}"


def grid(steps: Sequence[int], length_beams: Sequence[int], noise_beams: Sequence[int],
         selections: Sequence[str]) -> Tuple[List[Point], List[Point]]:
    """(valid points, skipped points): MBR needs at least two candidates per input."""
    points = [Point(*p) for p in itertools.product(steps, length_beams, noise_beams, selections)]
    valid = [p for p in points if not (p.selection.startswith("mbr") and p.candidates < 2)]
    return valid, [p for p in points if p not in valid]


def generate_command(data: str, checkpoint: str, point: Point, subset: str, extra: Sequence[str]) -> List[str]:
    """The fairseq-generate command line of one grid point."""
    tool = Path(sys.executable).parent / "fairseq-generate"
    return [str(tool) if tool.exists() else "fairseq-generate", data,
            "--user-dir", str(Path(__file__).resolve().parent), "--task", "text_diffusion", "--path", checkpoint,
            "--gen-subset", subset, "--decoding-steps", str(point.steps), "--length-beam", str(point.length_beam),
            "--noise-beam", str(point.noise_beam), "--candidate-selection", point.selection,
            "--nbest", str(point.candidates), *extra]


def parse_speed(output: str) -> Dict[str, float]:
    """Sentences, tokens, decoding seconds and rates from fairseq-generate's "Translated ..." line."""
    m = _SPEED.search(output)
    if not m:
        raise ScoreError("fairseq-generate printed no 'Translated N sentences' line")
    sentences, tokens = int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))
    rate = float(m.group(3))
    return {"sentences": sentences, "tokens": tokens, "decode_s": sentences / rate if rate else 0.0,
            "sentences_per_s": rate, "tokens_per_s": float(m.group(4))}


def run_point(args, point: Point, extra: Sequence[str]) -> Dict:
    """Decode and score one point; raises ScoreError with fairseq's one-line error when generation fails."""
    cmd = generate_command(args.data, args.path, point, args.gen_subset, extra)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    out_file = args.out_dir / "generate" / f"{point.name}.txt"
    out_file.write_text(proc.stdout, encoding="utf-8")
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        raise ScoreError(errors[-1] if errors else f"fairseq-generate exited with {proc.returncode}: "
                         f"{shlex.join(cmd)}")
    groups, refs = groups_and_refs(proc.stdout, out_file, args.ref, "D")
    results = evaluate(groups, refs, protocols=args.metrics, tokenize=args.tokenize)
    row = {**point._asdict(), "candidates": point.candidates, **parse_speed(proc.stdout + proc.stderr),
           "wall_s": wall}
    row.update({k: v for k, v in flatten(results).items() if k != "sentences"})
    return row


def write_csv(rows: List[Dict], path: Path) -> None:
    columns = list(Point._fields) + ["candidates"] + SPEED_COLUMNS
    for row in rows:
        columns += [c for c in row if c not in columns]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else round(v, 4) if isinstance(v, float) else v)
                             for k, v in row.items()})


def plot(rows: List[Dict], metric: str, out_dir: Path) -> List[Path]:
    """quality_vs_speed.png (one series per selection) and quality_vs_steps.png (one line per K x M x selection)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq sets the root logger to DEBUG
    import matplotlib.pyplot as plt

    paths = [out_dir / "quality_vs_speed.png", out_dir / "quality_vs_steps.png"]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for selection in dict.fromkeys(r["selection"] for r in rows):
        pts = [r for r in rows if r["selection"] == selection]
        ax.scatter([r["sentences_per_s"] for r in pts], [r[metric] for r in pts], label=selection)
        for r in pts:
            ax.annotate(f"{r['steps']}st {r['length_beam']}x{r['noise_beam']}", (r["sentences_per_s"], r[metric]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="decoding speed (sentences/s)", ylabel=metric, title=f"{metric} vs decoding speed")
    ax.legend(title="selection")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    configs = dict.fromkeys((r["length_beam"], r["noise_beam"], r["selection"]) for r in rows)
    for k, m, selection in configs:
        pts = sorted((r for r in rows if (r["length_beam"], r["noise_beam"], r["selection"]) == (k, m, selection)),
                     key=lambda r: r["steps"])
        ax.plot([r["steps"] for r in pts], [r[metric] for r in pts], marker="o", label=f"{k}x{m} {selection}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["steps"] for r in rows}))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set(xlabel="decoding steps", ylabel=metric, title=f"{metric} vs decoding steps (length x noise beam)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="difftext-sweep", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Unknown flags are passed to fairseq-generate.")
    parser.add_argument("data", help="the fairseq-preprocess data directory")
    parser.add_argument("--path", required=True, help="checkpoint to decode with")
    parser.add_argument("--out-dir", type=Path, required=True, help="where the CSV, the plots and outputs go")
    parser.add_argument("--steps", type=POSITIVE, nargs="+", default=[20], help="decoding steps to try")
    parser.add_argument("--length-beam", type=POSITIVE, nargs="+", default=[1], help="length beams K to try")
    parser.add_argument("--noise-beam", type=POSITIVE, nargs="+", default=[1], help="noise beams M to try")
    parser.add_argument("--selection", nargs="+", choices=SELECTIONS, default=["score"],
                        help="candidate selections to try")
    parser.add_argument("--gen-subset", default="test", help="split to decode (default: test)")
    parser.add_argument("--ref", type=Path, help="raw references (one line per input) for sacreBLEU; "
                        "default: fairseq's detokenized T- lines")
    parser.add_argument("--tokenize", default="13a", help="sacreBLEU tokenizer (intl for German targets)")
    parser.add_argument("--metrics", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS),
                        help="evaluation protocols per point (default: all)")
    parser.add_argument("--metric", default="sacrebleu", help="CSV column plotted as quality (default sacrebleu)")
    return parser


def sweep(argv=None) -> Tuple[List[Dict], Dict[str, object]]:
    """Run the sweep; returns (rows, summary) and writes the CSV and plots."""
    from tqdm import tqdm

    args, extra = build_parser().parse_known_args(argv)
    clashes = [f for f in extra if f.split("=")[0] in GRID_FLAGS]
    if clashes:
        raise ScoreError(f"{clashes[0]} is set by the sweep itself; use --steps/--length-beam/--noise-beam/"
                         "--selection/--path/--gen-subset")
    if args.ref is not None and not args.ref.is_file():
        raise ScoreError(f"{args.ref} not found")
    columns = SPEED_COLUMNS + list(flatten(evaluate([["a b"]], ["a b"], protocols=args.metrics)))
    if args.metric not in columns:
        raise ScoreError(f"--metric {args.metric} is not computed; choose from {', '.join(columns)}")
    points, skipped = grid(args.steps, args.length_beam, args.noise_beam, args.selection)
    (args.out_dir / "generate").mkdir(parents=True, exist_ok=True)
    print(f"sweep: {len(points) + len(skipped)} grid points, {len(skipped)} skipped (MBR needs >= 2 candidates), "
          f"{len(points)} to run", file=sys.stderr)
    rows, failed = [], []
    for point in tqdm(points, desc="sweep", unit="point"):
        try:
            rows.append(run_point(args, point, extra))
        except ScoreError as err:
            failed.append((point.name, str(err)))
            tqdm.write(f"sweep: {point.name} failed: {err}", file=sys.stderr)
    summary = {"run": len(rows), "skipped": len(skipped), "failed": failed, "csv": None, "plots": []}
    if rows:
        summary["csv"] = args.out_dir / "sweep.csv"
        write_csv(rows, summary["csv"])
        summary["plots"] = plot([r for r in rows if r[args.metric] is not None], args.metric, args.out_dir)
    return rows, summary


def main(argv=None) -> None:
    """Console-script entry point (``difftext-sweep``)."""
    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs each tokenizer it builds
    try:
        rows, summary = sweep(argv)
    except ScoreError as err:
        sys.exit(f"difftext-sweep: error: {err}")
    print(f"sweep: {summary['run']} points run, {summary['skipped']} skipped, {len(summary['failed'])} failed; "
          f"{summary['csv']}; plots: {', '.join(str(p) for p in summary['plots'])}")
    if not rows:
        sys.exit("difftext-sweep: error: no grid point could be decoded")


if __name__ == "__main__":
    main()
