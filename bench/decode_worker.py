"""fairseq-generate, instrumented: the real generator (``fairseq_cli.generate.main``), several jobs in one process.

    python bench/decode_worker.py --plan PLAN.json --out RESULTS.json

PLAN: {"data", "ref" (raw references, one line per test sentence), "common": [flags of every job],
"out_dir", "jobs": [{"name", "checkpoint", "flags", "batch_size", "shards", "profile"}]}. Each job is one
fairseq-generate run (its flags are recorded as the equivalent command line); ``shards`` k decodes every k-th
batch only (fairseq's own sharding, ``--distributed-world-size k --distributed-rank 0``).

Speed: the seconds inside ``task.inference_step`` (what fairseq's "Translated N sentences in S s" line times),
CUDA synchronised. Quality: sacreBLEU (difftext.evaluation) of the D- lines against the raw references of the
decoded ids. Memory: this process's peak resident memory after each job (the first job's is the decoding peak
of that configuration). ``profile`` jobs also time every outermost ``nn.Module`` call and every call of the
diffusion models' ``denoise_fn`` (global forward hooks: an instrumenting profiler); the rest of
``inference_step`` is time outside the network (sampler arithmetic, clamping, candidate selection, beam search
bookkeeping). Hooks cost a little time per module call, so profile jobs are separate from the speed jobs.
"""
import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import USER_DIR, peak_rss_mb, read_json, reference_lines, relative, tool, write_json  # noqa: E402


class ForwardTimer:
    """Wall time inside the network: outermost module calls and denoise_fn calls, while ``active``."""

    def __init__(self, torch):
        self.torch, self.depth, self.start, self.seconds, self.calls, self.active = torch, 0, 0.0, 0.0, 0, False
        self.cuda = torch.cuda.is_available()

    def enter(self, *unused):
        if self.active:
            if self.depth == 0:
                self._sync()
                self.start = time.perf_counter()
                self.calls += 1
            self.depth += 1

    def exit(self, *unused):
        if self.active and self.depth > 0:
            self.depth -= 1
            if self.depth == 0:
                self._sync()
                self.seconds += time.perf_counter() - self.start

    def _sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def install(self):
        from torch.nn.modules import module

        module.register_module_forward_pre_hook(self.enter)
        module.register_module_forward_hook(self.exit, always_call=True)
        self._wrap_denoise_fns()

    def wrap(self, fn):
        def timed(*args, **kwargs):
            self.enter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit()

        return timed

    def _wrap_denoise_fns(self):
        """Every registered model's decoding_problem returns a problem whose denoise_fn is timed, and the
        continuous models' ``output_logits`` (their tied output layer, which rounds the last z0_hat: the masked
        models' denoise_fn and the AR decoder include theirs) is timed as the network too."""
        from fairseq.models import MODEL_REGISTRY

        for cls in set(MODEL_REGISTRY.values()):
            output_logits = getattr(cls, "output_logits", None)
            if output_logits is not None and not getattr(output_logits, "_bench_timed", False):
                cls.output_logits = self.wrap(output_logits)
                cls.output_logits._bench_timed = True
            original = getattr(cls, "decoding_problem", None)
            if original is None or getattr(original, "_bench_timed", False):
                continue

            def decoding_problem(model, *args, _original=original, **kwargs):
                problem = _original(model, *args, **kwargs)
                timed = self.wrap(problem.denoise_fn)
                if dataclasses.is_dataclass(problem):
                    return dataclasses.replace(problem, denoise_fn=timed)
                problem.denoise_fn = timed
                return problem

            decoding_problem._bench_timed = True
            cls.decoding_problem = decoding_problem


class StepTimer:
    """Wraps ``task.inference_step`` of every task fairseq sets up (one per generate run)."""

    def __init__(self, torch, forward: ForwardTimer):
        self.torch, self.forward, self.seconds, self.batches = torch, forward, 0.0, 0

    def install(self):
        from fairseq import tasks

        original = tasks.setup_task

        def setup_task(cfg, **kwargs):
            task = original(cfg, **kwargs)
            task.inference_step = self.wrap(task.inference_step)
            return task

        tasks.setup_task = setup_task

    def wrap(self, fn):
        def inference_step(*args, **kwargs):
            cuda = self.torch.cuda.is_available()
            if cuda:
                self.torch.cuda.synchronize()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if cuda:
                    self.torch.cuda.synchronize()
                self.seconds += time.perf_counter() - start
                self.batches += 1

        return inference_step


def job_argv(plan, job, results_path: Path):
    argv = [plan["data"], "--user-dir", str(USER_DIR), "--path", job["checkpoint"], "--gen-subset", "test",
            "--batch-size", str(job["batch_size"]), "--num-workers", "0", "--results-path", str(results_path),
            *plan["common"], *job["flags"]]
    if job.get("shards", 1) > 1:
        argv += ["--distributed-world-size", str(job["shards"]), "--distributed-rank", "0"]
    return argv


def job_command(plan, job) -> str:
    argv = job_argv(plan, job, Path(plan["out_dir"]) / job["name"])
    return relative([tool("fairseq-generate"), *argv])


def score(generate_file: Path, refs) -> Dict:
    from difftext.evaluation import evaluate, repeated_tokens
    from fairseq_plugins.score import parse_generate

    ids, groups, _ = parse_generate(generate_file.read_text(encoding="utf-8"), "D")
    result = evaluate(groups, [refs[i] for i in ids], protocols=["sacrebleu", "length"])
    return {"sentences": result["sentences"], "sacrebleu": result["sacrebleu"]["score"],
            "signature": result["sacrebleu"]["signature"], "empty_hypotheses": result["empty_hypotheses"],
            "length_ratio": result["length"]["ratio"], "repeated_tokens": repeated_tokens([g[0] for g in groups])}


def run_job(plan, job, refs, steps: StepTimer, forward: ForwardTimer):
    from fairseq import options
    from fairseq_cli import generate

    results_path = Path(plan["out_dir"]) / job["name"]
    argv = job_argv(plan, job, results_path)
    parser = options.get_generation_parser()
    parser.add_argument("--arch", "-a", default="wav2vec2")  # as fairseq_cli.generate.cli_main
    args = options.parse_args_and_arch(parser, input_args=argv)
    steps.seconds, steps.batches = 0.0, 0
    forward.seconds, forward.calls, forward.active = 0.0, 0, bool(job.get("profile"))
    try:
        generate.main(args)
    finally:
        forward.active = False
    generate_file = results_path / "generate-test.txt"
    scores = score(generate_file, refs)
    out = {"name": job["name"], **scores, "batches": steps.batches, "decode_s": round(steps.seconds, 4),
           "sentences_per_s": scores["sentences"] / steps.seconds if steps.seconds else None,
           "batch_size": job["batch_size"],
           "shards": job.get("shards", 1), "peak_rss_mb": peak_rss_mb(),
           "command": relative([tool("fairseq-generate"), *argv]), "generate_file": str(generate_file),
           "checkpoint_mtime": os.path.getmtime(job["checkpoint"])}
    if job.get("profile"):
        out.update(forward_s=round(forward.seconds, 4), forward_calls=forward.calls,
                   outside_forward_share=1 - forward.seconds / steps.seconds if steps.seconds else None)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plan", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from fairseq_cli import generate  # noqa: F401  (first: fairseq-generate's logging setup)
    import torch

    plan = read_json(args.plan)
    if plan is None:
        sys.exit(f"decode_worker: error: cannot read {args.plan}")
    import fairseq_plugins  # noqa: F401  (registers the models, so their decoding_problem can be wrapped)

    forward = ForwardTimer(torch)
    forward.install()
    steps = StepTimer(torch, forward)
    steps.install()
    refs = reference_lines(Path(plan["ref"]))
    results, baseline = [], peak_rss_mb()  # interpreter, torch, fairseq, plugins: before any model is loaded
    previous = {j["name"]: j for j in (read_json(args.out) or {}).get("jobs", [])}
    for i, job in enumerate(plan["jobs"]):
        done = previous.get(job["name"])
        if i > 0 and resumable(done, plan, job):
            results.append(done)  # a resumed run: this job finished before (the first job always runs)
            continue
        results.append(dict(run_job(plan, job, refs, steps, forward), code=plan.get("code")))
        print(f"decode_worker: {job['name']}: {results[-1]['sacrebleu']:.2f} BLEU, "
              f"{results[-1]['sentences_per_s']:.2f} sentences/s", file=sys.stderr, flush=True)
        write_json(args.out, {"jobs": results, "baseline_rss_mb": baseline})
    write_json(args.out, {"jobs": results, "baseline_rss_mb": baseline})  # resumed jobs after the last run one


def resumable(done, plan, job) -> bool:
    """A job of an interrupted run of this plan: same command, checkpoint and committed code."""
    code = plan.get("code") or ""
    return bool(done) and done.get("command") == job_command(plan, job) and code and not code.endswith("+dirty") \
        and done.get("code") == code and done.get("checkpoint_mtime") == os.path.getmtime(job["checkpoint"])


if __name__ == "__main__":
    main()
