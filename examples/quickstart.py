"""Quickstart and Multi30k De->En recipe: train a diffusion model on the shipped sample, score it with sacreBLEU.

Runs, and prints, the real commands a user would type:
  1. data_scripts/prepare_multi30k.py  (SentencePiece + fairseq-preprocess, joined dictionary)
  2. fairseq-train --user-dir fairseq_plugins --task text_diffusion --arch difformer_small ...
  3. python -m fairseq_plugins.average_checkpoints (the last five interval checkpoints + the final one)
  4. fairseq-generate --user-dir fairseq_plugins --task text_diffusion ... on test2016
  5. sacrebleu on the detokenized hypotheses against the raw references

    python examples/quickstart.py                 # Difformer, default budget (see --budget)
    python examples/quickstart.py --budget 60     # train for 60 minutes
    python examples/quickstart.py --model mdlm    # the same recipe for a masked model: mdlm, md4, genmd4, diffusionbert
    python examples/quickstart.py --smoke         # a one-to-two-minute tiny run (used by the tests)
    python examples/quickstart.py --noise-factor 4   # Difformer's training noise factor (default 16; the paper's: 4)
"""
import argparse
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from difftext.options import bounded

ROOT = Path(__file__).resolve().parents[1]
# a budget of 0 would let fairseq-train (--stop-time-hours 0: no limit) run without end
MINUTES = bounded(float, "(0, inf)")
FACTOR = bounded(float, "[1, inf)")  # the range of the model's noise_factor (models/embedding_diffusion.py)
BIN = Path(sys.executable).parent

# The configuration that converged fastest on this data on a 2-core CPU (see README, "Quickstart").
# Training noise factor: 16, not the paper's 4 (README, "How it was chosen": more BLEU at every budget measured
# on this data); decoding uses 1.
NOISE_FACTOR = 16
TRAIN_FLAGS = [
    "--arch", "difformer_small", "--src-embedding-copy", "--noise-factor", str(NOISE_FACTOR),
    "--self-condition-prob", "0",
    "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--clip-norm", "1.0", "--weight-decay", "0.01",
    "--lr", "1e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "300", "--warmup-init-lr", "1e-7",
    "--dropout", "0.1", "--max-tokens", "1024", "--save-interval-updates", "200", "--keep-interval-updates", "5",
]
# Early in training single checkpoints decode erratically; the average of the last five (1000 updates) does not.
AVERAGE_LAST = 5
DECODE_FLAGS = ["--decoding-steps", "10", "--decoding-noise-factor", "1", "--clamping", "--batch-size", "128"]
SMOKE_TRAIN_FLAGS = [
    "--arch", "difformer_tiny", "--src-embedding-copy", "--optimizer", "adam", "--lr", "2e-3", "--max-tokens", "2048",
    "--max-update", "30", "--save-interval-updates", "10", "--keep-interval-updates", "5",
]
SMOKE_DECODE_FLAGS = ["--decoding-steps", "5", "--clamping", "--length-beam", "2", "--batch-size", "64"]

# Masked (discrete) models: the same optimiser and batches; each paper's objective and schedule come with its
# arch preset (mdlm_small, md4_small, genmd4_small, diffusionbert_small: 3+3 layers, d 256, ffn 1024, 4 heads).
# Decoding: mask-predict (confidence sampler) with 10 steps and 3 predicted lengths, as CMLM translates.
MASKED = ("mdlm", "md4", "genmd4", "diffusionbert")
MASKED_SHARED = TRAIN_FLAGS[TRAIN_FLAGS.index("--optimizer"):]
MASKED_DECODE_FLAGS = ["--sampler", "confidence", "--decoding-steps", "10", "--length-beam", "3", "--batch-size", "128"]
MASKED_SMOKE_DECODE_FLAGS = ["--sampler", "confidence", "--decoding-steps", "4", "--length-beam", "2", "--batch-size", "64"]


def recipe(model: str, smoke: bool, noise_factor=None):
    """(training flags, decoding flags) of --model; ``noise_factor`` (Difformer only) replaces the default."""
    if model == "difformer":
        train, decode = (SMOKE_TRAIN_FLAGS, SMOKE_DECODE_FLAGS) if smoke else (TRAIN_FLAGS, DECODE_FLAGS)
        if noise_factor is None:
            return train, decode
        train = list(train)
        if "--noise-factor" in train:
            train[train.index("--noise-factor") + 1] = f"{noise_factor:g}"
        else:
            train += ["--noise-factor", f"{noise_factor:g}"]
        return train, decode
    if noise_factor is not None:
        raise ValueError(f"--noise-factor applies to the continuous model (difformer), not to {model}; drop it")
    if smoke:
        return ["--arch", f"{model}_tiny", *SMOKE_TRAIN_FLAGS[SMOKE_TRAIN_FLAGS.index("--optimizer"):]], \
            MASKED_SMOKE_DECODE_FLAGS
    return ["--arch", f"{model}_small", *MASKED_SHARED], MASKED_DECODE_FLAGS


def tool(name):
    """The console script of the running interpreter's environment (works without activating the venv)."""
    path = BIN / name
    return str(path) if path.exists() else name


def run(cmd, **kwargs):
    print("+ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    result = subprocess.run([str(c) for c in cmd], **kwargs)
    if result.returncode != 0:
        sys.exit(f"quickstart: error: command failed with exit status {result.returncode}: {cmd[0]}")
    return result


def detokenized_hypotheses(generate_output: str) -> list:
    """D-<id> lines of fairseq-generate, in input order."""
    hyps = {}
    for line in generate_output.splitlines():
        m = re.match(r"^D-(\d+)\t[^\t]*\t?(.*)$", line)
        if m:
            hyps[int(m.group(1))] = m.group(2)
    return [hyps[i] for i in sorted(hyps)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("difformer",) + MASKED, default="difformer", help="model family")
    parser.add_argument("--budget", type=MINUTES, default=16.0, help="training minutes (default 16: ~20 in all)")
    parser.add_argument("--smoke", action="store_true", help="tiny model on 3000 pairs, 30 updates (a minute or two)")
    parser.add_argument("--work-dir", default=None, help="where outputs go (default: runs/quickstart[-MODEL])")
    parser.add_argument("--vocab-size", type=int, default=8000, help="joint SentencePiece vocabulary")
    parser.add_argument("--noise-factor", type=FACTOR, default=None,
                        help=f"Difformer's training noise factor (default {NOISE_FACTOR}; the smoke run: its arch's)")
    args = parser.parse_args(argv)
    suffix = "" if args.model == "difformer" else f"-{args.model}"
    work = Path(args.work_dir or ROOT / "runs" / f"quickstart{suffix}")
    try:
        train_flags, decode_flags = recipe(args.model, args.smoke, args.noise_factor)
    except ValueError as e:
        parser.error(str(e))
    data, ckpt = work / "data-bin", work / "checkpoints"
    start = time.time()

    prep = [sys.executable, ROOT / "data_scripts" / "prepare_multi30k.py", "--raw-dir", ROOT / "data" / "multi30k",
            "--out-dir", data, "--vocab-size", 1000 if args.smoke else args.vocab_size]
    if args.smoke:
        prep += ["--train-limit", "3000"]
    run(prep)

    common = ["--user-dir", ROOT / "fairseq_plugins", "--task", "text_diffusion", "--cpu"]
    train = [tool("fairseq-train"), data, *common, "--criterion", "text_diffusion_loss", "--save-dir", ckpt,
             "--no-epoch-checkpoints", "--disable-validation", "--log-interval", "50", "--seed", "1"]
    train += train_flags if args.smoke else train_flags + ["--stop-time-hours", f"{args.budget / 60:.6g}"]
    run(train)

    model = ckpt / "checkpoint_avg.pt"
    run([sys.executable, "-m", "fairseq_plugins.average_checkpoints", "--dir", ckpt, "--last", AVERAGE_LAST,
         "--inputs", ckpt / "checkpoint_last.pt", "--output", model], cwd=ROOT)
    generate = [tool("fairseq-generate"), data, *common, "--path", model, "--gen-subset", "test",
                "--post-process", "sentencepiece", "--seed", "1"]
    generate += decode_flags
    out = run(generate, stdout=subprocess.PIPE, text=True).stdout
    (work / "generate-test.txt").write_text(out)
    hyps = detokenized_hypotheses(out)
    (work / "hyp.test.en").write_text("\n".join(hyps) + "\n")
    ref = data / "raw" / "test.en"
    score = run([tool("sacrebleu"), ref, "-i", work / "hyp.test.en", "-m", "bleu", "-b", "-w", "2"],
                stdout=subprocess.PIPE, text=True).stdout.strip()
    signature = run([tool("sacrebleu"), ref, "-i", work / "hyp.test.en", "-m", "bleu"],
                    stdout=subprocess.PIPE, text=True).stdout
    sig = re.search(r'"signature": "([^"]+)"', signature)
    print(f"\nsacreBLEU on Multi30k test2016 ({len(hyps)} sentences): {score}"
          f"  [{sig.group(1) if sig else 'sacrebleu'}]")
    print(f"total time: {(time.time() - start) / 60:.1f} min; outputs in {work}")


if __name__ == "__main__":
    main()
