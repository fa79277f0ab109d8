"""Brown-corpus language-modelling recipe for the masked-diffusion LMs (MDLM, MD4, GenMD4, DiffusionBERT).

Runs, and prints, the real commands:
  1. data_scripts/prepare_lm.py           (SentencePiece + fairseq-preprocess --only-source)
  2. fairseq-train --task text_diffusion_lm --arch {model}_lm_small ... for --budget minutes
  3. fairseq-validate --elbo-samples 8     (the ELBO bound on valid, nats/token and perplexity)
  4. python -m fairseq_plugins.sample      (4 samples of the training length, 1 semi-autoregressive of twice it)

    python examples/brown_lm.py --model mdlm --budget 30
    python examples/brown_lm.py --model diffusionbert --raw-dir path/to/brown   # brown.{train,valid}.txt
    python examples/brown_lm.py --smoke                                            # a tiny run (tests)

The Brown corpus is not shipped in the repository: ``--raw-dir`` defaults to ``../shared/data/brown`` when it
exists, otherwise ``--download`` fetches it from NLTK's data index (see data_scripts/prepare_lm.py).
"""
import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from quickstart import MINUTES, ROOT, run, tool

MODELS = ("mdlm", "md4", "genmd4", "diffusionbert")
LENGTH = 128  # tokens per training sequence (packed stream, --sample-break-mode none)
TRAIN_FLAGS = [
    "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--clip-norm", "1.0", "--weight-decay", "0.01",
    "--lr", "1e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "300", "--warmup-init-lr", "1e-7",
    "--dropout", "0.1", "--tokens-per-sample", str(LENGTH), "--batch-size", "16", "--sample-break-mode", "none",
    "--save-interval-updates", "500", "--keep-interval-updates", "1", "--validate-interval-updates", "500",
]
SMOKE_FLAGS = ["--optimizer", "adam", "--lr", "3e-3", "--tokens-per-sample", "64", "--batch-size", "16",
               "--max-update", "30"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="mdlm", help="masked-diffusion family")
    parser.add_argument("--budget", type=MINUTES, default=30.0, help="training minutes")
    parser.add_argument("--raw-dir", default=str(ROOT / ".." / "shared" / "data" / "brown"),
                        help="folder with brown.train.txt and brown.valid.txt")
    parser.add_argument("--download", action="store_true", help="fetch Brown from NLTK's data index into --raw-dir")
    parser.add_argument("--vocab-size", type=int, default=8000, help="SentencePiece vocabulary")
    parser.add_argument("--smoke", action="store_true", help="tiny model on 2000 lines, 30 updates")
    parser.add_argument("--work-dir", default=None, help="where outputs go (default: runs/brown-MODEL)")
    args = parser.parse_args(argv)
    work = Path(args.work_dir or ROOT / "runs" / f"brown-{args.model}")
    data, ckpt = work / "data-bin", work / "checkpoints"
    start = time.time()

    prep = [sys.executable, ROOT / "data_scripts" / "prepare_lm.py", "--raw-dir", args.raw_dir,
            "--pattern", "brown.{split}.txt", "--out-dir", data, "--vocab-size", 500 if args.smoke else args.vocab_size]
    if args.download:
        prep.append("--download")
    if args.smoke:
        prep += ["--train-limit", "2000"]
    run(prep)

    common = ["--user-dir", ROOT / "fairseq_plugins", "--task", "text_diffusion_lm", "--cpu"]
    size = "tiny" if args.smoke else "small"
    train = [tool("fairseq-train"), data, *common, "--arch", f"{args.model}_lm_{size}", "--criterion",
             "text_diffusion_loss", "--save-dir", ckpt, "--no-epoch-checkpoints", "--log-interval", "50", "--seed", "1"]
    train += SMOKE_FLAGS if args.smoke else TRAIN_FLAGS + ["--stop-time-hours", f"{args.budget / 60:.6g}"]
    run(train)

    model = ckpt / "checkpoint_last.pt"
    validate = run([tool("fairseq-validate"), data, *common, "--path", model, "--batch-size", "16",
                    "--elbo-samples", "8"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    m = re.search(r"valid on 'valid' subset \|.*? nelbo ([0-9.]+) .*?\| ppl ([0-9.]+)", validate)
    length = 64 if args.smoke else LENGTH
    sample = [sys.executable, "-m", "fairseq_plugins.sample", data, "--path", model, "--post-process",
              "sentencepiece", "--sampler", "ddpm_cache" if args.model in ("mdlm", "diffusionbert") else "ddpm"]
    run(sample + ["--num-samples", "4", "--length", length, "--decoding-steps", length], cwd=ROOT)
    run(sample + ["--num-samples", "1", "--length", 2 * length, "--decoding-steps", length // 2], cwd=ROOT)
    if m:
        print(f"\nBrown valid ELBO bound ({args.model}, 8 time samples): {float(m.group(1)):.3f} nats/token, "
              f"perplexity <= {float(m.group(2)):.2f}")
    print(f"total time: {(time.time() - start) / 60:.1f} min; outputs in {work}")


if __name__ == "__main__":
    main()
