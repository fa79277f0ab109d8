"""Determinism: the same --seed gives the same training losses and the same decoded samples; another seed
gives others. Training through fairseq's real Trainer in-process (see test_nonfinite.py), decoding through the
Python API with DDPM and two noise samples per sentence. (The fairseq-generate --seed path is tested in
test_cli_e2e.py; bit-identical checkpoints of two runs with one seed in test_resume.py.)
"""
import pytest
import torch
from fairseq import metrics, utils

from tests.fairseq.test_nonfinite import build


def training_losses(data_bin, seed):
    metrics.reset()
    with metrics.aggregate(new_root=True):
        trainer, _, batches = build(data_bin, seed=seed, n_batches=3)
        return [float(trainer.train_step([b])["loss"]) for b in batches]


def test_same_seed_same_training_losses_other_seed_differs(data_bin):
    first, again, other = (training_losses(data_bin, seed) for seed in (1, 1, 2))
    assert len(first) == 3 and first == again
    assert all(a != b for a, b in zip(first, other))


@pytest.fixture(scope="module")
def hub(data_bin, difformer_dir):
    from fairseq_plugins.hub import load

    return load(difformer_dir / "checkpoint_last.pt", data_bin, sentencepiece_model=data_bin / "spm.model",
                decoding_steps=4, decoding_method="ddpm", noise_beam=2)


def test_noise_beam_samples_follow_the_seed(hub):
    sentences = [hub.encode(s) for s in ("Ein Hund rennt über die Wiese.", "Zwei Männer spielen Fußball.",
                                         "Eine Frau mit einem roten Hut liest ein Buch.")]

    def decode(seed):
        utils.set_torch_seed(seed)  # what fairseq-generate does with --seed
        return [[h["tokens"].tolist() for h in hyps] for hyps in hub.generate(sentences)]

    first, again, other = decode(1), decode(1), decode(2)
    assert all(len(c) == 2 for c in first), "two noise samples per sentence"
    assert first == again
    assert first != other, "another seed draws other noise"
    assert any(a != b for a, b in first), "the two noise samples of a sentence differ"
    assert torch.initial_seed() == 2
