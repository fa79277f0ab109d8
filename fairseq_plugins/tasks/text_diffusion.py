"""The ``text_diffusion`` task: translation-style parallel data, decoded by a diffusion generator.

It reads ``fairseq-preprocess`` binarized parallel data exactly like fairseq's ``translation`` task
(joined dictionaries supported and required by models that share embeddings) and adds the decoding
options of diffusion models. ``fairseq-generate``/``fairseq-interactive``/the hub interface reach the
:class:`~fairseq_plugins.generator.DiffusionGenerator` through :meth:`build_generator`.
"""
import os
import re
from dataclasses import dataclass, field
from typing import Optional

from fairseq import utils
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II

from fairseq_plugins.errors import DifftextError
from fairseq_plugins.manifest import bind_data_manifest
from fairseq_plugins.reliability import ReliabilityMixin, seeded_validation

SELECTIONS = ChoiceEnum(["score", "mbr-bleu", "mbr-rouge"])
METHODS = ChoiceEnum(["ddim", "ddpm"])


@dataclass
class TextDiffusionConfig(TranslationConfig):
    decoding_steps: int = field(
        default=20, metadata={"help": "number of reverse-diffusion steps N at decoding (1 <= N <= T)"}
    )
    length_beam: int = field(
        default=1, metadata={"help": "K: decode the K most likely target lengths of the length predictor"}
    )
    noise_beam: int = field(
        default=1, metadata={"help": "M: independent noise samples per length (K x M candidates per input)"}
    )
    candidate_selection: SELECTIONS = field(
        default="score",
        metadata={"help": "pick among the K x M candidates by model score (mean token log-prob) or by "
                  "MBR with sentence-BLEU (mbr-bleu) or ROUGE-L F1 (mbr-rouge) utility"},
    )
    clamping: bool = field(
        default=False, metadata={"help": "replace z0_hat by its nearest embedding at every decoding step"}
    )
    decoding_method: METHODS = field(
        default="ddim", metadata={"help": "reverse update: deterministic DDIM or ancestral DDPM"}
    )
    decoding_noise_factor: Optional[float] = field(
        default=None, metadata={"help": "noise factor used at decoding (default: the training factor)"}
    )
    remove_repeats: bool = field(
        default=False, metadata={"help": "drop each output token equal to the token before it (\"a a man man\" -> "
                                 "\"a man\"), the de-duplication post-processing of non-autoregressive translation; "
                                 "before candidate selection, so scores and MBR see the shortened candidates"}
    )
    decoding_early_stop: int = field(
        default=0, metadata={"help": "leave out the last S of the N steps and output the z0_hat of step N - S, as "
                             "Difformer's reference generator (20 steps, early stop 5: 15 network calls; 0: all)"}
    )
    # masked (discrete) diffusion models
    sampler: Optional[str] = field(
        default=None,
        metadata={"help": "masked models: confidence (mask-predict, the default), ddpm (ancestral) or ddpm_cache "
                  "(ancestral, reusing the network output while no token changes; time-agnostic models)"},
    )
    token_temperature: Optional[float] = field(
        default=None, metadata={"help": "masked models: temperature of token draws (0 = greedy; default: greedy "
                                "for confidence, 1 for ddpm / ddpm_cache)"}
    )
    token_topk: int = field(default=0, metadata={"help": "masked models: draw among the k most likely tokens (0: off)"})
    token_topp: float = field(default=1.0, metadata={"help": "masked models: nucleus (top-p) mass of token draws (1: off)"})
    elbo_samples: int = field(
        default=1, metadata={"help": "masked models: Monte-Carlo time samples per sequence for the ELBO at "
                             "validation (fairseq-validate reports nelbo in nats/token and ppl)"}
    )
    seed: int = II("common.seed")  # seeds each training micro-batch, see fairseq_plugins/reliability.py


def check_data_paths(data: Optional[str], task: Optional[str] = None) -> list:
    """The data directories of --data (one-line errors when missing, or when their kind is not ``task``'s:
    text_diffusion reads parallel data (dict.<lang>.txt), text_diffusion_lm monolingual data (dict.txt))."""
    paths = utils.split_paths(data) if data else []
    if not paths:
        raise DifftextError("no data directory given; pass the fairseq-preprocess output dir as the first argument")
    for path in paths:
        if not os.path.isdir(path):
            raise DifftextError(
                f"data directory {path!r} does not exist; run fairseq-preprocess (or data_scripts/) "
                "first and pass its --destdir"
            )
    files = set(os.listdir(paths[0]))
    parallel = sorted(f for f in files if re.fullmatch(r"dict\.[^.]+\.txt", f))
    if task == "text_diffusion_lm" and "dict.txt" not in files and parallel:
        raise DifftextError(
            f"{paths[0]!r} holds parallel data ({', '.join(parallel)}), not monolingual text: train a "
            "sequence-to-sequence model on it with --task text_diffusion, or binarize text for a language model "
            "with data_scripts/prepare_lm.py"
        )
    if task == "text_diffusion" and not parallel and "dict.txt" in files:
        raise DifftextError(
            f"{paths[0]!r} holds monolingual data (dict.txt), not parallel text: train a language model on it "
            "with --task text_diffusion_lm, or binarize parallel text with data_scripts/ (e.g. prepare_multi30k.py)"
        )
    return paths


class DiffusionTaskMixin(ReliabilityMixin):
    """What both diffusion tasks add to their fairseq parent: ELBO validation with K time samples, and
    telling models whether they are being built to load a checkpoint (then e.g. --bert-init is skipped).
    ReliabilityMixin: per-micro-batch seeding, skipping non-finite batches, one-line errors for bad input."""

    building_from_checkpoint = False

    def build_model(self, cfg, from_checkpoint=False):
        self.building_from_checkpoint = from_checkpoint
        try:
            return super().build_model(cfg, from_checkpoint)
        finally:
            self.building_from_checkpoint = False

    def valid_step(self, sample, model, criterion):
        """The criterion averaged over --elbo-samples Monte-Carlo draws of time and masks, seeded per batch
        from (--seed, the batch's example ids): a checkpoint's bound is reproducible."""
        k = self.cfg.elbo_samples
        if k < 1:
            raise DifftextError(f"--elbo-samples must be >= 1 (got {k})")
        with seeded_validation(self.cfg.seed, sample):  # the same draws for a batch on every run
            results = [super(DiffusionTaskMixin, self).valid_step(sample, model, criterion) for _ in range(k)]
        if k == 1:
            return results[0]
        loss = sum(r[0] for r in results)
        sample_size = sum(r[1] for r in results)
        logging_output = {key: sum(r[2][key] for r in results) for key in results[0][2]}
        for key in ("ntokens", "nsentences"):  # counts of the data, not of the draws
            logging_output[key] = results[0][2][key]
        return loss, sample_size, logging_output


@register_task("text_diffusion", dataclass=TextDiffusionConfig)
class TextDiffusionTask(DiffusionTaskMixin, TranslationTask):
    """Sequence-to-sequence text diffusion over binarized parallel data."""

    cfg: TextDiffusionConfig

    @classmethod
    def setup_task(cls, cfg: TextDiffusionConfig, **kwargs):
        paths = check_data_paths(cfg.data, "text_diffusion")
        task = super().setup_task(cfg, **kwargs)
        bind_data_manifest(task, paths[0])  # dicts match manifest.json; checkpoints remember and check them
        return task

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if not hasattr(model, "decoding_problem"):
            arch = getattr(cfg, "_name", None) or getattr(cfg, "arch", None)
            raise DifftextError(
                f"--arch {arch} is a language model; --task text_diffusion trains sequence-to-sequence models "
                "(--arch difformer_small, diffuseq_small, mdlm_small, ...): use --task text_diffusion_lm for it"
            )
        return model

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        path = utils.split_paths(self.cfg.data)[0]
        src, tgt = self.cfg.source_lang, self.cfg.target_lang
        if not any(f.startswith(f"{split}.") for f in os.listdir(path)):
            raise DifftextError(
                f"no '{split}' split in {path!r} ({src}-{tgt}); binarize it with fairseq-preprocess "
                f"(--{'trainpref' if split == 'train' else split + 'pref'}) or choose another --gen-subset"
            )
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)

    def get_batch_iterator(self, dataset, *args, required_batch_size_multiple=1, **kwargs):
        # fairseq 0.12.3.1 drops the last batch when its size is not a multiple of
        # --required-batch-size-multiple; outside training that silently loses up to 7 sentences.
        if dataset is not self.datasets.get(self.cfg.train_subset):
            required_batch_size_multiple = 1
        return super().get_batch_iterator(
            dataset, *args, required_batch_size_multiple=required_batch_size_multiple, **kwargs
        )

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **unused):
        from fairseq_plugins.generator import DiffusionGenerator

        return DiffusionGenerator(models, self.target_dictionary, self.cfg, args)
