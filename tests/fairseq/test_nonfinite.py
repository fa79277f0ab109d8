"""A batch with a non-finite loss is reported with its ids and skipped, not averaged into the model.

In-process through fairseq's real Trainer (tiny Difformer, real Multi30k batches); the NaN is injected by
wrapping the model's forward for one chosen batch.
"""
import logging

import pytest
import torch
from fairseq import metrics, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.trainer import Trainer

from tests.fairseq.cli_helpers import ROOT


def build(data_bin, seed=1, n_batches=2):
    """A real fairseq Trainer (tiny Difformer) and the first ``n_batches`` batches of the training data."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data_bin), "--user-dir", str(ROOT / "fairseq_plugins"), "--task", "text_diffusion",
        "--arch", "difformer_tiny", "--criterion", "text_diffusion_loss", "--optimizer", "adam", "--lr", "3e-3",
        "--max-tokens", "1024", "--cpu", "--seed", str(seed), "--num-workers", "0",
    ])
    cfg = convert_namespace_to_omegaconf(args)
    torch.manual_seed(cfg.common.seed)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model, criterion = task.build_model(cfg.model), task.build_criterion(cfg.criterion)
    batches = task.get_batch_iterator(task.dataset("train"), max_tokens=1024, seed=1).next_epoch_itr(shuffle=False)
    return Trainer(cfg, task, model, criterion), model, [next(batches) for _ in range(n_batches)]


def poison(model, bad):
    """Make the model's loss NaN on the batch ``bad`` only."""
    forward = model.forward

    def poisoned(src_tokens, src_lengths, **kwargs):
        terms = forward(src_tokens, src_lengths, **kwargs)
        if torch.equal(src_tokens, bad["net_input"]["src_tokens"]):
            terms["mse"]["loss"] = terms["mse"]["loss"] * float("nan")
        return terms

    model.forward = poisoned


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(autouse=True)
def fresh_metrics():
    metrics.reset()
    with metrics.aggregate(new_root=True):
        yield


def test_a_nan_batch_is_reported_and_adds_nothing_to_the_update(data_bin, caplog):
    trainer, model, (good, bad) = build(data_bin)
    poison(model, bad)
    with caplog.at_level(logging.WARNING):
        trainer.train_step([good, bad])  # no FloatingPointError
    warning = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert len(warning) == 1 and "mse=nan" in warning[0]
    assert f"ids [{', '.join(map(str, bad['id'].tolist()))}]" in warning[0]
    assert metrics.get_smoothed_values("train")["nonfinite"] == 1

    reference, ref_model, (good_again, _) = build(data_bin)
    assert torch.equal(good_again["id"], good["id"])
    reference.train_step([good_again])  # the same update without the bad batch
    after, want = snapshot(model), snapshot(ref_model)
    for name in want:
        assert torch.equal(after[name], want[name]), name
    assert trainer.get_num_updates() == 1


def test_an_update_of_only_nan_batches_leaves_the_parameters_unchanged(data_bin, caplog):
    trainer, model, (good, bad) = build(data_bin)
    poison(model, bad)
    trainer.train_step([good])
    before = snapshot(model)
    with caplog.at_level(logging.WARNING):
        trainer.train_step([bad])
    assert any("every batch had a non-finite loss; parameters not updated" in r.getMessage() for r in caplog.records)
    after = snapshot(model)
    assert all(torch.equal(after[k], before[k]) for k in before), "no Adam step on a zero gradient"
    assert trainer.get_num_updates() == 2
    trainer.train_step([good])  # and training goes on
    assert not all(torch.equal(v, before[k]) for k, v in snapshot(model).items())
