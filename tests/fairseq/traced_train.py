"""``fairseq-train`` with two test hooks, for the reliability tests (run it like fairseq-train).

- ``DIFFTEXT_TRACE_DIR``: every training micro-batch appends one JSON line to ``rank<R>.jsonl`` there:
  the update number, the example ids of the batch, whether it is fairseq's dummy batch, and a SHA-1 of
  all parameters before the step (identical across ranks iff the replicas are in sync).
- ``DIFFTEXT_KILL_AT_UPDATE=N``: the process SIGKILLs itself (no cleanup, like a crash or the OOM
  killer) when update N is about to start.

The hooks wrap ``ReliabilityMixin.train_step`` at import time. Processes that fairseq spawns
re-import this file as ``__mp_main__``, and torchrun runs it in every process, so all ranks are traced.
"""
import hashlib
import json
import os
import signal
import sys

import torch
from fairseq_cli.train import cli_main

from fairseq_plugins.reliability import ReliabilityMixin

_train_step = ReliabilityMixin.train_step


def _checksum(model) -> str:
    h = hashlib.sha1()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def traced_train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
    kill_at = os.environ.get("DIFFTEXT_KILL_AT_UPDATE")
    if kill_at and update_num == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)
    trace = os.environ.get("DIFFTEXT_TRACE_DIR")
    if trace:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        record = {
            "update": update_num,
            "dummy": bool(ignore_grad),
            "ids": [] if ignore_grad else sample["id"].tolist(),
            "params": _checksum(model),
        }
        with open(os.path.join(trace, f"rank{rank}.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
    return _train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=ignore_grad, **kwargs)


ReliabilityMixin.train_step = traced_train_step

if __name__ == "__main__":
    sys.argv[0] = "fairseq-train"
    sys.exit(cli_main())
