"""Resume after a crash: SIGKILL in the middle of an epoch, rerun the same command, same final model.

fairseq restores the parameters, optimizer, lr scheduler, meters, EMA (``extra_state["ema"]``) and the
position in the epoch (``train_iterator.iterations_in_epoch``; the epoch's batch order is a function of
the seed and the epoch). The model's own state follows through its state dict: DiffuSeq's loss-aware
time-sampler history, GenMD4's learnable exponents, DiffusionBERT's spindle counts. The randomness of
update u is seeded from (seed, u, micro-batch) (fairseq_plugins/reliability.py), so the resumed run draws
what the uninterrupted one drew from update 5 on, and the final checkpoints are bit-identical.
"""
import re
import signal
import sys

import pytest
import torch

from tests.fairseq.cli_helpers import ROOT, run_cli, train_args

TRACED = ROOT / "tests" / "fairseq" / "traced_train.py"
INTERVAL, KILL_AT, UPDATES = 4, 6, 8  # checkpoint at update 4, killed before update 7, 8 updates in all


def registered(arch: str) -> bool:
    import fairseq_plugins  # noqa: F401
    from fairseq.models import ARCH_MODEL_REGISTRY

    return arch in ARCH_MODEL_REGISTRY


def load(path):
    import fairseq_plugins  # noqa: F401  (allowlists fairseq's checkpoint types)

    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict, what: str):
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key}"


def assert_same_optimizer_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for index in a:
        for name, value in a[index].items():
            other = b[index][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (index, name)


CASES = [
    # DiffuSeq: loss-aware sampler history (buffers) + EMA weights
    pytest.param("diffuseq_tiny", ["--store-ema", "--ema-decay", "0.9"],
                 ["time_sampler._counts", "time_sampler._losses"], id="diffuseq-ema"),
    pytest.param("genmd4_tiny", [], ["diffusion.schedule.raw_exponent"], id="genmd4", marks=pytest.mark.slow),
    pytest.param("diffusionbert_tiny", [], ["diffusion.schedule.counts"], id="diffusionbert", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("arch, extra, state_keys", CASES)
def test_sigkill_mid_epoch_then_rerun_equals_uninterrupted(data_bin, tmp_path, arch, extra, state_keys):
    if not registered(arch):
        pytest.skip("not registered")

    def command(save):
        args = train_args(data_bin, save, arch, "--max-update", str(UPDATES), "--save-interval-updates",
                          str(INTERVAL), *extra)
        return [sys.executable, TRACED, *args[1:]]

    run_cli(command(tmp_path / "straight"))
    crashed = run_cli(command(tmp_path / "crashed"), check=False, env_extra={"DIFFTEXT_KILL_AT_UPDATE": str(KILL_AT)})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    at_crash = load(tmp_path / "crashed" / "checkpoint_last.pt")
    assert at_crash["optimizer_history"][-1]["num_updates"] == INTERVAL
    assert 0 < at_crash["extra_state"]["train_iterator"]["iterations_in_epoch"] == INTERVAL, "killed mid-epoch"
    assert not list((tmp_path / "crashed").glob("*.tmp")), "no temporary file left behind"

    resumed = run_cli(command(tmp_path / "crashed"))  # the same command again
    log = resumed.stdout + resumed.stderr
    assert re.search(rf"Loaded checkpoint .*checkpoint_last\.pt \(epoch 1 @ {INTERVAL} updates\)", log), log[-3000:]

    straight = load(tmp_path / "straight" / "checkpoint_last.pt")
    after = load(tmp_path / "crashed" / "checkpoint_last.pt")
    assert after["optimizer_history"][-1]["num_updates"] == UPDATES
    for key in state_keys:  # the diffusion-specific state is in the model's state dict and was trained
        assert key in after["model"], key
        if key != "diffusion.schedule.counts":  # spindle counts are data statistics, fixed at build time
            assert not torch.equal(after["model"][key], at_crash["model"][key]), key
    assert_same_tensors(after["model"], straight["model"], "model")
    assert_same_optimizer_state(after["last_optimizer_state"]["state"], straight["last_optimizer_state"]["state"])
    if "--store-ema" in extra:
        assert_same_tensors(after["extra_state"]["ema"], straight["extra_state"]["ema"], "EMA")
        assert not torch.equal(after["extra_state"]["ema"]["embed.weight"], after["model"]["embed.weight"])
