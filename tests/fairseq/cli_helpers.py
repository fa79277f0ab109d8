"""Helpers for the CLI tests: a small real Multi30k slice, and the fairseq command lines."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / ".." / "shared" / "data"
BIN = Path(sys.executable).parent
SLICE = {"train": 1500, "val": 100, "test_2016_flickr": 60}


def cli(name):
    path = BIN / name
    return str(path) if path.exists() else name


def build_in_process(data_bin, arch, *flags):
    """(task, model) of ``--task text_diffusion --arch arch`` as fairseq-train builds them, in this process."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data_bin), "--user-dir", str(ROOT / "fairseq_plugins"), "--task", "text_diffusion", "--arch", arch,
        "--criterion", "text_diffusion_loss", "--optimizer", "adam", "--cpu", *map(str, flags)])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    return task, task.build_model(cfg.model)


def run_cli(args, *, check=True, env_extra=None, **kwargs):
    """Run a command line (``env_extra``: more environment variables); on unexpected failure show its output."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.update(env_extra or {})
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_data_bin(tmp: Path, vocab_size: int, train_lines: int = SLICE["train"]) -> Path:
    raw = tmp / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    source = SHARED / "multi30k"
    if not source.is_dir():
        source = ROOT / "data" / "multi30k"
    for split, n in dict(SLICE, train=train_lines).items():
        for lang in ("de", "en"):
            src = source / f"{split}.{lang}"
            if src.exists():
                lines = src.read_text(encoding="utf-8").splitlines(keepends=True)[:n]
            else:  # the shipped gzip copy
                import gzip

                with gzip.open(str(src) + ".gz", "rt", encoding="utf-8") as f:
                    lines = [line for _, line in zip(range(n), f)]
            (raw / f"{split}.{lang}").write_text("".join(lines), encoding="utf-8")
    out = tmp / "bin"
    run_cli([sys.executable, ROOT / "data_scripts" / "prepare_multi30k.py", "--raw-dir", raw, "--out-dir", out,
             "--vocab-size", vocab_size, "--workers", "1"])
    return out


def train_args(data: Path, save_dir: Path, arch: str, *extra):
    return [cli("fairseq-train"), data, "--user-dir", ROOT / "fairseq_plugins", "--task", "text_diffusion",
            "--arch", arch, "--criterion", "text_diffusion_loss", "--optimizer", "adam", "--lr", "3e-3",
            "--max-tokens", "1024", "--save-dir", save_dir, "--no-epoch-checkpoints", "--disable-validation",
            "--log-interval", "5", "--log-format", "simple", "--cpu", "--seed", "1", "--num-workers", "0", *extra]


def generate_args(data: Path, checkpoint: Path, *extra):
    return [cli("fairseq-generate"), data, "--user-dir", ROOT / "fairseq_plugins", "--task", "text_diffusion",
            "--path", checkpoint, "--gen-subset", "test", "--batch-size", "32", "--cpu",
            "--post-process", "sentencepiece", "--scoring", "sacrebleu", *extra]
