"""Checkpoint averaging: parameters are the mean, integer buffers come from the newest, loading stays safe."""
import subprocess
import sys

import torch

from fairseq_plugins.average_checkpoints import average, interval_checkpoints
from tests.fairseq.cli_helpers import ROOT


def _save(path, w, counts, step):
    torch.save({"model": {"w": w, "time_sampler._counts": counts}, "extra_state": {"step": step},
                "last_optimizer_state": {"state": 1}}, path)


def test_average_means_floats_and_keeps_newest_integers(tmp_path):
    for i, step in enumerate((200, 400, 600)):
        _save(tmp_path / f"checkpoint_1_{step}.pt", torch.full((2,), float(i)), torch.tensor([i]), step)
    paths = interval_checkpoints(tmp_path)
    assert [p.name for p in paths] == ["checkpoint_1_200.pt", "checkpoint_1_400.pt", "checkpoint_1_600.pt"]
    state = average(paths)
    assert torch.equal(state["model"]["w"], torch.ones(2))
    assert state["model"]["time_sampler._counts"].item() == 2
    assert state["extra_state"]["step"] == 600 and state["last_optimizer_state"] is None


def test_cli_averages_last_n_and_reports_missing(tmp_path):
    for i, step in enumerate((100, 200, 300)):
        _save(tmp_path / f"checkpoint_1_{step}.pt", torch.full((1,), float(i)), torch.tensor([0]), step)
    out = tmp_path / "avg.pt"
    cmd = [sys.executable, "-m", "fairseq_plugins.average_checkpoints", "--dir", tmp_path, "--last", "2",
           "--output", out]
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert torch.load(out, weights_only=True)["model"]["w"].item() == 1.5
    bad = subprocess.run([sys.executable, "-m", "fairseq_plugins.average_checkpoints", "--inputs",
                          str(tmp_path / "nope.pt"), "--output", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "not found" in bad.stderr and "nope.pt" in bad.stderr
