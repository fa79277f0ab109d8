"""Checkpoint averaging: parameters are the mean, integer buffers come from the newest, loading stays safe."""
import subprocess
import sys

import pytest
import torch

from fairseq_plugins.average_checkpoints import average, best_checkpoints, interval_checkpoints, main
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


def _save_best(directory, name, w, maximize):
    torch.save({"model": {"w": torch.full((1,), w)}, "extra_state": {"ema": {"w": torch.full((1,), -w)}},
                "cfg": {"checkpoint": {"maximize_best_checkpoint_metric": maximize}}}, directory / name)


@pytest.mark.parametrize("maximize", [True, False])
def test_best_checkpoints_follow_the_trained_direction(tmp_path, maximize):
    # fairseq names them checkpoint.best_<metric>_<value:.3f><tie digit>.pt
    for name, w in [("checkpoint.best_bleu_30.1201.pt", 1.0), ("checkpoint.best_bleu_31.5000.pt", 2.0),
                    ("checkpoint.best_bleu_29.9993.pt", 3.0), ("checkpoint.best_bleu_4.2503.pt", 4.0)]:
        _save_best(tmp_path, name, w, maximize)
    best = [p.name for p in best_checkpoints(tmp_path, 2)]
    if maximize:
        assert best == ["checkpoint.best_bleu_30.1201.pt", "checkpoint.best_bleu_31.5000.pt"]
    else:
        assert best == ["checkpoint.best_bleu_29.9993.pt", "checkpoint.best_bleu_4.2503.pt"]
    flipped = [p.name for p in best_checkpoints(tmp_path, 1, maximize=not maximize)]
    assert flipped == [("checkpoint.best_bleu_4.2503.pt" if maximize else "checkpoint.best_bleu_31.5000.pt")]


def test_cli_best_and_ema(tmp_path):
    for name, w in [("checkpoint.best_loss_3.5000.pt", 1.0), ("checkpoint.best_loss_2.5001.pt", 3.0),
                    ("checkpoint.best_loss_9.0002.pt", 100.0)]:
        _save_best(tmp_path, name, w, False)
    out = tmp_path / "avg.pt"
    main(["--dir", str(tmp_path), "--best", "2", "--ema", "--output", str(out)])
    state = torch.load(out, weights_only=True)
    assert state["model"]["w"].item() == -2.0, "mean of the EMA weights of the two lowest losses"
    assert "ema" not in state["extra_state"]
    state = average(best_checkpoints(tmp_path, 2))
    assert state["model"]["w"].item() == 2.0


def test_best_and_ema_errors_are_one_line(tmp_path):
    _save(tmp_path / "checkpoint_1_100.pt", torch.zeros(1), torch.tensor([0]), 100)
    args = ["--dir", str(tmp_path), "--output", str(tmp_path / "o.pt")]
    with pytest.raises(SystemExit, match=r"^average_checkpoints: error: no checkpoint\.best_.*--keep-best-checkpoints"):
        main(args + ["--best", "3"])
    with pytest.raises(SystemExit, match=r"^average_checkpoints: error: .*has no EMA weights; train with --store-ema"):
        main(args + ["--last", "1", "--ema"])


def test_a_negative_count_is_refused_not_read_as_zero(tmp_path, capsys):
    """--last -1 beside --inputs used to average the inputs alone without a word."""
    _save(tmp_path / "checkpoint_1_100.pt", torch.zeros(1), torch.tensor([0]), 100)
    for flag in ("--last", "--best"):
        with pytest.raises(SystemExit) as info:
            main(["--dir", str(tmp_path), flag, "-1", "--inputs", str(tmp_path / "checkpoint_1_100.pt"),
                  "--output", str(tmp_path / "o.pt")])
        assert info.value.code == 2 and not (tmp_path / "o.pt").exists()
        assert f"argument {flag}: must be in [0, inf), got -1" in capsys.readouterr().err
