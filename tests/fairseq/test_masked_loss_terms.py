"""The seq2seq masked models weigh their length term on the scale of their objective.

DiffusionBERT's d3pm objective trains on one step of a T-step bound (about 1/180 of a cross-entropy per token at
T = 2048); with the length loss at a fixed 0.1 the length predictor drove the shared encoder's gradient (10x the
diffusion term, clipped updates) and the model collapsed to repeated tokens. In-process on real Multi30k batches.
"""
import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from tests.fairseq.cli_helpers import ROOT


def terms_of(data_bin, arch, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data_bin), "--user-dir", str(ROOT / "fairseq_plugins"), "--task", "text_diffusion", "--arch", arch,
        "--criterion", "text_diffusion_loss", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "1024",
        "--cpu", "--seed", "1", "--num-workers", "0", *extra,
    ])
    cfg = convert_namespace_to_omegaconf(args)
    torch.manual_seed(1)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model = task.build_model(cfg.model)
    batch = next(task.get_batch_iterator(task.dataset("train"), max_tokens=1024, seed=1).next_epoch_itr(shuffle=False))
    net = batch["net_input"]
    return model, model(net["src_tokens"], net["src_lengths"], tgt_tokens=batch["target"])


@pytest.mark.parametrize("arch", ["mdlm_tiny", "md4_tiny", "diffusionbert_tiny"])
def test_length_term_is_weighed_on_the_objectives_scale(data_bin, arch):
    model, terms = terms_of(data_bin, arch, "--length-loss-factor", "0.2")
    weight = model.diffusion.token_weight
    assert terms["length"]["factor"] == pytest.approx(0.2 * weight)
    if arch.startswith("diffusionbert"):
        assert weight == pytest.approx(1 / 2048 + 1e-2 * 2049 / 4096)
    else:
        assert weight == 1.0
    # an untrained model: the weighted length term is a small part of the loss for every objective
    diffusion = terms["diffusion"]["loss"].item()
    length = terms["length"]["loss"].item() * terms["length"]["factor"]
    assert length < 0.5 * diffusion
