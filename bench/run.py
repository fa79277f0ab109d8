"""The benchmark suite of difftext (issue 6): every model family and fairseq's AR transformer and CMLM baselines,
trained and decoded under identical conditions; results as JSON per model, bench/RESULTS.md and PNG plots.

    python bench/run.py --budget 45                       # everything, 45 training minutes per model
    python bench/run.py --models ar,difformer --budget 45 # fill the suite one model at a time (results are cached)
    python bench/run.py --report-only                     # rewrite bench/RESULTS.md from the cached results
    python bench/run.py --smoke [--out DIR]               # tiny models on a data slice: tests the tool in ~2 minutes

Measures: (1) training time per target token relative to the AR transformer on the same batches, with a
torch.profiler operator table; (2) sacreBLEU on Multi30k test2016 at an equal training budget and the learning
curve; (3) sentences/s at batch 1 and 128 and BLEU over decoding steps x length beam x noise beam x (score | MBR),
against AR beam 1/5 and CMLM; (4) time outside the network during sampling; (5) Brown LM: ELBO perplexity bound
of MDLM/MD4 vs a fairseq transformer_lm, its spread over Monte-Carlo samples, samples/s; (6) peak resident
memory of training and decoding; (7) on a GPU: difformer_iwslt_de_en tokens/s, memory, MFU in fp32/fp16/bf16.
Each model's result is cached in bench/results/<model>.json with its budget, commit and configuration hash.
"""
import argparse
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import data, report  # noqa: E402
from bench.common import BENCH, ROOT, BenchError, read_json  # noqa: E402
from bench.models import DEFAULT_MODELS, FULL_GRID, SMOKE_GRID, SMOKE_MODELS, specs  # noqa: E402
from bench.pipeline import Settings, run_cost, run_full_test, run_model  # noqa: E402
from difftext.options import COUNT, POSITIVE, bounded  # noqa: E402

# every number is checked when parsed: a budget of 0 or less would let fairseq-train run without end (and its
# --stop-time-hours has 5 decimals, so a budget is at least 0.01 minutes)
FRACTION, MINUTES = bounded(float, "(0, 1]"), bounded(float, "[0.01, inf)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    known = ", ".join(list(specs("small")) + ["gpu"])
    p.add_argument("--models", default=None, help=f"comma-separated, from: {known} (default: all but genmd4, "
                   "gpu only where CUDA is available; smoke: one model per code path)")
    p.add_argument("--budget", type=MINUTES, default=45.0, help="training minutes per translation model (default 45)")
    p.add_argument("--lm-budget", type=MINUTES, default=None, help="training minutes per language model (default: "
                   "--budget)")
    p.add_argument("--smoke", action="store_true", help="tiny models, a data slice, a few updates: seconds per model")
    p.add_argument("--out", type=Path, default=None, help="where results/ (JSON, plots) and RESULTS.md go (default: "
                   "bench/, i.e. bench/results and bench/RESULTS.md; smoke mode: a new temporary folder)")
    p.add_argument("--work-dir", type=Path, default=None, help="data-bins, checkpoints, logs (default: runs/bench, "
                   "or OUT/work in smoke mode)")
    p.add_argument("--force", action="store_true", help="rerun models even when a cached result matches")
    p.add_argument("--reevaluate", action="store_true",
                   help="decode (or evaluate the LM) again on each model's finished training, e.g. after a change "
                        "to decoding; trains only a model without a finished training (one made with another "
                        "configuration is an error, never deleted)")
    p.add_argument("--report-only", action="store_true", help="only rewrite RESULTS.md and the plots")
    p.add_argument("--full-test", action="store_true", help="decode the whole test set with each decoded model's "
                   "default setting (final checkpoint) for section 2, when the grid used --grid-shards")
    p.add_argument("--cost-only", action="store_true", help="only the training-cost windows of the translation "
                   "models, one after the other, into results/cost.json (section 1 then reads them); use on a quiet "
                   "machine")
    p.add_argument("--multi30k", type=Path, default=data.default_raw("multi30k"), help="raw Multi30k folder")
    p.add_argument("--mt-data-bin", type=Path, default=None, help="a Multi30k data-bin already made by "
                   "data_scripts/prepare_multi30k.py (e.g. copied to a GPU machine without the raw data) instead of "
                   "preparing one in the work directory")
    p.add_argument("--brown", type=Path, default=data.default_raw("brown"), help="raw Brown folder (brown.*.txt)")
    p.add_argument("--max-tokens", type=POSITIVE, default=1024, help="tokens per batch, every model (default 1024)")
    p.add_argument("--save-interval", type=POSITIVE, default=200, help="updates between learning-curve checkpoints")
    p.add_argument("--cost-warmup", type=COUNT, default=20, help="updates before the training-cost window")
    p.add_argument("--cost-updates", type=POSITIVE, default=200, help="updates in the training-cost window")
    p.add_argument("--profile-updates", type=COUNT, default=5, help="updates under torch.profiler after the window")
    p.add_argument("--curve", type=FRACTION, nargs="+", default=[0.25, 0.5, 0.75, 1.0], help="learning-curve points "
                   "(fractions of the budget)")
    p.add_argument("--steps", type=POSITIVE, nargs="+", default=None, help="decoding steps of the grid (5 10 20)")
    p.add_argument("--length-beams", type=POSITIVE, nargs="+", default=None, help="length beams of the grid (1 3 7)")
    p.add_argument("--noise-beams", type=POSITIVE, nargs="+", default=None, help="noise beams of the grid (1 3)")
    p.add_argument("--grid-shards", type=POSITIVE, default=1, help="decode every k-th batch of test2016 at batch 128 "
                   "(1: the whole test set)")
    p.add_argument("--b1-sentences", type=POSITIVE, default=100, help="sentences decoded at batch 1 (every k-th)")
    p.add_argument("--elbo-samples", type=POSITIVE, nargs="+", default=[1, 4, 16], help="Monte-Carlo time samples K")
    p.add_argument("--elbo-seeds", type=POSITIVE, default=2, help="seeds per K (the spread of the bound)")
    p.add_argument("--lm-samples", type=POSITIVE, default=64, help="unconditional samples for samples/s")
    p.add_argument("--gpu-max-tokens", type=POSITIVE, default=4096, help="tokens per batch of the GPU item")
    p.add_argument("--gpu-warmup", type=COUNT, default=150, help="updates before the GPU item's timed window (the "
                   "first batches of each shape are slow on a GPU)")
    p.add_argument("--gpu-optimizer", choices=["adam", "adamw_torch"], default="adam",
                   help="the GPU item's optimizer: fairseq's adam (the suite's; a loop over tensors without apex) or "
                        "difftext's adamw_torch (torch's fused AdamW, the same update)")
    p.add_argument("--threads", type=POSITIVE, default=None, help="torch threads per process (default: torch's)")
    p.add_argument("--jobs", type=POSITIVE, default=1, help="models run in parallel (timings need 1; smoke: 2)")
    p.add_argument("--verbose", action="store_true", help="print every command")
    return p


def settings_from(args, out: Path, work: Path, mt_data: Path, lm_data: Path) -> Settings:
    import torch

    grid = dict(SMOKE_GRID if args.smoke else FULL_GRID)
    for key, value in (("steps", args.steps), ("length_beams", args.length_beams), ("noise_beams", args.noise_beams)):
        if value:
            grid[key] = value
    s = Settings(results=out, work=work, mt_data=mt_data, lm_data=lm_data, budget=args.budget,
                 lm_budget=args.lm_budget or args.budget, smoke=args.smoke, max_tokens=args.max_tokens,
                 save_interval=args.save_interval, cost_warmup=args.cost_warmup, cost_updates=args.cost_updates,
                 profile_updates=args.profile_updates, curve_fractions=args.curve, grid=grid,
                 grid_shards=args.grid_shards, b1_sentences=args.b1_sentences, threads=args.threads,
                 cpu=not torch.cuda.is_available(), elbo_samples=args.elbo_samples, elbo_seeds=args.elbo_seeds,
                 lm_sampling={"num_samples": args.lm_samples, "length": 128, "steps": 128,
                              "batch_size": args.lm_samples}, quiet=not args.verbose)
    if args.smoke:  # a few updates of the tiny models; every stage still runs
        s.save_interval, s.cost_warmup, s.cost_updates, s.profile_updates, s.smoke_updates = 3, 2, 5, 1, 9
        s.curve_fractions, s.average_last, s.grid_shards, s.b1_sentences = [0.9, 1.0], 2, 1, 4
        s.elbo_samples, s.elbo_seeds = [1, 2], 1
        s.lm_sampling = {"num_samples": 4, "length": 32, "steps": 4, "batch_size": 4}
        s.threads = s.threads or 1
    return s


def select(args, names):
    import torch

    if args.models:
        chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    else:
        chosen = (SMOKE_MODELS if args.smoke else DEFAULT_MODELS) + (["gpu"] if torch.cuda.is_available() else [])
    unknown = [m for m in chosen if m not in names and m != "gpu"]
    if unknown:
        sys.exit(f"bench: error: unknown model(s) {', '.join(unknown)}; choose from {', '.join(names)}, gpu")
    return chosen


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.jobs = max(args.jobs, 2)
        out = (args.out or Path(tempfile.mkdtemp(prefix="difftext-bench-smoke-"))).resolve()
        results, md, work = out / "results", out / "RESULTS.md", (args.work_dir or out / "work").resolve()
    else:
        out = args.out.resolve() if args.out else BENCH
        results, md, work = out / "results", out / "RESULTS.md", (args.work_dir or ROOT / "runs" / "bench").resolve()
        if args.jobs > 1:
            print("bench: warning: --jobs > 1 runs models side by side; their timings disturb each other", flush=True)
    command = "python bench/run.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    all_specs = specs("tiny" if args.smoke else "small")
    chosen = select(args, list(all_specs))
    start = time.time()
    try:
        if args.cost_only:
            run_costs(args, chosen, all_specs, results, work, command)
        elif args.full_test:
            s = settings_from(args, results, work, mt_data(args, work), work / "data" / "brown")
            for m in chosen:
                if m != "gpu" and not all_specs[m].lm and not all_specs[m].cost_only:
                    run_full_test(all_specs[m], s, args.force)
        elif not args.report_only:
            run(args, chosen, all_specs, results, work)
    except BenchError as err:
        sys.exit(f"bench: error: {err}")
    found = {n: r for n in all_specs if (r := read_json(results / f"{n}.json")) and r.get("smoke") == args.smoke}
    if not found and chosen == ["gpu"] and not args.report_only and (results / "gpu.json").is_file():
        print(f"bench: done in {(time.time() - start) / 60:.1f} min; {results / 'gpu.json'} (no RESULTS.md: it needs "
              f"the CPU models' results; run them with the same --out, or copy gpu.json next to theirs)", flush=True)
        return
    if not found:
        sys.exit(f"bench: error: no results in {results}; run the suite first")
    cost = read_json(results / "cost.json")
    cost = {n: c for n, c in (cost or {}).get("models", {}).items() if c.get("smoke") == args.smoke} or None
    written = report.write(found, read_json(results / "gpu.json"), command, md, results, cost=cost)
    print(f"bench: done in {(time.time() - start) / 60:.1f} min; " + ", ".join(str(p) for p in written), flush=True)


def run_costs(args, chosen, all_specs, results: Path, work: Path, command: str) -> None:
    # a distilled-data model costs what its architecture costs on the suite's data: no window of its own
    models = [all_specs[m] for m in chosen if m != "gpu" and not all_specs[m].lm and not all_specs[m].teacher]
    if not any(m.name == "ar" for m in models):
        raise BenchError("--cost-only needs the AR model among --models: every ratio is to it")
    s = settings_from(args, results, work, mt_data(args, work), work / "data" / "brown")
    run_cost(models, s, command, args.force)


def mt_data(args, work: Path) -> Path:
    if args.mt_data_bin is None:
        return data.multi30k(args.multi30k.resolve(), work, args.smoke)
    found = args.mt_data_bin.resolve()
    missing = [n for n in ("manifest.json", "dict.en.txt", "raw/test.en") if not (found / n).is_file()]
    if missing:
        raise BenchError(f"--mt-data-bin {found} lacks {', '.join(missing)}; pass a folder made by "
                         "data_scripts/prepare_multi30k.py")
    return found


def run(args, chosen, all_specs, results: Path, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    need_mt = any(m == "gpu" or not all_specs[m].lm for m in chosen)
    need_lm = any(m != "gpu" and all_specs[m].lm for m in chosen)
    mt = mt_data(args, work) if need_mt else work / "data" / "multi30k"
    lm = data.brown(args.brown.resolve(), work, args.smoke) if need_lm else work / "data" / "brown"
    s = settings_from(args, results, work, mt, lm)
    models = [all_specs[m] for m in chosen if m != "gpu"]
    # models that learn from a teacher's translations (distilled data) run after the others
    for phase in ([m for m in models if not m.teacher], [m for m in models if m.teacher]):
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_model, spec, s, args.force, args.reevaluate) for spec in phase]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()  # the running ones finish; the suite stops at the first failure
                raise
    if "gpu" in chosen:
        from bench.gpu import run_gpu

        max_tokens, warmup = (s.max_tokens, s.cost_warmup) if args.smoke else (args.gpu_max_tokens, args.gpu_warmup)
        run_gpu(s, max_tokens, warmup, args.force, optimizer=args.gpu_optimizer)


if __name__ == "__main__":
    main()
