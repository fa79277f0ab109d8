"""fairseq-train, instrumented: the real CLI (``fairseq_cli.train.cli_main``) with a timer around each update.

    python bench/train_worker.py --stats STATS.json [--cost-warmup 20 --cost-updates 200 --profile-updates 5]
        [--curve-fractions 0.25 0.5 1 --average-last 5] -- DATA --user-dir fairseq_plugins --task ...  (fairseq-train's)

Every ``Trainer.train_step`` (forward, backward, optimizer step: one update) is timed with a monotonic clock
(CUDA synchronised) and the target tokens of its batches counted (non-pad, non-bos: the same count for every
task). The cost window is updates ``warmup+1 .. warmup+N``: every model trained with the same data, --seed and
--max-tokens sees the same batches there, so seconds per target token compare models on identical work.
The next ``--profile-updates`` updates run under torch.profiler (py-spy and pyinstrument are not dependencies);
its operator table goes next to the stats. Each checkpoint save is recorded with fairseq's cumulative training
time (the clock of --stop-time-hours), and after training the learning-curve models are written: for each
fraction f of the training time, the average of the last ``--average-last`` interval checkpoints saved within
f of it (the quickstart's recipe), plus checkpoint_last.pt for f = 1.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import peak_rss_mb, write_json  # noqa: E402


def parse(argv):
    if "--" not in argv:
        sys.exit("train_worker: error: put the fairseq-train flags after --")
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stats", type=Path, required=True, help="JSON file to write")
    p.add_argument("--cost-warmup", type=int, default=20, help="updates before the cost window")
    p.add_argument("--cost-updates", type=int, default=200, help="updates in the cost window")
    p.add_argument("--profile-updates", type=int, default=5, help="updates profiled after the window (0: none)")
    p.add_argument("--curve-fractions", type=float, nargs="*", default=[], help="learning-curve points")
    p.add_argument("--average-last", type=int, default=5, help="interval checkpoints averaged per point")
    return p.parse_args(argv[:cut]), argv[cut + 1:]


class Recorder:
    def __init__(self, args):
        import torch

        self.args, self.torch, self.trainer = args, torch, None
        self.cuda = torch.cuda.is_available()
        self.steps = 0
        self.window = {"updates": 0, "seconds": 0.0, "target_tokens": 0, "source_tokens": 0, "sentences": 0}
        self.run = {"updates": 0, "seconds": 0.0, "target_tokens": 0}
        self.step_times, self.saves, self.profile, self.profiler = [], [], None, None

    def tokens(self, samples):
        d = self.trainer.task.target_dictionary
        tgt = src = sents = 0
        for s in samples:
            if not s or s.get("target") is None:
                continue
            t = s["target"]
            tgt += int((t.ne(d.pad()) & t.ne(d.bos())).sum())
            sents += int(t.size(0))
            src_tokens = s.get("net_input", {}).get("src_tokens")
            if src_tokens is not None and src_tokens is not t:
                src += int(src_tokens.ne(d.pad()).sum())
        return tgt, src, sents

    def step(self, trainer, original, samples, raise_oom):
        self.trainer = trainer
        a = self.args
        n = self.steps + 1  # this update, 1-based
        window_end = a.cost_warmup + a.cost_updates
        in_window = a.cost_warmup < n <= window_end
        profiling = window_end < n <= window_end + a.profile_updates
        if profiling and self.profiler is None:
            self.start_profiler()
        if self.cuda:
            self.torch.cuda.synchronize()
        start = time.perf_counter()
        out = original(trainer, samples, raise_oom)
        if self.cuda:
            self.torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        self.steps = n
        tgt, src, sents = self.tokens(samples)
        if n > a.cost_warmup and not profiling:
            self.run["updates"] += 1
            self.run["seconds"] += seconds
            self.run["target_tokens"] += tgt
        if in_window:
            for key, value in (("updates", 1), ("seconds", seconds), ("target_tokens", tgt),
                               ("source_tokens", src), ("sentences", sents)):
                self.window[key] += value
            self.step_times.append(seconds)
        if profiling and n == window_end + a.profile_updates:
            self.stop_profiler()
        return out

    def start_profiler(self):
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.profiler = profile(activities=activities)
        self.profiler.__enter__()

    def stop_profiler(self):
        prof, self.profiler = self.profiler, None
        prof.__exit__(None, None, None)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
        top_ops = [{"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1000, 2),
                    "share": round(e.self_cpu_time_total / total, 4)} for e in top]
        self.profile = {"updates": self.steps - self.args.cost_warmup - self.args.cost_updates,
                        "tool": "torch.profiler", "self_cpu_ms_total": round(total / 1000, 2), "top_ops": top_ops}
        table = events.table(sort_by="self_cpu_time_total", row_limit=30)
        if self.cuda:  # and the operators by time on the GPU
            table += "\n" + events.table(sort_by="self_device_time_total", row_limit=30)
        self.args.stats.with_suffix(".profile.txt").write_text(table, encoding="utf-8")

    def saved(self, trainer):
        self.saves.append({"updates": trainer.get_num_updates(),
                           "train_s": round(trainer.cumulative_training_time(), 2)})

    def summary(self):
        if self.profiler is not None:  # training stopped inside the profiled updates
            self.stop_profiler()
        model = self.trainer.model if self.trainer else None
        params = sum(p.numel() for p in model.parameters()) if model is not None else None
        w = self.window
        out = {"updates": self.steps, "window": dict(w, warmup=self.args.cost_warmup, requested=self.args.cost_updates,
                                                     median_step_s=_median(self.step_times)),
               "run": self.run, "profile": self.profile, "saves": self.saves, "parameters": params,
               "model_class": type(model).__name__ if model is not None else None,
               "peak_rss_mb": peak_rss_mb()}
        if w["target_tokens"]:
            out["ms_per_target_token"] = 1000 * w["seconds"] / w["target_tokens"]
            out["target_tokens_per_s"] = w["target_tokens"] / w["seconds"]
        if self.cuda:
            out["peak_gpu_memory_mb"] = round(self.torch.cuda.max_memory_allocated() / 2 ** 20, 1)
            out["device"] = self.torch.cuda.get_device_name(0)
        return out


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def curve_models(save_dir: Path, saves, fractions, last: int):
    """Average the interval checkpoints of each learning-curve point; -> [{fraction, updates, ...}]."""
    from fairseq_plugins import compat
    from fairseq_plugins.average_checkpoints import average, interval_checkpoints

    seconds = {s["updates"]: s["train_s"] for s in saves}
    files = [(p, int(p.stem.split("_")[-1])) for p in interval_checkpoints(save_dir)]
    files = [(p, u, seconds[u]) for p, u in files if u in seconds]
    total = max((s["train_s"] for s in saves), default=0.0)
    final = max(saves, key=lambda s: s["updates"]) if saves else None
    points = []
    for f in sorted(fractions):
        within = [x for x in files if x[2] <= f * total + 1e-6][-last:]
        chosen = [p for p, _, _ in within]
        updates = within[-1][1] if within else 0
        last_file = save_dir / "checkpoint_last.pt"
        if f >= 1.0 and final is not None and final["updates"] > updates and last_file.is_file():
            chosen.append(last_file)
            updates = final["updates"]
        if not chosen:
            continue
        out = save_dir / f"curve_{f:g}.pt"
        compat.atomic_torch_save(average(chosen), out)
        points.append({"fraction": f, "train_minutes": round(f * total / 60, 3), "updates": updates,
                       "averaged": [p.name for p in chosen], "checkpoint": str(out)})
    return points


def main(argv=None):
    args, train_argv = parse(sys.argv[1:] if argv is None else argv)
    args.stats.parent.mkdir(parents=True, exist_ok=True)
    from fairseq_cli import train  # first: it sets up fairseq-train's logging before fairseq is imported
    from fairseq import checkpoint_utils
    from fairseq.trainer import Trainer

    rec = Recorder(args)
    original_step, original_save = Trainer.train_step, checkpoint_utils.save_checkpoint

    def train_step(self, samples, raise_oom=False):
        return rec.step(self, original_step, samples, raise_oom)

    def save_checkpoint(cfg, trainer, epoch_itr, val_loss):
        result = original_save(cfg, trainer, epoch_itr, val_loss)
        rec.saved(trainer)
        return result

    Trainer.train_step, checkpoint_utils.save_checkpoint = train_step, save_checkpoint
    sys.argv = ["fairseq-train", *train_argv]
    train.cli_main()
    stats = rec.summary()  # peak memory of training, before the averaging below
    save_dir = Path(train_argv[train_argv.index("--save-dir") + 1])
    stats["curve"] = curve_models(save_dir, rec.saves, args.curve_fractions, args.average_last)
    write_json(args.stats, stats)


if __name__ == "__main__":
    main()
