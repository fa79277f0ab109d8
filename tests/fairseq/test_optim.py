"""``--optimizer adamw_torch``: fairseq's AdamW update through torch's fused / foreach kernels."""
import re

import pytest
import torch

import fairseq_plugins  # noqa: F401  (registers the optimizer)
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig
from fairseq_plugins.optim import TorchAdamW, TorchAdamWConfig
from tests.fairseq.cli_helpers import run_cli, train_args

SHAPES = [(300, 16), (16, 16), (16,), (64, 16), (16, 64), (64,)]


def _run(cls, cfg_cls, eps, steps=6, **kw):
    base = [torch.randn(s, generator=torch.Generator().manual_seed(i)) * 0.02 for i, s in enumerate(SHAPES)]
    params = [torch.nn.Parameter(b.clone()) for b in base]
    opt = cls(cfg_cls(lr=[1e-3], adam_betas="(0.9, 0.98)", adam_eps=eps, weight_decay=0.01, **kw), params)
    g = torch.Generator().manual_seed(99)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g) * 0.1
        opt.step()
    return base, [p.detach() for p in params], opt


@pytest.mark.parametrize("kind", ["fused", "foreach", "for-loop"])
def test_same_update_as_fairseq_adam(kind):
    """Away from eps (1e-30 here) the update is fairseq's adam to float rounding; with eps 1e-8 only elements
    whose gradients are near eps differ (fairseq adds eps before the bias correction)."""
    base, ref, _ = _run(FairseqAdam, FairseqAdamConfig, 1e-30)
    _, ours, opt = _run(TorchAdamW, TorchAdamWConfig, 1e-30, adamw_implementation=kind)
    assert opt.implementation == kind and opt.optimizer.defaults[kind.replace("for-loop", "foreach")] is (
        kind != "for-loop")
    for b, r, o in zip(base, ref, ours):
        change = (r - b).abs().max()
        assert change > 1e-3 and (o - r).abs().max() <= 1e-4 * change
    _, default_eps, _ = _run(TorchAdamW, TorchAdamWConfig, 1e-8, adamw_implementation=kind)
    assert max(float((o - r).abs().max()) for o, r in zip(default_eps, ref)) < 1e-5


def test_auto_is_fused_and_flat_params_are_supported():
    _, _, opt = _run(TorchAdamW, TorchAdamWConfig, 1e-8, steps=1)
    assert opt.implementation == "fused" and opt.supports_flat_params  # CPU and CUDA both have the fused kernel
    flat = torch.nn.Parameter(torch.zeros(10))
    flat_opt = TorchAdamW(TorchAdamWConfig(lr=[0.1], adam_betas="(0.9, 0.98)"), [flat])
    flat.grad = torch.ones(10)
    flat_opt.step()
    assert torch.allclose(flat.detach(), torch.full((10,), -0.1), atol=1e-6)  # the first Adam step is -lr sign(g)


def test_trains_and_resumes_through_fairseq_train(data_bin, tmp_path):
    """fairseq-train with --optimizer adamw_torch; its checkpoint (torch's AdamW state) loads through the safe
    loader when the same command goes on to more updates."""
    args = train_args(data_bin, tmp_path, "difformer_tiny", "--optimizer", "adamw_torch", "--adam-betas",
                      "(0.9,0.98)", "--weight-decay", "0.01", "--max-update", "3")
    first = run_cli(args)
    assert re.search(r"num_updates 3\b", first.stdout + first.stderr) and "adamw_torch" in first.stdout + first.stderr
    args[args.index("--max-update") + 1] = "5"
    resumed = run_cli(args)
    text = resumed.stdout + resumed.stderr
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 3 updates\)", text)
    assert re.search(r"num_updates 5\b", text)


def test_bf16_training_steps_the_fp32_masters(data_bin, tmp_path):
    """--bf16: fairseq keeps fp32 master copies and hands them to the optimizer, which steps them fused."""
    args = train_args(data_bin, tmp_path, "difformer_tiny", "--optimizer", "adamw_torch", "--bf16",
                      "--max-update", "2", "--log-interval", "1")
    text = run_cli(args).stdout
    assert re.search(r"num_updates 2\b", text) and re.search(r"loss \d+\.\d+", text)
