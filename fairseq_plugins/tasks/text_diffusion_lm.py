"""The ``text_diffusion_lm`` task: unconditional masked-diffusion language modelling.

fairseq's ``language_modeling`` task supplies the data (``fairseq-preprocess --only-source`` output,
packed into blocks of ``--tokens-per-sample`` tokens with ``--sample-break-mode none``); each block is
one sequence x0 of the diffusion model. Training minimises the model's objective; ``fairseq-validate``
reports the ELBO as ``nelbo`` (nats per token, an upper bound on the negative log-likelihood) and
``ppl`` (exp(nelbo), an upper bound on perplexity), averaged over ``--elbo-samples`` Monte-Carlo draws
of time and masks per sequence. Samples: ``python -m fairseq_plugins.sample``.
"""
from dataclasses import dataclass, field

from fairseq.models import ARCH_MODEL_NAME_REGISTRY
from fairseq.tasks import register_task
from omegaconf import II
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from fairseq_plugins.errors import DifftextError
from fairseq_plugins.manifest import bind_data_manifest
from fairseq_plugins.tasks.text_diffusion import DiffusionTaskMixin, check_data_paths


@dataclass
class TextDiffusionLMConfig(LanguageModelingConfig):
    elbo_samples: int = field(
        default=1, metadata={"help": "Monte-Carlo time samples per sequence for the ELBO at validation"}
    )
    seed: int = II("common.seed")  # seeds each training micro-batch, see fairseq_plugins/reliability.py


@register_task("text_diffusion_lm", dataclass=TextDiffusionLMConfig)
class TextDiffusionLMTask(DiffusionTaskMixin, LanguageModelingTask):
    """Masked-diffusion language modelling over binarized monolingual data."""

    def __init__(self, args, dictionary, output_dictionary=None, targets=None):
        super().__init__(args, dictionary, output_dictionary, targets=targets)
        self.cfg = args  # fairseq's LM task is a legacy task (self.args); the diffusion mixins read self.cfg

    @classmethod
    def setup_task(cls, args, **kwargs):
        paths = check_data_paths(args.data, "text_diffusion_lm")
        task = super().setup_task(args, **kwargs)
        bind_data_manifest(task, paths[0])
        return task

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        try:
            super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        except FileNotFoundError:
            raise DifftextError(
                f"no '{split}' split in {self.args.data!r}; binarize it with fairseq-preprocess --only-source "
                "(or data_scripts/prepare_lm.py) or choose another --valid-subset"
            ) from None

    def build_model(self, cfg, from_checkpoint=False):
        arch = getattr(cfg, "arch", None) or getattr(cfg, "_name", None)
        if ARCH_MODEL_NAME_REGISTRY.get(arch, arch) != "masked_diffusion_lm":
            raise DifftextError(
                "--task text_diffusion_lm trains masked-diffusion language models (--arch mdlm_lm_small, "
                f"md4_lm_small, genmd4_lm_small, diffusionbert_lm_small, ...), not --arch {arch}"
            )
        return super().build_model(cfg, from_checkpoint)

    def build_generator(self, models, args, **unused):
        raise DifftextError(
            "language models are sampled with `python -m fairseq_plugins.sample`, not fairseq-generate"
        )
