"""FLOPs and time per target token of a training step (forward and backward) of suite models, on the same batches.

Item 1's evidence for DiffuSeq: its training cost comes from its layout (one stack over the source and a
fixed-length target region), not from overhead. ``--exact-region`` adds DiffuSeq with its region cut to each
batch's longest target (a what-if, not the paper's method: decoding would then need a length), which is what that
layout costs at best at the suite's size. FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``
(matrix products and attention); the times are medians of alternated rounds, on one torch thread.

    python bench/step_flops.py --data runs/bench45/data/multi30k --models ar,diffuseq --exact-region \
        --out bench/budget45/results/step_flops.json
"""
import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import git_commit, machine, now, relative, write_json  # noqa: E402
from bench.models import specs  # noqa: E402
from bench.pipeline import model_args  # noqa: E402

EXACT = "diffuseq_exact_region"


def build(name: str, size: str, data: Path, max_tokens: int, count: int):
    """The model and criterion of suite model ``name`` as fairseq-train builds them, in training mode, and the
    first ``count`` training batches of its epoch iterator (seed 1: the suite's batches)."""
    from fairseq import options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [*model_args(specs(size)[name], data, max_tokens), "--cpu", "--num-workers", "0"]
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=argv)
    utils.import_user_module(args)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model, criterion = task.build_model(cfg.model), task.build_criterion(cfg.criterion)
    task.load_dataset("train")
    positions = utils.resolve_max_positions(task.max_positions(), model.max_positions())
    epoch = task.get_batch_iterator(task.dataset("train"), max_tokens=max_tokens, max_positions=positions, seed=1,
                                    ignore_invalid_inputs=True).next_epoch_itr(shuffle=True)
    batches = [next(epoch) for _ in range(count)]
    return model.train(), criterion, batches


def step(model, criterion, batch, exact_region: bool) -> None:
    """One forward and backward pass of the criterion (no optimizer step: the same cost for every model)."""
    fixed = model.cfg.max_target_positions if exact_region else None
    if exact_region:
        model.cfg.max_target_positions = batch["target"].size(1)  # the longest target of the batch, with its eos
    try:
        loss, _, _ = criterion(model, batch)
        loss.backward()
    finally:
        if exact_region:
            model.cfg.max_target_positions = fixed
    model.zero_grad(set_to_none=True)


def measure(variants: Dict[str, tuple], flop_batches: int, rounds: int) -> Dict[str, Dict]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    for name, (model, criterion, batches, exact) in variants.items():
        counted = batches[:flop_batches]
        with FlopCounterMode(display=False) as counter:
            for batch in counted:
                step(model, criterion, batch, exact)
        tokens = sum(b["ntokens"] for b in counted)
        out[name] = {"flop_batches": len(counted), "flop_target_tokens": tokens,
                     "gflop_per_target_token": counter.get_total_flops() / tokens / 1e9, "ms_per_target_token": []}
    for _ in range(rounds):  # alternated, so that a slow spell of the machine falls on every variant alike
        for name, (model, criterion, batches, exact) in variants.items():
            torch.manual_seed(1)
            step(model, criterion, batches[0], exact)  # warm-up
            start = time.perf_counter()
            for batch in batches:
                step(model, criterion, batch, exact)
            seconds = time.perf_counter() - start
            out[name]["ms_per_target_token"].append(1000 * seconds / sum(b["ntokens"] for b in batches))
    for name, (_, _, batches, _) in variants.items():
        r = out[name]
        r.update(timed_batches=len(batches), timed_target_tokens=sum(b["ntokens"] for b in batches),
                 ms_per_target_token_median=statistics.median(r["ms_per_target_token"]))
    if "ar" in out:
        for r in out.values():
            r["flops_x_ar"] = r["gflop_per_target_token"] / out["ar"]["gflop_per_target_token"]
            r["time_x_ar"] = r["ms_per_target_token_median"] / out["ar"]["ms_per_target_token_median"]
    return out


def main(argv: List[str] = None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the suite's translation data-bin")
    p.add_argument("--models", default="ar,diffuseq", help="suite model names, comma-separated (default: ar,diffuseq)")
    p.add_argument("--exact-region", action="store_true",
                   help="also DiffuSeq with its target region cut to each batch's longest target")
    p.add_argument("--size", default="small", choices=["small", "tiny"], help="the suite's size (tiny: tests)")
    p.add_argument("--max-tokens", type=int, default=1024, help="tokens per batch (the suite's default: 1024)")
    p.add_argument("--batches", type=int, default=40, help="batches timed per round")
    p.add_argument("--flop-batches", type=int, default=10, help="batches whose FLOPs are counted")
    p.add_argument("--rounds", type=int, default=3, help="alternated timing rounds")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=Path, help="JSON file to write")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    names = [m for m in args.models.split(",") if m]
    known = specs(args.size)
    unknown = [m for m in names if m not in known or known[m].lm]
    if unknown:
        p.error(f"not a translation model of the suite: {', '.join(unknown)}; choose from "
                f"{', '.join(k for k, s in known.items() if not s.lm)}")
    if args.exact_region and "diffuseq" not in names:
        names.append("diffuseq")
    count = max(args.batches, args.flop_batches)
    variants = {}
    for name in names:
        model, criterion, batches = build(name, args.size, args.data, args.max_tokens, count)
        variants[name] = (model, criterion, batches[:args.batches], False)
        if name == "diffuseq" and args.exact_region:
            variants[EXACT] = (model, criterion, batches[:args.batches], True)
    result = {"models": measure(variants, args.flop_batches, args.rounds), "machine": machine(args.threads),
              "commit": git_commit(), "date": now(),
              "command": relative([sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)])}
    for name, r in result["models"].items():
        print(f"{name}: {r['gflop_per_target_token'] * 1000:.2f} GFLOP per 1000 target tokens"
              + (f" ({r['flops_x_ar']:.2f}x AR)" if "flops_x_ar" in r else "")
              + f", {r['ms_per_target_token_median']:.4f} ms per target token"
              + (f" ({r['time_x_ar']:.2f}x AR)" if "time_x_ar" in r else ""))
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
