"""A crash while a checkpoint is written never leaves a half-written checkpoint (fairseq_plugins/compat.py).

fairseq's own ``checkpoint_utils.save_checkpoint`` is called with a stand-in trainer, and the write is
made to fail part-way (some bytes written, then an error), at the two places a crash can hit: the
``torch.save`` of the first file (checkpoint_<epoch>_<update>.pt) and the copy to checkpoint_last.pt,
which fairseq 0.12 does in place.
"""
import shutil
import types

import pytest
import torch
from fairseq import checkpoint_utils
from fairseq.dataclass.configs import CheckpointConfig

import fairseq_plugins  # noqa: F401  (installs the patches)
from fairseq_plugins import compat

REAL_SAVE = torch.save


class StandInTrainer:
    """What ``checkpoint_utils.save_checkpoint`` asks of a trainer; the model is one tensor."""

    data_parallel_rank = 0
    should_save_checkpoint_on_current_rank = True
    always_call_state_dict_during_save_checkpoint = False
    checkpoint_suffix = ""
    task = object()

    def __init__(self, updates):
        self.updates = updates

    def consolidate_optimizer(self):
        pass

    def get_num_updates(self):
        return self.updates

    def save_checkpoint(self, filename, extra_state):
        state = {"model": {"w": torch.full((50_000,), float(self.updates))}, "extra_state": extra_state}
        checkpoint_utils.torch_persistent_save(state, filename)


def save(directory, updates):
    cfg = CheckpointConfig(save_dir=str(directory), save_interval_updates=2, no_epoch_checkpoints=True)
    epoch_itr = types.SimpleNamespace(epoch=1, end_of_epoch=lambda: False,
                                      state_dict=lambda: {"epoch": 1, "iterations_in_epoch": updates})
    checkpoint_utils.save_checkpoint(cfg, StandInTrainer(updates), epoch_itr, None)


def updates_in(path) -> int:
    return int(torch.load(path, weights_only=True)["model"]["w"][0])


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(compat, "RETRY_DELAY_S", 0.0)
    monkeypatch.setattr(checkpoint_utils.time, "sleep", lambda s: None)


def partial_save(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half a checkpoint")
    raise OSError("No space left on device")


def test_save_writes_interval_and_last_checkpoints(tmp_path):
    save(tmp_path, 2)
    assert updates_in(tmp_path / "checkpoint_1_2.pt") == updates_in(tmp_path / "checkpoint_last.pt") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_1_2.pt", "checkpoint_last.pt"]


def test_crash_while_copying_to_checkpoint_last_keeps_the_previous_one(tmp_path, monkeypatch):
    save(tmp_path, 2)

    def partial_copy(src, dst, length=0):
        dst.write(src.read(1000))
        raise OSError("killed")

    monkeypatch.setattr(shutil, "copyfileobj", partial_copy)
    with pytest.raises(OSError, match="killed"):
        save(tmp_path, 4)
    assert updates_in(tmp_path / "checkpoint_last.pt") == 2, "the previous checkpoint_last.pt is intact"
    assert updates_in(tmp_path / "checkpoint_1_4.pt") == 4, "the first file was complete before the copy"
    assert not list(tmp_path.glob("*.tmp"))


def test_crash_while_writing_the_first_file_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    save(tmp_path, 2)
    monkeypatch.setattr(torch, "save", partial_save)
    with pytest.raises(OSError, match="No space left"):
        save(tmp_path, 4)
    assert not (tmp_path / "checkpoint_1_4.pt").exists(), "no half-written checkpoint under the final name"
    assert updates_in(tmp_path / "checkpoint_last.pt") == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_a_failed_attempt_does_not_corrupt_the_retry(tmp_path, monkeypatch):
    """fairseq retries torch.save on the same file handle, after the bytes of the failed attempt."""
    calls = []

    def flaky_save(obj, f, *args, **kwargs):
        calls.append(1)
        return partial_save(obj, f) if len(calls) == 1 else REAL_SAVE(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", flaky_save)
    save(tmp_path, 2)
    assert len(calls) == 2
    assert updates_in(tmp_path / "checkpoint_1_2.pt") == updates_in(tmp_path / "checkpoint_last.pt") == 2

    fairseq_original = getattr(checkpoint_utils.torch_persistent_save, compat._MARK)
    calls.clear()
    fairseq_original({"model": {"w": torch.ones(3)}}, str(tmp_path / "fairseq_alone.pt"))
    with pytest.raises(Exception):  # what the patch prevents: a renamed, unloadable file
        torch.load(tmp_path / "fairseq_alone.pt", weights_only=True)


def test_average_checkpoints_output_is_written_atomically(tmp_path, monkeypatch):
    from fairseq_plugins import average_checkpoints

    save(tmp_path, 2)
    out = tmp_path / "avg.pt"
    out.write_bytes(b"previous")
    monkeypatch.setattr(torch, "save", partial_save)
    with pytest.raises(OSError):
        average_checkpoints.main(["--inputs", str(tmp_path / "checkpoint_1_2.pt"), "--output", str(out)])
    assert out.read_bytes() == b"previous"
