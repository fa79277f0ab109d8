"""bench/step_flops.py: FLOPs and time per target token of a training step, with DiffuSeq's what-if region."""
import pytest

from bench import step_flops


def test_counts_flops_per_target_token_and_diffuseq_exact_region(data_bin, tmp_path):
    out = tmp_path / "flops.json"
    result = step_flops.main(["--data", str(data_bin), "--size", "tiny", "--exact-region", "--batches", "3",
                              "--flop-batches", "2", "--rounds", "2", "--max-tokens", "256", "--out", str(out)])
    models = result["models"]
    assert set(models) == {"ar", "diffuseq", step_flops.EXACT}  # --exact-region brings DiffuSeq in
    for r in models.values():
        assert r["gflop_per_target_token"] > 0 and r["flop_batches"] == 2 and r["timed_batches"] == 3
        assert len(r["ms_per_target_token"]) == 2 and all(x > 0 for x in r["ms_per_target_token"])
    assert models["ar"]["flops_x_ar"] == 1.0
    fixed, exact = models["diffuseq"], models[step_flops.EXACT]
    # the same batches (the AR model's may differ at this size: its length filter is not DiffuSeq's region); the
    # fixed 64-position region holds far more positions than the slice's targets
    assert fixed["flop_target_tokens"] == exact["flop_target_tokens"]
    assert fixed["gflop_per_target_token"] > 1.5 * exact["gflop_per_target_token"]
    assert out.is_file() and result["command"].startswith("python bench/step_flops.py --data ")


def test_exact_region_step_restores_the_region_and_uses_the_batch_length(data_bin):
    model, criterion, batches = step_flops.build("diffuseq", "tiny", data_bin, 256, 1)
    seen = []
    layout = model.layout
    model.layout = lambda src, tgt=None: seen.append(model.cfg.max_target_positions) or layout(src, tgt)
    step_flops.step(model, criterion, batches[0], exact_region=True)
    step_flops.step(model, criterion, batches[0], exact_region=False)
    assert seen == [batches[0]["target"].size(1), 64] and model.cfg.max_target_positions == 64
    assert all(p.grad is None for p in model.parameters())  # each step leaves no gradient behind


def test_unknown_model_is_one_line_error(data_bin, capsys):
    with pytest.raises(SystemExit):
        step_flops.main(["--data", str(data_bin), "--models", "ar,transformer_lm"])
    assert "not a translation model of the suite: transformer_lm" in capsys.readouterr().err
