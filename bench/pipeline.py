"""One model through the suite: train (budgeted, instrumented), then decode the grid or evaluate the LM; cached.

Each step is a subprocess running the real fairseq CLI code (``bench/*_worker.py``), so every model starts
from the same state and its peak memory is its own. A model's result is ``RESULTS_DIR/<model>.json``, keyed
by the training budget and a hash of its configuration (the commit is recorded with it, not matched: a commit
that only touches the report or the docs does not retrain the suite): a rerun skips models whose key matches
(``--force`` retrains; deleting ``RESULTS_DIR/<model>.json`` re-decodes with the finished training), so the
suite can be filled one model at a time.
"""
import math
import shlex
import shutil
import sys
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional

from bench.common import (BENCH, ROOT, USER_DIR, BenchError, config_hash, git_commit, machine, now, read_json,
                          reference_lines, relative, run_logged, tool, write_json)
from bench.data import distilled
from bench.models import OPTIMISER, DecodeConfig, Spec, decode_configs


@dataclass
class Settings:
    results: Path                 # <model>.json files
    work: Path                    # data-bins, checkpoints, logs, decoding outputs
    mt_data: Path
    lm_data: Path
    budget: float                 # training minutes per model
    lm_budget: float
    smoke: bool = False
    max_tokens: int = 1024
    save_interval: int = 200
    cost_warmup: int = 20
    cost_updates: int = 200
    profile_updates: int = 5
    smoke_updates: int = 12
    curve_fractions: List[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    average_last: int = 5
    grid: Dict = field(default_factory=dict)
    grid_shards: int = 1          # decode every k-th batch of test2016 for the grid (1: all of it)
    b1_sentences: int = 100       # batch-1 speed on about this many sentences (every k-th of the test set)
    threads: Optional[int] = None
    cpu: bool = True
    elbo_samples: List[int] = field(default_factory=lambda: [1, 4, 16])
    elbo_seeds: int = 2
    lm_sampling: Dict = field(default_factory=lambda: {"num_samples": 64, "length": 128, "steps": 128,
                                                       "batch_size": 64})
    quiet: bool = True

    def key(self, spec: Spec) -> Dict:
        relevant = {k: v for k, v in asdict(self).items() if k not in ("results", "work", "mt_data", "lm_data",
                                                                      "quiet", "budget", "lm_budget")}
        return {"budget_minutes": self.budget_of(spec), "commit": git_commit(),
                "config": config_hash([spec_fields(spec), relevant])}

    def train_key(self, spec: Spec) -> Dict:
        """The key of the training alone: a change of the decoding grid or of the LM evaluation reuses it."""
        decoding = ("grid", "grid_shards", "b1_sentences", "elbo_samples", "elbo_seeds", "lm_sampling")
        relevant = {k: v for k, v in asdict(self).items() if k not in ("results", "work", "mt_data", "lm_data",
                                                                      "quiet", "budget", "lm_budget", *decoding)}
        return {"budget_minutes": self.budget_of(spec), "commit": git_commit(),
                "config": config_hash([spec_fields(spec), relevant])}

    def budget_of(self, spec: Spec) -> Optional[float]:
        if self.smoke or spec.cost_only:
            return None
        return self.lm_budget if spec.lm else self.budget


def spec_fields(spec: Spec) -> Dict:
    """The fields of ``spec`` that key its results; an unset teacher is left out, so that the keys of the results
    made before models could have one still match."""
    fields = asdict(spec)
    if fields["teacher"] is None:
        del fields["teacher"]
    return fields


def model_args(spec: Spec, data: Path, max_tokens: int) -> List[str]:
    """The fairseq-train arguments that make ``spec``'s model, objective, optimiser and batches (those every tool
    of the suite shares: bench/step_flops.py builds the same model and batches from them)."""
    return [str(data), "--user-dir", str(USER_DIR), *spec.task, *spec.arch, *spec.criterion, *OPTIMISER,
            "--max-tokens", str(max_tokens), "--seed", "1"]


def train_command(spec: Spec, s: Settings, save_dir: Path, data: Optional[Path] = None) -> List[str]:
    """fairseq-train's arguments; ``data``: the training data-bin when it is not the suite's (distilled data)."""
    data = data or (s.lm_data if spec.lm else s.mt_data)
    cmd = [*model_args(spec, data, s.max_tokens), "--save-dir", str(save_dir), "--no-epoch-checkpoints",
           "--disable-validation", "--no-save-optimizer-state", "--save-interval-updates", str(s.save_interval),
           "--num-workers", "0", "--log-format", "simple", "--log-interval", "50"]
    cmd += ["--cpu"] if s.cpu else []
    window = s.cost_warmup + s.cost_updates + s.profile_updates
    if s.smoke or spec.cost_only:
        cmd += ["--max-update", str(max(window, s.smoke_updates) if s.smoke else window)]
    else:
        cmd += ["--stop-time-hours", f"{s.budget_of(spec) / 60:.5f}"]
    return cmd


def same_key(a: Optional[Dict], b: Dict) -> bool:
    """Whether two result keys name the same experiment (budget and configuration; the commit is a record)."""
    return bool(a) and {k: v for k, v in a.items() if k != "commit"} == {k: v for k, v in b.items() if k != "commit"}


def same_command(a: str, b: str) -> bool:
    """Whether two recorded command lines are the same, up to how their paths are written: a path relative to the
    repository root and its absolute form, or a path through a symbolic link and its target, are one path."""
    def norm(token: str) -> str:
        path = Path(token) if Path(token).is_absolute() else ROOT / token
        try:
            return str(path.resolve()) if token and ("/" in token or path.exists()) else token
        except OSError:  # not a name a file can have
            return token

    try:
        return [norm(t) for t in shlex.split(a)] == [norm(t) for t in shlex.split(b)]
    except ValueError:  # not one command line
        return a == b


def train(spec: Spec, s: Settings, key: Dict, force: bool = False, extra: List[str] = (), tag: str = "",
          data: Optional[Path] = None, keep_finished: bool = False) -> Dict:
    """Train from scratch (the save dir is emptied: a budget is never resumed); -> the worker's stats.

    A finished training with the same key is reused (a run that failed while decoding resumes there).
    keep_finished (``--reevaluate``): a finished training that does not match is an error, not emptied: the user
    asked to evaluate again, not to spend a budget again.
    """
    name = spec.name + tag
    save_dir = s.work / "checkpoints" / name
    fairseq_args = train_command(spec, s, save_dir, data) + list(extra)
    stats_file = s.work / "stats" / f"{name}.train.json"
    done = read_json(stats_file)
    command = relative([tool("fairseq-train"), *fairseq_args])
    finished = bool(done) and (save_dir / "checkpoint_last.pt").is_file()
    same_config = finished and same_key(done.get("key"), key)
    if same_config and same_command(done.get("command") or "", command) and not force:
        print(f"bench: {name}: reusing its finished training ({stats_file})", flush=True)
        return done
    if finished and keep_finished and not force:
        what = "command line" if same_config else "configuration or budget"
        raise BenchError(f"{name}: --reevaluate found a finished training in {save_dir} made with another {what} "
                         f"({stats_file} has the command); it would be deleted to train again: rerun --reevaluate "
                         "with the flags it was made with, or drop --reevaluate to retrain")
    print(f"bench: {name}: training" + (f" for {key['budget_minutes']:g} min" if key.get("budget_minutes") else ""),
          flush=True)
    shutil.rmtree(save_dir, ignore_errors=True)
    fractions = [] if spec.cost_only else s.curve_fractions
    cmd = [sys.executable, BENCH / "train_worker.py", "--stats", stats_file, "--cost-warmup", s.cost_warmup,
           "--cost-updates", s.cost_updates, "--profile-updates", s.profile_updates, "--average-last", s.average_last,
           "--curve-fractions", *fractions, "--", *fairseq_args]
    proc = run_logged(cmd, s.work / "logs" / f"{name}.train.log", threads=s.threads, quiet=s.quiet)
    stats = read_json(stats_file)
    stats.update(process=proc, command=relative([tool("fairseq-train"), *fairseq_args]), save_dir=str(save_dir),
                 worker_command=relative(cmd[:cmd.index("--") + 1]) + " <the fairseq-train arguments>", key=key)
    write_json(stats_file, stats)
    return stats


def decode_plan(spec: Spec, s: Settings, stats: Dict) -> Dict:
    configs, default = decode_configs(spec, s.grid)
    by_name = {c.name: c for c in configs}
    curve = sorted(stats.get("curve", []), key=lambda p: p["fraction"])
    final = curve[-1]["checkpoint"] if curve else str(Path(stats["save_dir"]) / "checkpoint_last.pt")
    n_test = len(reference_lines(s.mt_data / "raw" / "test.en"))
    b1_shards = max(1, math.ceil(n_test / s.b1_sentences))

    def job(name: str, config: DecodeConfig, checkpoint: str, batch: int, shards: int, profile=False):
        return {"name": name, "config": config.name, "checkpoint": checkpoint, "flags": list(config.flags),
                "batch_size": batch, "shards": shards, "profile": profile}

    # first: one batch of 128 for the peak memory of decoding (and a warm-up for the timed jobs)
    jobs = [job("memory_b128", by_name[default], final, 128, max(1, math.ceil(n_test / 128)))]
    jobs += [job(f"{c.name}_b128", c, final, 128, s.grid_shards) for c in configs]
    jobs.append(job("warmup_b1", by_name[default], final, 1, max(1, math.ceil(n_test / 5))))  # about 5 sentences
    jobs += [job(f"{c.name}_b1", c, final, 1, b1_shards) for c in configs]
    jobs.append(job("profile_b128", by_name[default], final, 128, s.grid_shards, profile=True))
    jobs += [job(f"curve_{p['fraction']:g}", by_name[default], p["checkpoint"], 128, s.grid_shards)
             for p in curve[:-1]]
    common = [*spec.task, "--post-process", "sentencepiece", "--seed", "1", *spec.decode_flags]
    common += s.grid.get("ar_flags", []) if spec.family == "ar" else []
    common += ["--cpu"] if s.cpu else []
    return {"data": str(s.mt_data), "ref": str(s.mt_data / "raw" / "test.en"), "common": common, "code": git_commit(),
            "out_dir": str(s.work / "decode" / spec.name), "jobs": jobs, "default": default,
            "grid": [asdict(c) for c in configs]}


def decode(spec: Spec, s: Settings, stats: Dict, fresh: bool = False) -> Dict:
    """Decode the grid; ``fresh``: measure every job again rather than resume an interrupted run."""
    plan = decode_plan(spec, s, stats)
    plan_file = s.work / "stats" / f"{spec.name}.decode-plan.json"
    out_file = s.work / "stats" / f"{spec.name}.decode.json"
    write_json(plan_file, plan)
    if fresh:
        out_file.unlink(missing_ok=True)
    cmd = [sys.executable, BENCH / "decode_worker.py", "--plan", plan_file, "--out", out_file]
    proc = run_logged(cmd, s.work / "logs" / f"{spec.name}.decode.log", threads=s.threads, quiet=s.quiet)
    jobs = {j["name"]: j for j in read_json(out_file)["jobs"]}
    grid = []
    for c in plan["grid"]:
        b128, b1 = jobs[f"{c['name']}_b128"], jobs[f"{c['name']}_b1"]
        grid.append({**{k: v for k, v in c.items() if k != "flags"}, "sacrebleu": b128["sacrebleu"],
                     "sentences_per_s_b128": b128["sentences_per_s"], "sentences_per_s_b1": b1["sentences_per_s"],
                     "sentences_b128": b128["sentences"], "sentences_b1": b1["sentences"],
                     "empty_hypotheses": b128["empty_hypotheses"], "repeated_tokens": b128.get("repeated_tokens"),
                     "command": b128["command"]})
    curve = []
    for p in stats.get("curve", []):
        j = jobs.get(f"curve_{p['fraction']:g}") or jobs[f"{plan['default']}_b128"]
        curve.append(dict({k: p[k] for k in ("fraction", "train_minutes", "updates", "averaged")},
                          sacrebleu=j["sacrebleu"]))
    memory, profile = jobs["memory_b128"], jobs["profile_b128"]
    return {"default": plan["default"], "grid": grid, "curve": curve, "commit": plan["code"], "date": now(),
            "signature": memory["signature"], "worker_command": relative(cmd), "process": proc,
            "memory": {"config": plan["default"], "peak_rss_mb": memory["peak_rss_mb"],
                       "baseline_rss_mb": read_json(out_file).get("baseline_rss_mb"),
                       "sentences": memory["sentences"], "process_peak_rss_mb": proc["peak_rss_mb"]},
            "profile": dict({k: profile[k] for k in ("decode_s", "forward_s", "forward_calls",
                                                     "outside_forward_share", "sentences")},
                            config=plan["default"], batch_size=128)}


def lm_eval(spec: Spec, s: Settings, stats: Dict) -> Dict:
    curve = stats.get("curve") or []
    checkpoint = curve[-1]["checkpoint"] if curve else str(Path(stats["save_dir"]) / "checkpoint_last.pt")
    plan = {"data": str(s.lm_data), "checkpoint": checkpoint, "family": spec.family, "cpu": s.cpu,
            "validate": [*spec.task, "--max-tokens", str(4 * s.max_tokens)] + (["--cpu"] if s.cpu else []),
            "elbo_samples": s.elbo_samples, "seeds": list(range(1, s.elbo_seeds + 1)), "sampling": s.lm_sampling,
            "curve": [{k: p[k] for k in ("fraction", "train_minutes", "updates", "checkpoint")} for p in curve]}
    plan_file, out_file = s.work / "stats" / f"{spec.name}.lm-plan.json", s.work / "stats" / f"{spec.name}.lm.json"
    write_json(plan_file, plan)
    cmd = [sys.executable, BENCH / "lm_worker.py", "--plan", plan_file, "--out", out_file]
    proc = run_logged(cmd, s.work / "logs" / f"{spec.name}.lm.log", threads=s.threads, quiet=s.quiet)
    return dict(read_json(out_file), worker_command=relative(cmd), process=proc, commit=git_commit(), date=now(),
                averaged=curve[-1]["averaged"] if curve else ["checkpoint_last.pt"])


def run_cost(specs: List[Spec], s: Settings, command: str, force: bool = False) -> Path:
    """Only the training-cost windows of ``specs``, one model after the other: RESULTS_DIR/cost.json.

    The budget runs measure each model's window while it trains; this pass measures them again in one
    sitting (run it with ``--jobs 1`` on a quiet machine), so the ratios to the AR model share conditions.
    Entries are cached by configuration like the models' results.
    """
    path = s.results / "cost.json"
    out = read_json(path) or {"models": {}}
    for spec in specs:
        cost_spec = replace(spec, cost_only=True)
        key = s.key(cost_spec)
        entry = out["models"].get(spec.name)
        if entry and same_key(entry.get("key"), key) and not force:
            print(f"bench: {spec.name}: cost window cached ({path})", flush=True)
            continue
        print(f"bench: {spec.name}: cost window", flush=True)
        stats = train(cost_spec, s, s.train_key(cost_spec), force, tag="_cost")
        out["models"][spec.name] = {"label": spec.label, "family": spec.family, "key": key, "date": now(),
                                    "self_conditioning": spec.self_conditioning, "machine": machine(s.threads),
                                    "smoke": s.smoke, "train": stats}
        out.update(command=command, date=now())
        write_json(path, out)
    return path


def run_full_test(spec: Spec, s: Settings, force: bool = False) -> Optional[Dict]:
    """sacreBLEU of the final checkpoint with the default setting on the whole test set, into the model's result.

    The grid of a model may decode only every k-th batch (``--grid-shards``), and fairseq's batches are
    ordered by length, so a shard is not a random sample; section 2 reads this figure when it is there.
    """
    path = s.results / f"{spec.name}.json"
    result = read_json(path)
    if not result or not result.get("decode"):
        print(f"bench: {spec.name}: no decoded result to complete; run the suite first", flush=True)
        return None
    if result["decode"].get("full_test") and not force:
        print(f"bench: {spec.name}: full test set cached", flush=True)
        return result["decode"]["full_test"]
    stats_file = s.work / "stats" / f"{spec.name}.train.json"
    stats = read_json(stats_file)
    if not stats:
        raise BenchError(f"{spec.name}: no finished training in this work directory ({relative([stats_file])}); "
                         "--full-test decodes the checkpoints of a run made with the same --work-dir: run the "
                         "model first (without --full-test)")
    plan = decode_plan(spec, s, stats)
    n_test = len(reference_lines(s.mt_data / "raw" / "test.en"))
    default = next(j for j in plan["jobs"] if j["name"] == f"{plan['default']}_b128")
    plan["jobs"] = [dict(default, name="full_test", shards=1)]
    plan_file = s.work / "stats" / f"{spec.name}.full-test-plan.json"
    out_file = s.work / "stats" / f"{spec.name}.full-test.json"
    write_json(plan_file, plan)
    cmd = [sys.executable, BENCH / "decode_worker.py", "--plan", plan_file, "--out", out_file]
    print(f"bench: {spec.name}: decoding the {n_test} test sentences ({plan['default']})", flush=True)
    run_logged(cmd, s.work / "logs" / f"{spec.name}.full-test.log", threads=s.threads, quiet=s.quiet)
    job = read_json(out_file)["jobs"][0]
    result["decode"]["full_test"] = {k: job[k] for k in ("sacrebleu", "sentences", "signature", "command",
                                                          "empty_hypotheses", "repeated_tokens")}
    result["decode"]["full_test"].update(config=plan["default"], date=now(), commit=git_commit())
    write_json(path, result)
    return result["decode"]["full_test"]


_DISTILLING = threading.Lock()


def teacher_run(spec: Spec, s: Settings) -> tuple:
    """(the final checkpoint of the teacher's finished run in this work directory or None, its curve point)."""
    stats = read_json(s.work / "stats" / f"{spec.teacher}.train.json")
    curve = sorted((stats or {}).get("curve", []), key=lambda p: p["fraction"])
    checkpoint = Path(curve[-1]["checkpoint"]) if curve else None
    return (checkpoint, curve[-1]) if checkpoint is not None and checkpoint.is_file() else (None, None)


def teacher_data(spec: Spec, s: Settings, checkpoint: Optional[Path], point: Optional[Dict]) -> tuple:
    """(the distilled training data-bin of ``spec``, a record of its teacher) from the teacher's finished run
    (``teacher_run``)."""
    if checkpoint is None:
        raise BenchError(f"{spec.name} trains on the translations of the {spec.teacher!r} model's finished run, and "
                         f"this work directory has none ({relative([s.work])}); run --models {spec.teacher} first")
    with _DISTILLING:  # models of one teacher, run side by side (--jobs), share one distillation
        print(f"bench: {spec.name}: distilled data from {spec.teacher} ({relative([checkpoint])})", flush=True)
        data = distilled(s.mt_data, checkpoint, spec.teacher, s.work, s.cpu, s.quiet, s.grid.get("ar_flags", ()))
    manifest = read_json(data / "manifest.json")
    return data, {"model": spec.teacher, "checkpoint": relative([checkpoint]), "updates": point["updates"],
                  "train_minutes": point.get("train_minutes"), "data": relative([data]),
                  **{k: manifest["distillation"][k] for k in ("teacher_sha256", "beam", "failed")}}


def run_model(spec: Spec, s: Settings, force: bool = False, reevaluate: bool = False) -> Dict:
    """The cached result of ``spec``, or a fresh one (written to RESULTS_DIR/<model>.json).

    ``reevaluate``: decode / evaluate again, reusing a finished training with the same key.
    A model with a teacher trains on data distilled by the teacher's finished run; the teacher's checkpoint is
    part of its key, so a new teacher run retrains it.
    """
    path = s.results / f"{spec.name}.json"
    cached = read_json(path)
    data = teacher = None
    if spec.teacher:
        checkpoint, point = teacher_run(spec, s)
        if checkpoint is None and cached and not force and not reevaluate and same_key(
                {k: v for k, v in cached.get("key", {}).items() if k != "teacher_sha256"}, s.key(spec)):
            print(f"bench: {spec.name}: cached ({path}; its teacher's run is not in this work directory)", flush=True)
            return cached
        data, teacher = teacher_data(spec, s, checkpoint, point)
    key, train_key = s.key(spec), s.train_key(spec)
    if teacher:
        key["teacher_sha256"] = train_key["teacher_sha256"] = teacher["teacher_sha256"]
    if cached and same_key(cached.get("key"), key) and not force and not reevaluate:
        print(f"bench: {spec.name}: cached ({path})", flush=True)
        return cached
    result = {"model": spec.name, "label": spec.label, "family": spec.family, "key": key, "date": now(),
              "machine": machine(s.threads), "smoke": s.smoke, "arch": " ".join(spec.arch),
              "self_conditioning": spec.self_conditioning}
    if teacher:
        result["teacher"] = teacher
    result["train"] = train(spec, s, train_key, force, data=data, keep_finished=reevaluate)
    if not spec.cost_only:
        print(f"bench: {spec.name}: {'evaluating' if spec.lm else 'decoding'}", flush=True)
        result["lm" if spec.lm else "decode"] = (lm_eval(spec, s, result["train"]) if spec.lm
                                                  else decode(spec, s, result["train"], fresh=reevaluate))
    if ((cached or {}).get("decode") or {}).get("full_test"):
        print(f"bench: {spec.name}: its whole-test-set figure ({cached['decode']['full_test']['sacrebleu']:.2f}) "
              "belonged to the earlier decoding and was dropped; run --full-test again", flush=True)
    write_json(path, result)
    return result
