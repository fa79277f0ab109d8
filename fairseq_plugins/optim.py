"""``--optimizer adamw_torch``: torch's AdamW with its multi-tensor (foreach) or fused kernels, for fairseq.

fairseq's ``adam`` is AdamW (decoupled weight decay) and uses apex's FusedAdam when apex is installed; without
apex it steps every parameter tensor on its own, about ten kernels each. On the benchmark's H200 that was ~2,000
of the ~4,000 kernel launches of an fp32 update, on a host-bound step (bench/budget45, section 7). This optimizer
is the same update through ``torch.optim.AdamW``: ``fused`` (one kernel over every tensor; CUDA and CPU),
``foreach`` (one kernel per operation over a list of tensors) or ``for-loop``, chosen by
``--adamw-implementation`` (``auto``: fused where torch has the kernel, else foreach). On the benchmark's
Xeon (one thread, 5.8M parameters in 98 tensors) a step took 7.7 ms fused, 24 ms foreach, 23 ms as a loop and
19 ms with fairseq's ``adam``. It takes the flat parameter buffer of fairseq's ``--fp16`` optimizer as well as
the per-tensor fp32 masters of ``--bf16``.

One difference from fairseq's ``adam``: torch adds eps to the bias-corrected sqrt(v_hat), fairseq to sqrt(v)
before the correction, so fairseq's eps is larger by 1 / sqrt(1 - beta2^step) in the early updates: with eps
1e-8 the updates differ only where a gradient's running rms is near eps; otherwise they agree to float rounding
(a test checks both against each other). Checkpoints of one optimizer do not resume the other
(``--reset-optimizer``).
"""
import ast
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, List

import torch
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II, OmegaConf

IMPLEMENTATIONS = ChoiceEnum(["auto", "fused", "foreach", "for-loop"])


@dataclass
class TorchAdamWConfig(FairseqDataclass):
    adam_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas for the Adam optimizer"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon for the Adam optimizer"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay (AdamW)"})
    adamw_implementation: IMPLEMENTATIONS = field(
        default="auto", metadata={"help": "torch's fused kernel, its foreach kernels or a loop over tensors "
                                          "(auto: fused where torch has it, else foreach)"})
    lr: List[float] = II("optimization.lr")


@register_optimizer("adamw_torch", dataclass=TorchAdamWConfig)
class TorchAdamW(FairseqOptimizer):
    """fairseq's AdamW update (``--optimizer adam``) through ``torch.optim.AdamW``'s multi-tensor kernels."""

    def __init__(self, cfg: TorchAdamWConfig, params):
        super().__init__(cfg)
        params = list(params)
        kind = cfg.adamw_implementation
        self.implementation = "fused" if kind == "auto" else kind
        try:
            self._optimizer = self._build(params, self.implementation)
        except RuntimeError:  # auto: a device or dtype without the fused kernel
            if kind != "auto":
                raise
            self._optimizer, self.implementation = self._build(params, "foreach"), "foreach"

    def _build(self, params, kind):
        return torch.optim.AdamW(params, **self.optimizer_config, fused=kind == "fused", foreach=kind == "foreach")

    @property
    def optimizer_config(self):
        """Arguments that override those stored in a checkpoint (fairseq's convention), as its ``adam``."""
        lr = self.cfg.lr[0] if isinstance(self.cfg.lr, Collection) else self.cfg.lr
        betas = self.cfg.adam_betas
        betas = ast.literal_eval(betas) if isinstance(betas, str) else (  # fairseq's flag format: "(0.9, 0.98)"
            OmegaConf.to_container(betas) if OmegaConf.is_config(betas) else betas)
        return {"lr": lr, "betas": tuple(betas), "eps": self.cfg.adam_eps, "weight_decay": self.cfg.weight_decay}

    @property
    def supports_flat_params(self):
        return True  # an update over one flat fp32 buffer (fairseq's --fp16 optimizer) is the same update
