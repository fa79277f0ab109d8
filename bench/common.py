"""Shared helpers of the benchmark suite: paths, commands with their peak memory, machine and commit records."""
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
USER_DIR = ROOT / "fairseq_plugins"
BIN = Path(sys.executable).parent


class BenchError(Exception):
    """A failure the suite reports in one line (a command that failed, a missing input)."""


def tool(name: str) -> str:
    """The console script of the running interpreter's environment (works without activating the venv)."""
    path = BIN / name
    return str(path) if path.exists() else name


def shell(cmd: Sequence) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


def relative(cmd: Sequence) -> str:
    """A command line as recorded in results: repository paths relative to the repository root."""
    text = shell(cmd)
    return text.replace(str(BIN) + "/", "").replace(str(ROOT) + "/", "").replace(sys.executable, "python")


def child_env(threads: Optional[int]) -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_logged(cmd: Sequence, log: Path, *, threads: Optional[int] = None, quiet: bool = True) -> Dict:
    """Run ``cmd`` with stdout+stderr to ``log``; -> {wall_s, peak_rss_mb} of that process (os.wait4).

    Raises BenchError with the last lines of the log when the command fails.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print("+ " + relative(cmd), flush=True)
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        out.write("# " + shell(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=child_env(threads))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise BenchError(f"{Path(str(cmd[0])).name} {Path(str(cmd[1])).name if len(cmd) > 1 else ''} failed "
                         f"(exit {proc.returncode}); log {log}:\n" + "\n".join(tail))
    return {"wall_s": round(wall, 3), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}  # ru_maxrss: KiB


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def git_commit() -> str:
    """HEAD's sha, with "+dirty" when the working tree differs from it; outside a git checkout, $DIFFTEXT_COMMIT."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:  # no git on this machine
            return ""

    sha = git("rev-parse", "HEAD")
    if not sha:  # not a git checkout, e.g. a copy of the tree sent to a GPU machine: the sender names its commit
        return os.environ.get("DIFFTEXT_COMMIT", "unknown")
    return sha + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine(threads: Optional[int]) -> Dict:
    import torch

    info = {"cpu_cores": os.cpu_count(), "torch_threads": threads or torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "processor": _cpu_name(), "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import fairseq

        info["fairseq"] = fairseq.__version__
    except ImportError:
        pass
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def config_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_json(path: Path) -> Optional[Dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def reference_lines(path: Path) -> List[str]:
    lines = path.read_text(encoding="utf-8").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines
