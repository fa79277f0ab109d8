"""Criterion that sums the named loss terms a diffusion model returns (fairseq's ``nat_loss`` contract).

A model's forward returns ``{name: {"loss": scalar, "factor": w}}``; the criterion's loss is
``sum_w w * loss`` and every term is logged under its own name (per token, in nats), so
``fairseq-train`` prints e.g. ``mse``, ``anchor`` and ``length`` beside ``loss``.

Masked-diffusion models add ``"elbo": {"nats": summed bound, "tokens": tokens it covers}``: logged as
``nelbo`` (the bound on -log p in nats per token, summed over batches before dividing) and ``ppl``
(its exponential, an upper bound on perplexity).

A training batch whose loss is NaN or infinite is reported with its ids (``sample["id"]``, the line
numbers in the binarized split) and dropped: it contributes a zero gradient and sample size 0, and the
``nonfinite`` counter is logged. (fairseq itself would only notice the NaN gradient norm after the
backward pass and stop training with ``FloatingPointError``.) See ``fairseq_plugins/reliability.py`` for
the update in which every batch was dropped.
"""
import logging
import math
from dataclasses import dataclass

import torch
from fairseq import utils
from fairseq.logging import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

logger = logging.getLogger(__name__)


@dataclass
class TextDiffusionLossConfig(FairseqDataclass):
    pass


@register_criterion("text_diffusion_loss", dataclass=TextDiffusionLossConfig)
class TextDiffusionLoss(FairseqCriterion):
    def forward(self, model, sample, reduce=True):
        net_input = sample["net_input"]
        terms = model(net_input["src_tokens"], net_input["src_lengths"], tgt_tokens=sample["target"])
        elbo = terms.pop("elbo", None)
        loss = sum(term["loss"] * term["factor"] for term in terms.values())
        if model.training and not bool(torch.isfinite(loss.detach()).all()):
            return self._drop_nonfinite(model, sample, terms)
        nsentences = sample["target"].size(0)
        logging_output = {
            "loss": loss.detach(),
            "ntokens": sample["ntokens"],
            "nsentences": nsentences,
            "sample_size": 1,  # terms are already means; fairseq divides gradients by sample_size
        }
        for name, term in terms.items():
            logging_output[name] = utils.item(term["loss"].detach())
        if elbo is not None:
            logging_output["elbo_nats"] = utils.item(elbo["nats"])
            logging_output["elbo_tokens"] = utils.item(elbo["tokens"])
        return loss, 1, logging_output

    @staticmethod
    def _drop_nonfinite(model, sample, terms):
        """Report a non-finite training loss with the batch's ids; drop the batch (zero gradient, size 0)."""
        bad = ", ".join(f"{name}={float(term['loss'].detach().float().sum())}" for name, term in terms.items()
                        if not bool(torch.isfinite(term["loss"].detach()).all()))
        ids = sample["id"].tolist() if "id" in sample else []
        shown = ", ".join(map(str, ids[:50])) + (", ..." if len(ids) > 50 else "")
        logger.warning(f"non-finite loss ({bad}) in a batch of {len(ids)} sentences with ids [{shown}]; "
                       "the batch is skipped (it adds nothing to this update)")
        # A zero that reaches every parameter: zero gradients, and DDP still sees every parameter used.
        zero = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
        return zero, 0, {"loss": 0.0, "ntokens": 0, "nsentences": 0, "sample_size": 0, "nonfinite": 1}

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        nonfinite = sum(log.get("nonfinite", 0) for log in logging_outputs)
        if nonfinite:
            metrics.log_scalar_sum("nonfinite", nonfinite, priority=900)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        if sample_size == 0:  # every batch of this report was dropped
            return
        loss = utils.item(sum(log.get("loss", 0) for log in logging_outputs))
        metrics.log_scalar("loss", loss / sample_size / math.log(2), sample_size, round=3)
        elbo_tokens = sum(log.get("elbo_tokens", 0) for log in logging_outputs)
        if elbo_tokens > 0:
            nats = sum(log.get("elbo_nats", 0) for log in logging_outputs)
            metrics.log_scalar("nelbo", nats / elbo_tokens, elbo_tokens, round=4)
            metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nelbo"].avg, base=math.e))
        reserved = {"loss", "ntokens", "nsentences", "sample_size", "elbo_nats", "elbo_tokens", "nonfinite"}
        names = {k for log in logging_outputs for k in log} - reserved
        for name in sorted(names):
            value = sum(log.get(name, 0) for log in logging_outputs)
            metrics.log_scalar(name, value / sample_size, sample_size, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
