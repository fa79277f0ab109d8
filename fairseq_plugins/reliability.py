"""What the diffusion tasks add to fairseq for reliability (:class:`ReliabilityMixin`, mixed into both tasks).

Randomness per micro-batch
--------------------------
fairseq seeds the global torch RNG once per update with ``seed + num_updates`` (``Trainer._set_seed``),
the same seed on every data-parallel rank. Diffusion training draws its times, noise and masks from that
RNG, so in fairseq as is every rank would draw the *same* times and noise for its own examples, and
``--update-freq 2`` on one process would draw different ones than two processes. Here each micro-batch
is seeded from ``(seed, update, j)`` with ``j = i * world_size + rank`` (i: the micro-batch index within
the update). fairseq shards batch ``b`` of an update to rank ``b % world_size`` as micro-batch
``b // world_size``, so ``j`` is the global index of the batch in the update: N processes with
``--update-freq U`` and one process with ``--update-freq N*U`` draw identical randomness for identical
batches, ranks draw independent randomness, and a run resumed from a checkpoint draws exactly what the
uninterrupted run drew.

Validation draws are seeded per batch from ``(seed, the batch's example ids)`` in a forked RNG
(:func:`validation_seed`), so ``fairseq-validate --seed S`` reports the same Monte-Carlo ELBO every time for
a checkpoint, whatever the batch order or the number of processes, and validating during training leaves the
training RNG untouched.

Non-finite losses
-----------------
The criterion drops a batch whose loss is NaN/inf, reporting its ids (``criterions/text_diffusion_loss.py``):
it contributes a zero gradient and sample size 0. When every batch of an update was dropped on every
rank, :meth:`ReliabilityMixin.optimizer_step` skips the parameter update (fairseq would otherwise take an
Adam step on a zero gradient, which still moves the weights by momentum).

One-line errors for bad input
-----------------------------
- a checkpoint of a model that is not a difftext diffusion model (e.g. a fairseq ``transformer``);
- sentences longer than the model's positions at evaluation (fairseq raises a bare ``Exception``; in
  training fairseq skips them and logs how many);
- a damaged binarized split: an ``.idx`` that is not a fairseq index, a ``.bin`` whose size does not
  match its index (truncated), token ids outside the dictionary.
"""
import contextlib
import logging
import os
import re

import numpy as np
import torch
from fairseq import utils
from fairseq.data.indexed_dataset import MMapIndexedDataset
from fairseq.distributed import utils as distributed_utils

from fairseq_plugins.errors import DifftextError

logger = logging.getLogger(__name__)


def micro_batch_seed(seed: int, update: int, index: int) -> int:
    """A well-mixed 63-bit seed from (seed, update, global micro-batch index)."""
    return int(np.random.SeedSequence([seed, update, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


VALIDATION_STREAM = 0x76616C69  # separates validation seeds from any (seed, update, index) of training


def validation_seed(seed: int, ids) -> int:
    """A well-mixed 63-bit seed from (seed, the example ids of a validation batch)."""
    ids = [int(i) for i in ids]
    return int(np.random.SeedSequence([seed, VALIDATION_STREAM, *ids]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


@contextlib.contextmanager
def seeded_validation(seed: int, sample):
    """The global torch RNG (and the current CUDA device's) forked, then seeded for this validation batch."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    ids = sample["id"].tolist() if sample and "id" in sample else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(validation_seed(seed, ids))
        yield


class ReliabilityMixin:
    """Seeding per micro-batch, skipping all-dropped updates, and the checks listed in the module docstring.

    The task config needs ``seed: int = II("common.seed")`` (fairseq's own tasks use the same field).
    """

    _update_seen = None  # update number of the micro-batches counted below
    _micro_batches = 0  # micro-batches of that update seen so far on this rank
    _kept = 0  # of which were real batches (not fairseq's dummy batch) with a finite loss

    # --- training ------------------------------------------------------------------------------------
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        if update_num != self._update_seen:
            self._update_seen, self._micro_batches, self._kept = update_num, 0, 0
        world, rank = _data_parallel_world_and_rank()
        index = self._micro_batches * world + rank
        self._micro_batches += 1
        torch.manual_seed(micro_batch_seed(self.cfg.seed, update_num, index))
        loss, sample_size, logging_output = super().train_step(
            sample, model, criterion, optimizer, update_num, ignore_grad=ignore_grad, **kwargs
        )
        if not ignore_grad and not logging_output.get("nonfinite", 0):  # a real batch with a finite loss
            self._kept += 1
        return loss, sample_size, logging_output

    def optimizer_step(self, optimizer, model, update_num):
        if self._kept == 0 and self._update_seen == update_num and _all_gradients_zero(model):
            # Every batch of this update was dropped here, and the gradients all-reduced over the ranks
            # are zero, so every other rank dropped all of its batches too and skips as well.
            logger.warning(f"update {update_num + 1}: every batch had a non-finite loss; parameters not updated")
            return
        super().optimizer_step(optimizer, model, update_num)

    # --- checks ---------------------------------------------------------------------------------------
    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if not type(model).__module__.startswith("fairseq_plugins."):
            arch = getattr(cfg, "_name", None) or getattr(cfg, "arch", None)
            raise DifftextError(
                f"--task {self.cfg._name} trains and decodes difftext diffusion models, but this is a fairseq "
                f"{type(model).__name__} (arch {arch}); decode such a checkpoint with its own task (e.g. --task "
                "translation without --user-dir), or pass a Difformer / DiffuSeq / masked-diffusion checkpoint"
            )
        return model

    def filter_indices_by_size(self, indices, dataset, max_positions=None, ignore_invalid_inputs=False):
        if not ignore_invalid_inputs:
            _, ignored = dataset.filter_indices_by_size(indices, max_positions)
            if len(ignored) > 0:
                raise DifftextError(
                    f"{len(ignored):,} of {len(indices):,} sentences are longer than the model's maximum positions "
                    f"{max_positions} (e.g. sentence {ignored[0]}: {dataset.size(ignored[0])} tokens); pass "
                    "--skip-invalid-size-inputs-valid-test to leave them out, or train with larger "
                    "--max-source-positions / --max-target-positions"
                )
        return super().filter_indices_by_size(indices, dataset, max_positions, ignore_invalid_inputs)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        for data_dir in utils.split_paths(self.cfg.data):
            for prefix, dictionary in self._binarized_files(data_dir, split):
                check_binarized(prefix, dictionary)
        return super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)

    def _binarized_files(self, data_dir: str, split: str):
        """(path prefix, dictionary) of each ``{split}[.*].idx`` in data_dir."""
        if not os.path.isdir(data_dir):
            return
        langs = {getattr(self.cfg, "source_lang", None): self.source_dictionary,
                 getattr(self.cfg, "target_lang", None): self.target_dictionary}
        for name in sorted(os.listdir(data_dir)):
            m = re.fullmatch(re.escape(split) + r"(?:\.[^/]+)?\.idx", name)
            if m:
                prefix = os.path.join(data_dir, name[: -len(".idx")])
                lang = prefix.rsplit(".", 1)[-1] if "." in name[: -len(".idx")] else None
                yield prefix, langs.get(lang) or self.source_dictionary


def check_binarized(prefix: str, dictionary) -> None:
    """Raise a one-line :class:`DifftextError` if ``prefix.idx`` / ``prefix.bin`` (fairseq mmap format) are
    damaged: not an index, a data file whose size does not match the index, or ids outside the dictionary."""
    idx, data = prefix + ".idx", prefix + ".bin"
    fix = "re-run fairseq-preprocess (or the data script) to rebuild it"
    if not os.path.isfile(data):
        raise DifftextError(f"{data} is missing (its index {idx} is there); {fix}")
    with open(idx, "rb") as f:
        magic = f.read(len(MMapIndexedDataset.Index._HDR_MAGIC))
    if magic != MMapIndexedDataset.Index._HDR_MAGIC:
        if magic.startswith(b"TNTIDX"):  # fairseq's older non-mmap formats (--dataset-impl lazy/cached): unchecked
            return
        raise DifftextError(f"{idx} is not a fairseq index file (corrupted, or not fairseq-preprocess output); {fix}")
    try:
        index = MMapIndexedDataset.Index(idx)
        sizes, pointers, dtype = np.array(index.sizes), np.array(index._pointers), index.dtype
        del index
    except Exception as error:  # truncated header or arrays
        raise DifftextError(f"{idx} is truncated or corrupted ({type(error).__name__}: {error}); {fix}") from None
    expected = int(pointers[-1]) + int(sizes[-1]) * np.dtype(dtype).itemsize if len(sizes) else 0
    actual = os.path.getsize(data)
    if actual != expected:
        raise DifftextError(
            f"{data} has {actual:,} bytes but its index {idx} describes {expected:,} ({len(sizes):,} sentences): "
            f"the data file is truncated or belongs to another index; {fix}"
        )
    if expected:
        tokens = np.memmap(data, dtype=dtype, mode="r")
        low, high = int(tokens.min()), int(tokens.max())
        del tokens
        if low < 0 or high >= len(dictionary):
            raise DifftextError(
                f"{data} contains token id {high if high >= len(dictionary) else low}, outside the dictionary of "
                f"{len(dictionary)} types: the data file is corrupted or was binarized with another dictionary; {fix}"
            )


def _data_parallel_world_and_rank():
    if not torch.distributed.is_initialized():  # fairseq's get_data_parallel_rank() needs a process group
        return 1, 0
    return distributed_utils.get_data_parallel_world_size(), distributed_utils.get_data_parallel_rank()


def _all_gradients_zero(model) -> bool:
    return all(p.grad is None or not bool(p.grad.any()) for p in model.parameters())
