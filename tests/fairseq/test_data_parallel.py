"""Data-parallel training on CPU (gloo), through fairseq's own spawning and through torchrun.

Why the comparison is exact: fairseq splits the batches of an epoch over the ranks (batch b of an
update goes to rank b % N), sums the sample sizes over the ranks, and averages the gradients in DDP,
so 2 processes at --update-freq 1 and 1 process at --update-freq 2 see the same two batches per update
and apply the same mean gradient. The diffusion times, noise and dropout masks are drawn from the
global RNG, which fairseq reseeds once per update with the same seed on every rank; difftext reseeds it
per micro-batch from (seed, update, i * world_size + rank) (fairseq_plugins/reliability.py), which is the
batch's index within the update in both set-ups, so both draw identical randomness for identical
batches. The only difference left is the order of floating-point sums (DDP's all-reduce), hence a
float tolerance on the parameters. The trace (tests/fairseq/traced_train.py) shows the rest: the
replicas hold bit-identical parameters before every update (gradients are synchronised) and the two
ranks train on disjoint examples whose union is what the single process saw (data is sharded).
"""
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.fairseq.cli_helpers import ROOT, run_cli, train_args

TRACED = ROOT / "tests" / "fairseq" / "traced_train.py"
UPDATES = 3


def registered(arch: str) -> bool:
    import fairseq_plugins  # noqa: F401  (registers the archs)
    from fairseq.models import ARCH_MODEL_REGISTRY

    return arch in ARCH_MODEL_REGISTRY


def train(data, save: Path, arch: str, *extra, launcher=None):
    """Train UPDATES updates through traced_train.py; -> {rank: [trace records]}."""
    trace = save / "trace"
    trace.mkdir(parents=True)
    args = train_args(data, save, arch, "--max-update", str(UPDATES), "--log-interval", "1", *extra)[1:]
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TRACED, *args]
    else:
        cmd = [sys.executable, TRACED, *args]
    run_cli(cmd, env_extra={"DIFFTEXT_TRACE_DIR": str(trace)})
    return {int(p.stem[4:]): [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted(trace.glob("rank*.jsonl"))}


def params(save: Path) -> dict:
    import fairseq_plugins  # noqa: F401  (allowlists fairseq's checkpoint types)

    state = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    return state["model"]


@pytest.fixture(scope="module")
def reference(data_bin, tmp_path_factory):
    """{arch: (save dir, trace)} of one process with --update-freq 2."""
    cache = {}

    def get(arch):
        if arch not in cache:
            save = tmp_path_factory.mktemp(f"ref_{arch}")
            cache[arch] = save, train(data_bin, save, arch, "--update-freq", "2")[0]
        return cache[arch]

    return get


def check_against_reference(ranks: dict, save: Path, ref_save: Path, ref_trace: list):
    assert sorted(ranks) == [0, 1], "two processes trained"
    for update in range(UPDATES):
        (r0,), (r1,) = ([x for x in ranks[r] if x["update"] == update] for r in (0, 1))
        ref = [x for x in ref_trace if x["update"] == update]
        assert len(ref) == 2, "the reference accumulates two batches per update"
        # synchronised: both replicas start every update from bit-identical parameters (and the first
        # one from the reference's initialisation)
        assert r0["params"] == r1["params"], f"replicas differ before update {update + 1}"
        if update == 0:
            assert r0["params"] == ref[0]["params"]
        # sharded: each rank trains on its own batch, the two are the reference's two batches
        assert r0["ids"] and r1["ids"] and not set(r0["ids"]) & set(r1["ids"])
        assert (r0["ids"], r1["ids"]) == (ref[0]["ids"], ref[1]["ids"])
    got, want = params(save), params(ref_save)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.allclose(got[name].float(), want[name].float(), rtol=1e-4, atol=1e-6), name


ARCHS = ["difformer_tiny", pytest.param("mdlm_tiny", marks=pytest.mark.slow)]


@pytest.mark.parametrize("arch", ARCHS)
def test_two_processes_equal_update_freq_two(data_bin, reference, tmp_path, arch):
    """fairseq's own spawning: --distributed-world-size 2 --cpu (gloo)."""
    if not registered(arch):
        pytest.skip("not registered")
    ranks = train(data_bin, tmp_path / "ddp", arch, "--distributed-world-size", "2")
    check_against_reference(ranks, tmp_path / "ddp", *reference(arch))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["difformer_tiny", "mdlm_tiny"])
def test_torchrun_equals_update_freq_two(data_bin, reference, tmp_path, arch):
    """torchrun --standalone --nproc_per_node 2 $(which fairseq-train) ... --cpu."""
    if not registered(arch):
        pytest.skip("not registered")
    ranks = train(data_bin, tmp_path / "torchrun", arch, launcher="torchrun")
    check_against_reference(ranks, tmp_path / "torchrun", *reference(arch))
