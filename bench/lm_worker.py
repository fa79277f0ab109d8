"""Language-model evaluation of one checkpoint: perplexity (bound) with fairseq-validate, samples per second.

    python bench/lm_worker.py --plan PLAN.json --out RESULTS.json

PLAN: {"data", "checkpoint", "family" (lm_ar | lm_discrete), "validate": [fairseq-validate flags],
"elbo_samples": [K...], "seeds": [...], "sampling": {"num_samples", "length", "steps", "batch_size"}, "cpu",
"curve": [{"fraction", "train_minutes", "updates", "checkpoint"}: the learning curve, the last model the plan's]}.

Masked-diffusion LMs: ``fairseq-validate --elbo-samples K --seed S`` (the real validator, in this process) for
every K and seed gives the ELBO bound ``nelbo`` (nats/token) and ``ppl`` = exp(nelbo); the spread over seeds
at each K shows how many Monte-Carlo time samples the bound needs. The AR transformer LM is exact: one run,
fairseq's ``loss`` in bits/token and ``ppl`` = 2**loss. Learning curve: each model of the plan's ``curve`` at the
largest K and the first seed (the final model's run at them is reused), so that the points compare. Samples/s:
``fairseq_plugins.sample`` (diffusion) or fairseq's SequenceGenerator with unrestricted sampling (AR), sequences of
``length`` tokens, timed here.
Context check (masked-diffusion LMs): the cross-entropy of masked tokens in the first 64 whole validation blocks when
15%, 50% and all of each block is masked. A model that reads its context predicts a lightly-masked token far
better than a fully-masked one; equal figures mean it sits at the unigram level.
"""
import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import USER_DIR, peak_rss_mb, read_json, relative, tool, write_json  # noqa: E402


class Captured(logging.Handler):
    """The JSON stats line fairseq's progress bar prints at the end of validation."""

    def __init__(self):
        super().__init__()
        self.stats = None

    def emit(self, record):
        try:
            stats = json.loads(record.getMessage())
        except ValueError:
            return
        if isinstance(stats, dict) and "valid_ppl" in stats:
            self.stats = stats


def validate(plan, k: int, seed: int, checkpoint: Optional[str] = None):
    """fairseq-validate of ``checkpoint`` (default: the plan's) with K time samples (masked LMs) and a seed."""
    from fairseq import distributed_utils, options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import validate as fairseq_validate

    argv = [plan["data"], "--user-dir", str(USER_DIR), "--path", checkpoint or plan["checkpoint"],
            "--valid-subset", "valid", "--seed", str(seed), "--log-format", "json", "--num-workers", "0",
            *plan["validate"]]
    if plan["family"] == "lm_discrete":
        argv += ["--elbo-samples", str(k)]
    args = options.parse_args_and_arch(options.get_validation_parser(), input_args=argv)
    overrides = options.parse_args_and_arch(options.get_validation_parser(), input_args=argv, suppress_defaults=True)
    handler = Captured()
    logging.getLogger("fairseq.logging.progress_bar").addHandler(handler)
    start = time.perf_counter()
    try:
        distributed_utils.call_main(convert_namespace_to_omegaconf(args), fairseq_validate.main,
                                    override_args=overrides)
    finally:
        logging.getLogger("fairseq.logging.progress_bar").removeHandler(handler)
    if handler.stats is None:
        raise RuntimeError("fairseq-validate printed no valid_ppl")
    s = handler.stats
    out = {"elbo_samples": k, "seed": seed, "ppl": float(s["valid_ppl"]), "seconds": time.perf_counter() - start,
           "command": relative([tool("fairseq-validate"), *argv])}
    if "valid_nelbo" in s:
        out["nelbo_nats"] = float(s["valid_nelbo"])
    else:
        out["loss_bits"] = float(s["valid_loss"])
    return out


def sample_diffusion(plan):
    from fairseq_plugins import sample as sampler

    cfg = plan["sampling"]
    argv = [plan["data"], "--path", plan["checkpoint"], "--num-samples", str(cfg["num_samples"]), "--length",
            str(cfg["length"]), "--decoding-steps", str(cfg["steps"]), "--batch-size", str(cfg["batch_size"])]
    argv += ["--cpu"] if plan["cpu"] else []
    args = sampler.parse_args(argv)
    import torch

    device = torch.device("cpu" if plan["cpu"] or not torch.cuda.is_available() else "cuda")
    model, _task = sampler.load_language_model(args.path, args.data, device)
    sampler.sample(model, args, device)  # warm-up (first-call allocations)
    start = time.perf_counter()
    tokens = sampler.sample(model, args, device)
    _sync(torch)
    seconds = time.perf_counter() - start
    return {"samples_per_s": len(tokens) / seconds, "seconds": seconds, **cfg,
            "command": relative(["python", "-m", "fairseq_plugins.sample", *argv])}


CONTEXT_RATES = (0.15, 0.5, 1.0)


def context_check(plan, blocks: int = 64):
    import torch

    from fairseq_plugins import sample as sampler

    model, task = sampler.load_language_model(plan["checkpoint"], plan["data"], torch.device("cpu"))
    task.load_dataset("valid")
    data = task.dataset("valid")
    whole = (t for t in (data[i]["target"] for i in range(len(data))) if len(t) == task.args.tokens_per_sample)
    full = list(itertools.islice(whole, blocks))  # whole blocks only (the last block of a split is shorter)
    if not full:
        return {"error": f"no validation block of {task.args.tokens_per_sample} tokens"}
    x = torch.stack(full)
    out = {"blocks": len(x), "tokens_per_block": x.size(1)}
    generator = torch.Generator().manual_seed(0)
    for rate in CONTEXT_RATES:
        masked = (torch.rand(x.shape, generator=generator) < rate) & model.maskable(x)
        z = torch.where(masked, torch.full_like(x, model.mask_id), x)
        with torch.no_grad():
            logits = model.denoise(z, torch.full((len(x),), rate)).float()
        logits[:, list(model.forbidden_ids) + [model.mask_id]] = float("-inf")
        out[f"ce_nats_{round(rate * 100)}pct_masked"] = torch.nn.functional.cross_entropy(logits, x[masked]).item()
    return out


def sample_ar(plan):
    """Unconditional ancestral sampling (full softmax, temperature 1) of ``length`` tokens: the eos that
    starts every sequence, then ``length - 1`` drawn tokens (fairseq keeps one position for the final eos)."""
    import torch
    from fairseq import checkpoint_utils
    from fairseq.dataclass.configs import GenerationConfig

    import fairseq_plugins  # noqa: F401  (safe checkpoint loading)

    cfg = plan["sampling"]
    device = torch.device("cpu" if plan["cpu"] or not torch.cuda.is_available() else "cuda")
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([plan["checkpoint"]],
                                                                      arg_overrides={"data": plan["data"]})
    models = [m.to(device).eval() for m in models]
    drawn = cfg["length"] - 1
    gen = GenerationConfig(sampling=True, beam=1, sampling_topk=-1, max_len_a=0, max_len_b=drawn, min_len=drawn)
    generator = task.build_generator(models, gen)
    eos = task.source_dictionary.eos()

    def run():
        out = 0
        for start in range(0, cfg["num_samples"], cfg["batch_size"]):
            n = min(cfg["batch_size"], cfg["num_samples"] - start)
            src = torch.full((n, 1), eos, dtype=torch.long, device=device)
            sample = {"net_input": {"src_tokens": src, "src_lengths": torch.ones(n, dtype=torch.long, device=device)}}
            with torch.no_grad():
                out += len(task.inference_step(generator, models, sample))
        return out

    run()
    start = time.perf_counter()
    n = run()
    _sync(torch)
    seconds = time.perf_counter() - start
    cfg = {k: v for k, v in cfg.items() if k != "steps"}  # one network call per token
    return {"samples_per_s": n / seconds, "seconds": seconds, **cfg, "command": "fairseq SequenceGenerator "
            f"(--sampling --beam 1 --sampling-topk -1 --min-len {drawn} --max-len-b {drawn}, after an eos)"}


def learning_curve(plan, k: int, seed: int, final_runs):
    """Perplexity (bound) at each learning-curve point at K and the seed: the final model's run (already made,
    ``final_runs``) and the earlier models validated here. -> [{fraction, train_minutes, updates, ppl, ...}]"""
    points = []
    for point in plan.get("curve", []):
        if point["checkpoint"] == plan["checkpoint"]:
            run = next(r for r in final_runs if r["elbo_samples"] == k and r["seed"] == seed)
        else:
            run = validate(plan, k, seed, checkpoint=point["checkpoint"])
            print(f"lm_worker: curve {point['fraction']:g} ({point['updates']} updates): ppl {run['ppl']:.2f}",
                  file=sys.stderr)
        points.append(dict(point, ppl=run["ppl"], elbo_samples=k, seed=seed, command=run["command"]))
    return points


def _sync(torch):
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plan", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from fairseq_cli import validate as _  # noqa: F401  (first: fairseq-validate's logging setup)

    plan = read_json(args.plan)
    if plan is None:
        sys.exit(f"lm_worker: error: cannot read {args.plan}")
    result = {"validate": []}
    ks = plan["elbo_samples"] if plan["family"] == "lm_discrete" else [1]
    seeds = plan["seeds"] if plan["family"] == "lm_discrete" else plan["seeds"][:1]
    for k in ks:
        for seed in seeds:
            result["validate"].append(validate(plan, k, seed))
            print(f"lm_worker: K={k} seed={seed}: ppl {result['validate'][-1]['ppl']:.2f}", file=sys.stderr)
    result["peak_rss_validate_mb"] = peak_rss_mb()
    result["curve"] = learning_curve(plan, ks[-1], seeds[0], result["validate"])
    if plan["family"] == "lm_discrete":
        result["context"] = context_check(plan)
        print(f"lm_worker: context check {result['context']}", file=sys.stderr)
    try:
        result["sampling"] = (sample_diffusion if plan["family"] == "lm_discrete" else sample_ar)(plan)
    except Exception as err:  # noqa: BLE001  (recorded, never hidden: the report prints it)
        result["sampling"] = {"error": f"{type(err).__name__}: {err}"}
    write_json(args.out, result)


if __name__ == "__main__":
    main()
