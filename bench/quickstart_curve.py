"""Learning curve of the quickstart configuration: sacreBLEU after B minutes of training, for several B.

One long run with the quickstart's training flags (``--save-interval-updates 200``, all interval checkpoints
kept) gives every shorter budget, because the inverse-sqrt schedule does not depend on the budget: for a budget
of B minutes, average the last five interval checkpoints saved within B minutes of the start of training (what
the quickstart decodes), decode test2016 with the quickstart's flags, and score with sacreBLEU.

    python bench/quickstart_curve.py --log train.log --save-dir ck --data data-bin --budgets 16 36 46 \
        --output bench/results/quickstart_curve.json
"""
import argparse
import json
import platform
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from examples.quickstart import AVERAGE_LAST, DECODE_FLAGS, MINUTES, detokenized_hypotheses, tool  # noqa: E402

STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)"


def checkpoint_times(log: str):
    """(start of training, [(seconds since start, checkpoint file name, updates)])."""
    start = re.search(STAMP + r".*Start iterating over samples", log, re.M)
    if start is None:
        sys.exit("quickstart_curve: error: the log has no 'Start iterating over samples' line; pass a fairseq-train log")
    t0 = datetime.fromisoformat(start.group(1))
    saved = []
    for m in re.finditer(STAMP + r".*Saved checkpoint \S*?(checkpoint_\d+_(\d+)\.pt)", log, re.M):
        saved.append(((datetime.fromisoformat(m.group(1)) - t0).total_seconds(), m.group(2), int(m.group(3))))
    return t0, saved


def evaluate(model: Path, data: Path, work: Path):
    common = ["--user-dir", ROOT / "fairseq_plugins", "--task", "text_diffusion", "--cpu"]
    cmd = [tool("fairseq-generate"), data, *common, "--path", model, "--gen-subset", "test",
           "--post-process", "sentencepiece", "--seed", "1", *DECODE_FLAGS]
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True)
    hyp = work / f"{model.stem}.hyp"
    hyp.write_text("\n".join(detokenized_hypotheses(out.stdout)) + "\n")
    speed = re.search(r"\(([0-9.]+) sentences/s", out.stderr + out.stdout)
    bleu = subprocess.run([tool("sacrebleu"), str(data / "raw" / "test.en"), "-i", str(hyp), "-m", "bleu", "-b"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return float(bleu), float(speed.group(1)) if speed else None, " ".join(map(str, cmd))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--save-dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--budgets", type=MINUTES, nargs="+", required=True, help="training minutes")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    _, saved = checkpoint_times(args.log.read_text())
    points = []
    for budget in args.budgets:
        within = [(sec, name, upd) for sec, name, upd in saved if sec <= budget * 60]
        if not within:
            first = f"the first at {saved[0][0] / 60:.1f} min" if saved else "the log names none"
            sys.exit(f"quickstart_curve: error: no checkpoint was saved within {budget:g} minutes ({first}); "
                     "pass longer --budgets")
        chosen = [args.save_dir / name for _, name, _ in within[-AVERAGE_LAST:]]
        model = args.save_dir / f"avg_{budget:g}min.pt"
        subprocess.run([sys.executable, "-m", "fairseq_plugins.average_checkpoints", "--inputs", *map(str, chosen),
                        "--output", str(model)], check=True, cwd=ROOT)
        bleu, speed, cmd = evaluate(model, args.data, args.save_dir)
        points.append({"train_minutes": budget, "updates": within[-1][2], "averaged": [p.name for p in chosen],
                       "sacrebleu": bleu, "decode_sentences_per_s": speed, "generate_command": cmd})
        print(json.dumps(points[-1]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "what": "quickstart configuration, sacreBLEU on Multi30k test2016 vs training minutes",
        "machine": {"cores": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()},
        "date": datetime.now().isoformat(timespec="seconds"),
        "points": points,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
