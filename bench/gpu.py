"""Item 7: difformer_iwslt_de_en on a GPU in fp32 / fp16 / bf16: training tokens/s, peak GPU memory, MFU,
decoding sentences/s at batch 128; recorded with the device name.

Training runs the cost window of ``bench/train_worker.py`` (warm-up updates, then timed updates on Multi30k
batches of ``--gpu-max-tokens``). MFU = 6 x parameters x (source + target tokens) per second / the device's
dense peak for the precision (fp32 without TF32, which PyTorch leaves off for matmuls by default); the
6ND rule ignores attention scores and counts the embedding table, so it is an estimate. Without a GPU the
item is skipped; the smoke mode runs it on the CPU with the tiny model in fp32 so the code path is tested.
"""
import dataclasses
import sys
from typing import Dict, Optional

from bench.common import BENCH, BenchError, git_commit, machine, now, read_json, relative, run_logged, write_json
from bench.models import CONTINUOUS, PAPER_CONTINUOUS, specs
from bench.pipeline import Settings, same_key, train

PRECISIONS = {"fp32": [], "fp16": ["--fp16"], "bf16": ["--bf16"]}
# dense peak FLOP/s by device-name substring: (fp32 without TF32, fp16/bf16 tensor cores), vendor data sheets
# (first match wins; other devices get no MFU rather than a wrong one)
PEAKS = {"H200": (67e12, 989e12), "H100 PCIe": (51e12, 756e12), "H100": (67e12, 989e12),
         "A100": (19.5e12, 312e12), "V100": (15.7e12, 125e12)}
DECODE = {"s20_k1_m1_score": ["--decoding-steps", "20"],
          PAPER_CONTINUOUS.name: list(PAPER_CONTINUOUS.flags)}  # Difformer's published decoding, early stop 5
SMOKE_DECODE = {"s2_k1_m1_score": ["--decoding-steps", "2"],
                "s2_k2_m1_mbr-bleu": ["--decoding-steps", "2", "--length-beam", "2",
                                      "--candidate-selection", "mbr-bleu"]}


def peak_flops(device: Optional[str], precision: str) -> Optional[float]:
    for name, (fp32, half) in PEAKS.items():
        if device and name in device:
            return fp32 if precision == "fp32" else half
    return None


def mfu(parameters: int, tokens_per_s: float, device: Optional[str], precision: str) -> Optional[float]:
    peak = peak_flops(device, precision)
    return 6 * parameters * tokens_per_s / peak if peak and parameters and tokens_per_s else None


def run_gpu(s: Settings, max_tokens: int, warmup: int, force: bool = False,
            optimizer: str = "adam") -> Optional[Dict]:
    """``optimizer``: ``adam`` (the suite's) or ``adamw_torch`` (torch's fused AdamW: the same update in one kernel
    rather than ~10 per parameter tensor). ``warmup``: updates before the timed window. The first batches of each
    shape are slow on a GPU (kernel selection; measured on an H200 in fp16: 2 updates/s over the first 50
    updates, 13 over updates 150-200), so the window starts after an epoch of Multi30k at 4096 tokens (135
    updates)."""
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not s.smoke:
        print("bench: gpu: skipped (no CUDA device)", flush=True)
        return None
    path = s.results / "gpu.json"
    settings = dataclasses.replace(s, cpu=not cuda, max_tokens=max_tokens, cost_warmup=warmup)
    key = {"commit": git_commit(), "max_tokens": max_tokens, "updates": warmup + s.cost_updates,
           "device": torch.cuda.get_device_name(0) if cuda else "cpu", "optimizer": optimizer}
    cached = read_json(path)
    if cached and same_key(cached.get("key"), key) and not force and not failed(cached):
        print("bench: gpu: cached", flush=True)
        return cached
    arch = "difformer_tiny" if s.smoke else "difformer_iwslt_de_en"
    base = specs("tiny" if s.smoke else "small")["difformer"]
    spec = dataclasses.replace(base, name="gpu_difformer", arch=("--arch", arch, "--src-embedding-copy"),
                               cost_only=True)
    result = {"model": arch, "key": key, "date": now(), "machine": machine(s.threads), "smoke": s.smoke,
              "device": key["device"], "precisions": {}}
    optimizer_flags = [] if optimizer == "adam" else ["--optimizer", optimizer]  # after the suite's: it wins
    for precision, flags in PRECISIONS.items():
        if not cuda and precision != "fp32":
            continue
        print(f"bench: gpu: {arch} {precision}", flush=True)
        try:
            result["precisions"][precision] = _measure(spec, settings, key, force, precision, flags, result["device"],
                                                       optimizer_flags)
        except BenchError as err:  # e.g. fp16 overflow: recorded and reported, the other precisions still run
            print(f"bench: gpu: {precision} failed: {err}", flush=True)
            result["precisions"][precision] = {"error": str(err)}
        write_json(path, result)  # after each precision: a run cut short keeps what it measured
    if failed(result):
        print(f"bench: gpu: failed for {', '.join(failed(result))}; rerun with --models gpu", flush=True)
    return result


def failed(result: Dict):
    return [p for p, e in result.get("precisions", {}).items() if "error" in e]


def _measure(spec, settings: Settings, key: Dict, force: bool, precision: str, flags, device: str,
             optimizer_flags=()) -> Dict:
    stats = train(spec, settings, key, force, extra=[*flags, *optimizer_flags], tag=f"_{precision}")
    w = stats["window"]
    tokens_per_s = (w["source_tokens"] + w["target_tokens"]) / w["seconds"] if w["seconds"] else None
    return {"target_tokens_per_s": stats.get("target_tokens_per_s"), "tokens_per_s": tokens_per_s,
            "peak_gpu_memory_mb": stats.get("peak_gpu_memory_mb"), "parameters": stats["parameters"],
            "mfu": mfu(stats["parameters"], tokens_per_s, device, precision),
            "peak_flops": peak_flops(device, precision), "window": w, "profile": stats.get("profile"),
            "train_command": stats["command"],
            "decode": _decode(settings, stats, precision, flags)}


def _decode(s: Settings, stats: Dict, precision: str, flags) -> Dict:
    """Each setting at batch 128 after a warm-up job; the first setting once more under the forward timer
    (time outside the network, item 4 on the GPU)."""
    checkpoint = f"{stats['save_dir']}/checkpoint_last.pt"
    common = ["--task", "text_diffusion", "--post-process", "sentencepiece", "--seed", "1", *CONTINUOUS, *flags]
    common += ["--cpu"] if s.cpu else []
    settings = list((SMOKE_DECODE if s.smoke else DECODE).items())
    job = {"checkpoint": checkpoint, "batch_size": 128, "shards": s.grid_shards}
    jobs = [dict(job, name=f"{settings[0][0]}_b128_warmup", flags=settings[0][1])]
    jobs += [dict(job, name=f"{name}_b128", flags=cfg) for name, cfg in settings]
    jobs += [dict(job, name=f"{settings[0][0]}_b128_profile", flags=settings[0][1], profile=True)]
    plan = {"data": str(s.mt_data), "ref": str(s.mt_data / "raw" / "test.en"), "common": common,
            "out_dir": str(s.work / "decode" / f"gpu_{precision}"), "jobs": jobs}
    plan_file, out_file = s.work / "stats" / f"gpu_{precision}.decode-plan.json", \
        s.work / "stats" / f"gpu_{precision}.decode.json"
    write_json(plan_file, plan)
    out_file.unlink(missing_ok=True)  # a fresh checkpoint: nothing to resume
    cmd = [sys.executable, BENCH / "decode_worker.py", "--plan", plan_file, "--out", out_file]
    run_logged(cmd, s.work / "logs" / f"gpu_{precision}.decode.log", threads=s.threads, quiet=s.quiet)
    done = {j["name"]: j for j in read_json(out_file)["jobs"]}
    out = {name: {k: done[name].get(k) for k in ("sentences_per_s", "sacrebleu", "sentences", "length_ratio",
                                                  "command")}
           for name in (j["name"] for j in jobs[1:-1])}
    profile = done[jobs[-1]["name"]]
    return dict(out, outside_network_share=profile.get("outside_forward_share"), profiled=jobs[-1]["name"],
                worker=relative(cmd))
