"""Criterion that sums the named loss terms a diffusion model returns (fairseq's ``nat_loss`` contract).

A model's forward returns ``{name: {"loss": scalar, "factor": w}}``; the criterion's loss is
``sum_w w * loss`` and every term is logged under its own name (per token, in nats), so
``fairseq-train`` prints e.g. ``mse``, ``anchor`` and ``length`` beside ``loss``.
"""
import math
from dataclasses import dataclass

import torch
from fairseq import utils
from fairseq.logging import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass


@dataclass
class TextDiffusionLossConfig(FairseqDataclass):
    pass


@register_criterion("text_diffusion_loss", dataclass=TextDiffusionLossConfig)
class TextDiffusionLoss(FairseqCriterion):
    def forward(self, model, sample, reduce=True):
        net_input = sample["net_input"]
        terms = model(net_input["src_tokens"], net_input["src_lengths"], tgt_tokens=sample["target"])
        loss = sum(term["loss"] * term["factor"] for term in terms.values())
        nsentences = sample["target"].size(0)
        logging_output = {
            "loss": loss.detach(),
            "ntokens": sample["ntokens"],
            "nsentences": nsentences,
            "sample_size": 1,  # terms are already means; fairseq divides gradients by sample_size
        }
        for name, term in terms.items():
            logging_output[name] = utils.item(term["loss"].detach())
        return loss, 1, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        loss = utils.item(sum(log.get("loss", 0) for log in logging_outputs))
        metrics.log_scalar("loss", loss / sample_size / math.log(2), sample_size, round=3)
        names = {k for log in logging_outputs for k in log} - {"loss", "ntokens", "nsentences", "sample_size"}
        for name in sorted(names):
            value = sum(log.get(name, 0) for log in logging_outputs)
            metrics.log_scalar(name, value / sample_size, sample_size, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
