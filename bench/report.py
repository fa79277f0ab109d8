"""bench/RESULTS.md from the per-model results: tables, ratios to the AR transformer of the same run, targets.

Every target of issue 6 gets a row with the measured figure; one that is not met also gets the evidence of
what limits it (profiler shares, updates reached, network share of decoding), never a blank.
"""
from pathlib import Path
from statistics import mean, pstdev
from typing import Dict, List, Optional

from bench import plots
from bench.models import PAPER_CONTINUOUS

COST_TARGETS = {"discrete": 1.10, "continuous": 1.20, "continuous_sc": 1.30}


def fmt(x, nd=2, pct=False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.{nd}f}%" if pct else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _decoded(entry: Dict) -> Dict:
    """The decoding settings of a GPU precision entry (its other keys are notes)."""
    return {k: v for k, v in entry["decode"].items() if isinstance(v, dict)}


def _sentences(gpu: Dict) -> str:
    """How many test sentences the GPU item decoded (the whole set unless --grid-shards)."""
    counts = {v["sentences"] for e in gpu["precisions"].values() if "error" not in e for v in _decoded(e).values()}
    return "/".join(str(c) for c in sorted(counts)) or "no"


def table(header: List[str], rows: List[List]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]


def grid_entry(r: Optional[Dict], name: str) -> Optional[Dict]:
    for g in ((r or {}).get("decode") or {}).get("grid", []):
        if g["name"] == name:
            return g
    return None


def default_entry(r: Optional[Dict]) -> Optional[Dict]:
    return grid_entry(r, ((r or {}).get("decode") or {}).get("default", ""))


def quality_entry(r: Optional[Dict]) -> Optional[Dict]:
    """The default setting's BLEU for section 2: on the whole test set when ``--full-test`` measured it."""
    full = ((r or {}).get("decode") or {}).get("full_test")
    g = default_entry(r)
    if full and g:  # every figure from the whole test set (older results have no repeated_tokens there)
        return dict(g, sacrebleu=full["sacrebleu"], sentences_b128=full["sentences"], full_test=True,
                    repeated_tokens=full.get("repeated_tokens"))
    return g


def lm_curves(results: Dict[str, Dict]) -> Dict[str, List[Dict]]:
    """The LM learning curves of ``results`` (model -> its points) that have more than their final point."""
    return {n: r["lm"]["curve"] for n, r in results.items() if len((r.get("lm") or {}).get("curve") or []) > 1}


def ratio(a, b) -> Optional[float]:
    return a / b if a is not None and b else None


def machine_of(r: Optional[Dict]) -> tuple:
    """What makes wall-clock figures comparable: processor, cores, torch threads, GPU."""
    m = (r or {}).get("machine") or {}
    return m.get("processor"), m.get("cpu_cores"), m.get("torch_threads"), m.get("gpu")


INCOMPARABLE = "incomparable"  # a target whose figure comes from another machine than the AR model's


class Report:
    def __init__(self, results: Dict[str, Dict], gpu: Optional[Dict], command: str, cost: Optional[Dict] = None):
        self.r, self.gpu, self.command, self.cost_run = results, gpu, command, cost
        self.mt = {n: r for n, r in results.items() if not r["family"].startswith("lm_")}
        self.decoded = {n: r for n, r in self.mt.items() if r.get("decode")}
        self.targets: List[Dict] = []  # {item, target, measured, met, limits}
        self.ar = default_entry(results.get("ar"))
        self.ar_machine = machine_of(results.get("ar")) if results.get("ar") else None

    def comparable(self, r: Dict) -> bool:
        """Timed on the AR model's machine: its budget and speed ratios to the AR model mean something."""
        return self.ar_machine is None or machine_of(r) == self.ar_machine

    def other_machine(self, r: Dict) -> str:
        return (f"{r['label']} ran on {machine_of(r)[0]}, the AR model on {self.ar_machine[0]}: wall-clock "
                "ratios between machines mean nothing; train both side by side (`--jobs 2`) to compare")

    def target(self, item: str, target: str, measured: str, met: Optional[bool], limits: str = ""):
        self.targets.append({"item": item, "target": target, "measured": measured, "met": met, "limits": limits})

    # --- 1. training cost -------------------------------------------------------------------------------------
    def cost(self) -> List[str]:
        source = self.cost_run if self.cost_run and "ar" in self.cost_run else self.mt
        ar = (source.get("ar") or {}).get("train", {}).get("ms_per_target_token")
        rows, bars = [], []
        for name, r in source.items():
            t = r["train"]
            w, c = t["window"], t.get("ms_per_target_token")
            kind = "continuous_sc" if r.get("self_conditioning") else r["family"]
            goal = COST_TARGETS.get(kind)
            q = ratio(c, ar)
            top = ", ".join(f"{o['op']} {o['share']:.0%}" for o in ((t.get("profile") or {}).get("top_ops") or [])[:3])
            partial = " (partial window)" if w["updates"] < w["requested"] else ""
            rows.append([r["label"], t.get("parameters"), f"{w['updates']}{partial}", w["target_tokens"],
                         fmt(c, 4), fmt(q), f"<= {goal:.2f}x" if goal else "–", top or "–"])
            if q is not None:
                bars.append({"label": r["label"], "ratio": q, "target": goal})
            if goal is not None:
                self.target("1 training cost", f"{r['label']}: <= {goal:.2f}x AR per target token",
                            f"{fmt(q)}x", None if q is None else q <= goal,
                            f"profiled updates, largest self-CPU ops: {top}" if top else "no profile")
        lines = ["## 1. Training cost per target token", "",
                 "Wall time of `Trainer.train_step` (forward, backward, optimizer step) per target token over the same "
                 "updates of every model (the cost window: same data, `--seed`, `--max-tokens`, so the same batches); "
                 "ratio to the AR transformer of this run. Profile: torch.profiler over the updates after the window "
                 "(operator tables in the work directory, `stats/<model>.train.profile.txt`). "
                 + ("Measured in a dedicated pass (`python bench/run.py --cost-only --jobs 1`), one model after "
                    f"the other, {min(c['date'] for c in source.values())} to "
                    f"{max(c['date'] for c in source.values())}; the commands are in `results/cost.json`."
                    if source is not self.mt else "Measured inside each model's budget run."), ""]
        lines += table(["model", "parameters", "updates timed", "target tokens", "ms / target token", "x AR",
                        "target", "largest ops (self CPU)"], rows)
        return lines, bars

    # --- 2. quality ---------------------------------------------------------------------------------------------
    def quality(self) -> List[str]:
        ar_q = quality_entry(self.r.get("ar"))
        ar_bleu = ar_q["sacrebleu"] if ar_q else None
        rows, fractions = [], sorted({p["fraction"] for r in self.decoded.values() for p in r["decode"]["curve"]})
        best = {"continuous": None, "discrete": None}  # trained on the suite's data: the equal-budget comparison
        distilled = {"continuous": None, "discrete": None}  # trained on a teacher's translations
        for name, r in self.decoded.items():
            d, g = r["decode"], quality_entry(r)
            top = max(d["grid"], key=lambda x: x["sacrebleu"])
            curve = {p["fraction"]: p for p in d["curve"]}
            final = curve.get(max(curve)) if curve else {}
            share = fmt(ratio(g["sacrebleu"], ar_bleu), 1, pct=True) + ("" if self.comparable(r) else " †")
            label = r["label"] + (" ‡" if r.get("teacher") else "")
            rows.append([label, final.get("updates"), fmt(final.get("train_minutes"), 1), d["default"],
                         g["sentences_b128"], g["sacrebleu"], share, fmt(g.get("repeated_tokens"), 1, pct=True),
                         f"{top['sacrebleu']:.2f} ({top['name']})"]
                        + [fmt(curve[f]["sacrebleu"]) if f in curve else "–" for f in fractions])
            fam, pool = r["family"], distilled if r.get("teacher") else best
            if fam in pool and (pool[fam] is None or g["sacrebleu"] > pool[fam][1]["sacrebleu"]):
                pool[fam] = (r, g)
        for pool, kind in ((best, ""), (distilled, ", distilled data (teacher's budget not counted)")):
            for fam, pick in pool.items():
                if pick is not None:
                    self._quality_target(f"best {fam}{kind} >= 85% of AR beam 5 BLEU", *pick, ar_q)
        head = ["model", "updates", "train min", "default decoding", "test sentences", "sacreBLEU", "% of AR",
                "repeated words", "best in grid"]
        lines = ["## 2. Quality at an equal training budget", "",
                 "sacreBLEU (13a) on Multi30k test2016 of the average of the last interval checkpoints, with each "
                 "model's default decoding (AR: beam 5), on the whole test set where `--full-test` decoded it, "
                 "otherwise on the sentences of the grid. The grid's best and the learning curve (the same recipe at "
                 "fractions of the budget, columns) are on the grid's sentences (`--grid-shards`: every k-th batch "
                 "of fairseq's length-ordered batches, so shard 0 holds the shortest sentences). Repeated words: "
                 "the share of output words equal to the word before them (\"a a man man\"), the token repetition "
                 "of non-autoregressive outputs, on the same sentences as the sacreBLEU column. Figure: "
                 "[learning_curves.png](results/learning_curves.png).", ""]
        teachers = {r["teacher"]["model"]: r["teacher"] for r in self.decoded.values() if r.get("teacher")}
        for name, t in teachers.items():
            minutes = f", {t['train_minutes']:.0f} training minutes" if t.get("train_minutes") else ""
            lines[-1:-1] = [f"‡ trained on the `{name}` model's beam-{t['beam']} translations of the training set "
                            f"(sequence-level knowledge distillation, the Difformer paper's recipe; teacher: "
                            f"{t['checkpoint']}, {t['updates']} updates{minutes}, {t['failed']} sentences without "
                            "a translation kept their reference): its own budget is the others', and the teacher's "
                            "is spent before it.", ""]
        if any(not self.comparable(r) for r in self.decoded.values()):
            lines[-1:-1] = ["† trained on another machine than the AR model (see `machine` in its JSON): its budget "
                            "bought a different number of updates, so its % of AR is not a comparison.", ""]
        return lines + table(head + [f"BLEU at {f:g} budget" for f in fractions], rows)

    def _quality_target(self, target: str, r: Dict, g: Dict, ar_q: Optional[Dict]):
        ar_bleu = ar_q["sacrebleu"] if ar_q else None
        q = ratio(g["sacrebleu"], ar_bleu)
        measured = f"{r['label']} {fmt(q, 1, pct=True)} ({g['sacrebleu']:.2f} vs {fmt(ar_bleu)}"
        if not self.comparable(r):
            self.target("2 quality", target, measured + ", another machine)", INCOMPARABLE, self.other_machine(r))
            return
        curve = r["decode"]["curve"]
        gain = curve[-1]["sacrebleu"] - curve[-2]["sacrebleu"] if len(curve) > 1 else None
        limit = (f"{curve[-1]['updates'] if curve else '?'} updates in the budget; BLEU still changed by "
                 f"{fmt(gain)} over the last curve interval" if gain is not None else "")
        if g.get("repeated_tokens") is not None and (ar_q or {}).get("repeated_tokens") is not None:
            limit += ("; " if limit else "") + (f"{fmt(g['repeated_tokens'], 1, pct=True)} of its output words "
                                                f"repeat the word before them (AR: "
                                                f"{fmt(ar_q['repeated_tokens'], 1, pct=True)})")
        self.target("2 quality", target, measured + ")", None if q is None else q >= 0.85, limit)

    # --- 3. speed vs quality ------------------------------------------------------------------------------------
    def speed(self) -> List[str]:
        ar128 = self.ar["sentences_per_s_b128"] if self.ar else None
        ar1 = self.ar["sentences_per_s_b1"] if self.ar else None
        lines = ["## 3. Decoding speed vs quality", "",
                 f"Same checkpoints as section 2. Ratios are to AR {self.ar['name'] if self.ar else 'beam 5'} of this "
                 "run. Batch 128 decodes the test set (or every k-th batch with `--grid-shards`); batch 1 every k-th "
                 "sentence (about `--b1-sentences`). Figure: [speed_quality.png](results/speed_quality.png).", ""]
        any_fast = []
        for name, r in self.decoded.items():
            grid = r["decode"]["grid"]
            best = max(g["sacrebleu"] for g in grid)
            rows = []
            same = self.comparable(r)
            mark = "" if same else " †"
            for g in grid:
                q128, q1 = ratio(g["sentences_per_s_b128"], ar128), ratio(g["sentences_per_s_b1"], ar1)
                rows.append([g["name"], g["sacrebleu"], g["sentences_per_s_b128"], fmt(q128) + mark,
                             g["sentences_per_s_b1"], fmt(q1) + mark])
                if same and r["family"] in ("continuous", "discrete") and q128 and q128 >= 1.0 \
                        and g["sacrebleu"] >= 0.9 * best:
                    any_fast.append(f"{r['label']} {g['name']} ({q128:.2f}x, {g['sacrebleu']:.2f} BLEU)")
            lines += [f"**{r['label']}** (sentences decoded: {grid[0]['sentences_b128']} at batch 128, "
                      f"{grid[0]['sentences_b1']} at batch 1)" + ("" if same else "; † decoded on another machine "
                                                                 "than the AR model: its ratios are not comparisons"),
                      ""]
            lines += table(["setting", "sacreBLEU", "sent/s b128", "x AR b128", "sent/s b1", "x AR b1"], rows) + [""]
        dif = self.r.get("difformer")
        # the paper configuration: 20 steps with its early stop 5 (results from before it was decoded: without)
        paper = next((n for n in (PAPER_CONTINUOUS.name, "s20_k7_m3_mbr-bleu") if grid_entry(dif, n)),
                     PAPER_CONTINUOUS.name)
        for setting, goal in (("s20_k3_m1_score", 1.0), (paper, 0.3)):
            g = grid_entry(dif, setting)
            for b, ref in (("b128", ar128), ("b1", ar1)):
                q = ratio(g[f"sentences_per_s_{b}"], ref) if g else None
                if g and not self.comparable(dif):
                    self.target("3 decoding speed", f"Difformer {setting} >= {goal}x AR at {b}",
                                f"{fmt(q)}x (another machine)", INCOMPARABLE, self.other_machine(dif))
                    continue
                self.target("3 decoding speed", f"Difformer {setting} >= {goal}x AR at {b}", f"{fmt(q)}x",
                            None if q is None else q >= goal, self._limits(dif, g))
        diffusion = [r for r in self.decoded.values() if r["family"] in ("continuous", "discrete")]
        if diffusion:  # without the AR model's speed in this run there is no ratio: not measured, rather than not met
            self.target("3 decoding speed", "a diffusion setting >= 1.0x AR (b128) with >= 90% of its model's best "
                        "BLEU", "; ".join(any_fast[:3]) or ("none" if ar128 else "–"),
                        bool(any_fast) if ar128 else None,
                        "" if any_fast or not ar128 else "no setting reaches the AR speed within 90% of its model's "
                        "best BLEU")
        return lines

    @staticmethod
    def _limits(r, g) -> str:
        if not r or not g:
            return "not measured"
        p = r["decode"]["profile"]
        calls = g["steps"] - g.get("early_stop", 0)
        steps = f"{g['steps']} steps"
        if calls != g["steps"]:
            steps += f" (early stop {g['early_stop']}: {calls} network calls)"
        return (f"{steps} x {g['length_beam'] * g['noise_beam']} candidates per sentence; network "
                f"forward passes are {fmt(1 - p['outside_forward_share'], 0, pct=True)} of decoding "
                f"({p['config']}, batch 128)" if p.get("outside_forward_share") is not None else "")

    # --- 4. decoding efficiency ---------------------------------------------------------------------------------
    def efficiency(self) -> List[str]:
        rows = []
        for r in self.decoded.values():
            p = r["decode"]["profile"]
            share = p.get("outside_forward_share")
            goal = r["family"] in ("continuous", "discrete")
            rows.append([r["label"], p["config"], p["sentences"], p["decode_s"], p["forward_s"], p["forward_calls"],
                         fmt(share, 1, pct=True), "< 10%" if goal else "–"])
            if goal:
                self.target("4 decoding efficiency", f"{r['label']}: time outside forward passes < 10% (b128)",
                            fmt(share, 1, pct=True), None if share is None else share < 0.10,
                            f"{p['forward_calls']} network calls; "
                            f"{1000 * (p['decode_s'] - p['forward_s']) / max(p['forward_calls'], 1):.2f} ms between "
                            "consecutive calls on average (sampler arithmetic, clamping/rounding, candidate selection)"
                            if p.get("forward_s") is not None else "")
        lines = ["## 4. Decoding efficiency", "",
                 "Time inside `task.inference_step` at batch 128 (default setting) split into network forward passes "
                 "(every outermost `nn.Module` call, every `denoise_fn` call and the continuous models' output layer "
                 "`output_logits`, which rounds the last z0_hat as the AR decoder's and the masked denoisers' own "
                 "output layers do every step; timed by global forward hooks) and the rest: sampler arithmetic, "
                 "clamping (an exact nearest-row search, `NearestEmbedding`), the rounding's log-softmax, candidate "
                 "selection. Measured in a separate run from the speeds of section 3 (the hooks cost a little).", ""]
        return lines + table(["model", "setting", "sentences", "decode s", "forward s", "forward calls",
                              "outside forward", "target"], rows)

    # --- 5. language models -------------------------------------------------------------------------------------
    def lm(self) -> List[str]:
        lms = {n: r for n, r in self.r.items() if r["family"].startswith("lm_") and r.get("lm")}
        if not lms:
            return [], {}, None
        ar = self.r.get("transformer_lm")
        ar_ppl = ar["lm"]["validate"][0]["ppl"] if ar and ar.get("lm") else None
        rows, spread_rows, curves = [], [], {}
        for name, r in lms.items():
            v = r["lm"]["validate"]
            by_k = {}
            for x in v:
                by_k.setdefault(x["elbo_samples"], []).append(x["ppl"])
            stats = [{"k": k, "mean": mean(p), "std": pstdev(p), "min": min(p), "max": max(p), "n": len(p)}
                     for k, p in sorted(by_k.items())]
            main = stats[-1]
            q = ratio(main["mean"], ar_ppl) if r["family"] == "lm_discrete" else None
            s = r["lm"].get("sampling") or {}
            c = r["lm"].get("context") or {}
            reads = (f"{c['ce_nats_15pct_masked']:.2f} / {c['ce_nats_100pct_masked']:.2f}" if "blocks" in c
                     else c.get("error") or ("–" if r["family"] == "lm_ar" else "not measured"))
            rows.append([r["label"], r["train"].get("parameters"), r["train"]["updates"], main["mean"],
                         "exact" if r["family"] == "lm_ar" else f"bound, K={main['k']}", fmt(q), reads,
                         s.get("samples_per_s") if "error" not in s else f"failed: {s['error']}"])
            if r["family"] == "lm_discrete":
                curves[r["label"]] = stats
                spread_rows += [[r["label"], x["k"], x["n"], x["mean"], x["std"], x["min"], x["max"]] for x in stats]
                self.target("5 language model", f"{r['label']}: ppl bound <= 1.3x AR LM", f"{fmt(q)}x",
                            None if q is None else q <= 1.3,
                            f"bound (not exact) with K={main['k']}; seed spread +-{main['std']:.2f} ppl; "
                            f"{r['train']['updates']} updates vs {ar['train']['updates'] if ar else '?'} (AR)")
        lines = ["## 5. Language modelling (Brown)", "",
                 "Validation perplexity: exact for the AR transformer LM (fairseq-validate), the ELBO bound "
                 "exp(nelbo) for masked diffusion (`--elbo-samples K`, mean over seeds). Unconditional samples of "
                 f"{(next(iter(lms.values()))['lm'].get('sampling') or {}).get('length', '?')} tokens per second "
                 "(diffusion: `fairseq_plugins.sample`; AR: ancestral sampling). Figure: "
                 "[lm_bound.png](results/lm_bound.png). Context check: the cross-entropy (nats) of a masked token "
                 "in 64 validation blocks with 15% / all of each block masked; equal figures mean the model does "
                 "not read its context (the unigram level).", ""]
        lines += table(["model", "parameters", "updates", "ppl", "kind", "x AR", "CE 15% / 100% masked",
                        "samples/s"], rows)
        lines += ["", "Spread of the bound over the number of Monte-Carlo time samples K (over seeds):", ""]
        lines += table(["model", "K", "seeds", "mean ppl", "std", "min", "max"], spread_rows)
        return lines + self.lm_curve(lms, ar), curves, ar_ppl

    @staticmethod
    def lm_curve(lms: Dict[str, Dict], ar: Optional[Dict]) -> List[str]:
        """The LMs' learning curve: perplexity (bound) at each fraction of the budget, and the masked LMs' ratio to
        the AR LM at the same fraction."""
        curves = lm_curves(lms)
        if not curves:
            return []
        fractions = sorted({p["fraction"] for c in curves.values() for p in c})
        ar_at = {p["fraction"]: p["ppl"] for p in (curves.get(ar["model"]) or [])} if ar else {}
        rows = []
        for name, curve in curves.items():
            at = {p["fraction"]: p for p in curve}
            rows.append([lms[name]["label"]] + [f"{at[f]['ppl']:.2f} ({at[f]['updates']} upd)" if f in at else "–"
                                                for f in fractions])
            if lms[name]["family"] == "lm_discrete" and ar_at:
                rows.append([f"{lms[name]['label']} / AR LM"] + [fmt(ratio(at[f]["ppl"], ar_at.get(f)))
                                                                 if f in at else "–" for f in fractions])
        k = {p["elbo_samples"] for n, c in curves.items() if lms[n]["family"] == "lm_discrete" for p in c}
        return ["", "Learning curve: validation perplexity at fractions of the budget (each point the average of "
                "the last interval checkpoints up to it; exact for the AR LM, the bound at "
                f"K={', '.join(map(str, sorted(k))) or '–'} and the first seed for masked diffusion), and the "
                "masked LMs' ratio to the AR LM at the same point. Figure: [lm_curve.png](results/lm_curve.png).",
                ""] + table(["model"] + [f"{f:g} budget" for f in fractions], rows)

    # --- 6. memory ----------------------------------------------------------------------------------------------
    def memory(self) -> List[str]:
        rows = []
        for r in self.r.values():
            dec = (r.get("decode") or {}).get("memory") or {}
            above = dec["peak_rss_mb"] - dec["baseline_rss_mb"] if dec.get("baseline_rss_mb") else None
            rows.append([r["label"], r["train"]["peak_rss_mb"], dec.get("peak_rss_mb"), above,
                         dec.get("config", "–")])
        lines = ["## 6. Memory", "",
                 "Peak resident memory (MiB, `getrusage`) of the training process at the end of training, and of the "
                 "decoding process after its first job: one batch of 128 sentences with the default setting. Both "
                 "include the interpreter with torch and fairseq loaded; the decoding process's figure before it "
                 "loads a model is subtracted in the last column but one.", ""]
        return lines + table(["model", "training", "decoding b128", "decoding above baseline", "setting"], rows)

    # --- 7. GPU -------------------------------------------------------------------------------------------------
    def gpu_section(self) -> List[str]:
        lines = ["## 7. GPU", ""]
        g = self.gpu
        if not g:
            return lines + ["Not measured: no CUDA device on the machine of this run (`--models gpu` on a GPU "
                            "machine fills it)."]
        note = " (smoke: CPU, tiny model; not a GPU figure)" if g.get("smoke") else ""
        updates = g["key"]["updates"]
        optimizer = g["key"].get("optimizer", "adam")
        optimizer = "fairseq's adam" if optimizer == "adam" else f"`--optimizer {optimizer}`"
        lines += [f"`{g['model']}` on **{g['device']}**{note}, {g['key']['max_tokens']} tokens per batch, {optimizer}; "
                  "tokens = source + target; MFU = 6 x parameters x tokens/s / dense peak of the device for the "
                  "precision. "
                  f"Decoding ({_sentences(g)} sentences of test2016, batch 128) reads the checkpoint after the "
                  f"{updates} training updates, "
                  "so its BLEU is no quality figure; `length x` is the mean output length over the reference length "
                  "(it sets the work per sentence). The last column is the share of decoding time outside the "
                  "network's forward passes (item 4 on the GPU).", ""]
        m = g.get("machine", {})
        lines += [f"Run {g.get('date')}, commit {g['key'].get('commit', '?')[:12]}, torch {m.get('torch')}, fairseq "
                  f"{m.get('fairseq')}, Python {m.get('python')}, host: {m.get('processor')}, {m.get('cpu_cores')} "
                  "cores. Training commands: `results/gpu.json`.", ""]
        rows, errors = [], []
        names = next((list(_decoded(e)) for e in g["precisions"].values() if "error" not in e), [])
        for prec, e in g["precisions"].items():
            if "error" in e:
                text = [line for line in e["error"].splitlines() if line.strip()]
                last = f" ... `{text[-1].strip()}`" if len(text) > 1 else ""
                errors.append(f"- **{prec} failed**: {text[0]}{last}")
                rows.append([prec] + ["failed"] * (4 + len(names) + 1))
                continue
            dec = _decoded(e)
            rows.append([prec, *(f"{x:,.0f}" if x is not None else "–" for x in
                                 (e["tokens_per_s"], e["target_tokens_per_s"], e["peak_gpu_memory_mb"])),
                         fmt(e["mfu"], 1, pct=True)]
                        + [f"{v['sentences_per_s']:.1f} ({v['sacrebleu']:.1f} BLEU, length x{v['length_ratio']:.2f})"
                           if v.get("length_ratio") is not None else
                           f"{v['sentences_per_s']:.1f} ({v['sacrebleu']:.1f} BLEU)" for v in dec.values()]
                        + [fmt(e["decode"].get("outside_network_share"), 1, pct=True)])
        profiled = next((e["decode"].get("profiled") for e in g["precisions"].values() if "error" not in e), None)
        lines += table(["precision", "tokens/s", "target tokens/s", "peak GPU MiB", "MFU"]
                       + [f"sent/s b128 {n.replace('_b128', '')}" for n in names]
                       + [f"outside the network ({(profiled or '').replace('_b128_profile', '')})"], rows)
        return lines + ([""] + errors if errors else [])

    # --- the whole file -----------------------------------------------------------------------------------------
    def header(self) -> List[str]:
        any_r = next(iter(self.r.values()), None)
        m = (any_r or {}).get("machine", {})
        commits = sorted({r["key"]["commit"] for r in self.r.values()})
        machines = {(r["machine"]["processor"], r["machine"]["torch"], r["machine"]["gpu"]) for r in self.r.values()}
        budgets = sorted({r["key"]["budget_minutes"] for r in self.r.values() if r["key"]["budget_minutes"]})
        lines = ["# Benchmark results", ""]
        if any(r.get("smoke") for r in self.r.values()):
            lines += ["> **Smoke run**: tiny models, a few updates, a slice of the data. These numbers test the tool; "
                      "they say nothing about the models.", ""]
        lines += [f"Generated by `{self.command}`.", "",
                  f"- machine: {m.get('processor')}, {m.get('cpu_cores')} cores ({m.get('torch_threads')} torch "
                  f"threads), GPU: {m.get('gpu') or 'none'}; torch {m.get('torch')}, fairseq {m.get('fairseq')}, "
                  f"Python {m.get('python')}",
                  f"- commit: {', '.join(commits)}; dates: {min(r['date'] for r in self.r.values())} to "
                  f"{max(r['date'] for r in self.r.values())}",
                  "- training budget per model: " + (f"{', '.join(f'{b:g}' for b in budgets)} minutes" if budgets
                                                      else "a fixed number of updates")
                  + "; configuration and shared optimiser: `bench/models.py`"]
        if len(commits) > 1 or len(machines) > 1:
            lines += ["", f"> **Warning**: these results come from {len(commits)} commits and {len(machines)} "
                      "machines; ratios are only meaningful between models measured on one machine. Rerun with "
                      "`--force` to measure everything again."]
        return lines + [""]

    def summary(self) -> List[str]:
        status = {True: "met", False: "**not met**", None: "not measured", INCOMPARABLE: "not comparable"}
        rows = [[t["item"], t["target"], t["measured"], status[t["met"]]] for t in self.targets]
        lines = ["## Targets", ""] + table(["item", "target", "measured", ""], rows)
        missed = [t for t in self.targets if t["met"] is False]
        if missed:
            lines += ["", "Targets not met, with the measured figure and what limits it:", ""]
            lines += [f"- {t['target']}: measured {t['measured']}. {t['limits']}" for t in missed]
        apart = [t for t in self.targets if t["met"] == INCOMPARABLE]
        if apart:
            lines += ["", "Targets whose figure comes from another machine than the AR model's:", ""]
            lines += [f"- {t['target']}: {t['measured']}. {t['limits']}" for t in apart]
        return lines + [""]

    def commands(self) -> List[str]:
        lines = ["## Commands", ""]
        for r in self.r.values():
            t = r["train"]
            sub = r.get("decode") or r.get("lm") or {}
            # the evaluation's own commit, where it differs from the training's (e.g. after --reevaluate)
            later = (f"; evaluated {sub.get('date')} at commit {sub['commit'][:12]}"
                     if sub.get("commit") and sub["commit"] != r["key"]["commit"] else "")
            lines += [f"**{r['label']}** (`{r['model']}`, {r['date']}, commit {r['key']['commit'][:12]}{later})", "",
                      "```", t["command"], t["worker_command"]]
            if sub.get("worker_command"):
                lines.append(sub["worker_command"])
            grid = (r.get("decode") or {}).get("grid") or []
            if grid:
                lines.append(grid[0]["command"])
            lines += ["```", ""]
        return lines


def write(results: Dict[str, Dict], gpu: Optional[Dict], command: str, out_md: Path, fig_dir: Path,
          cost: Optional[Dict] = None) -> List[Path]:
    """RESULTS.md and the figures; -> the files written. ``cost``: the entries of a ``--cost-only`` pass."""
    rep = Report(results, gpu, command, cost)
    body, bars = [], []
    if rep.mt or cost:  # a run of language models alone has no translation sections, nor their targets
        cost_lines, bars = rep.cost()
        body = cost_lines + [""] + rep.quality() + [""] + rep.speed() + rep.efficiency() + [""]
    lm_lines, curves, ar_ppl = rep.lm()
    body += lm_lines + [""] + rep.memory() + [""] + rep.gpu_section() + [""]
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    if bars:
        figures.append(plots.training_cost(bars, fig_dir / "training_cost.png"))
    if rep.decoded:
        figures += [plots.speed_quality(rep.decoded, fig_dir / "speed_quality.png"),
                    plots.learning_curves(rep.decoded, fig_dir / "learning_curves.png")]
    if curves:
        figures.append(plots.lm_bound(curves, ar_ppl, fig_dir / "lm_bound.png"))
    by_label = {results[n]["label"]: c for n, c in lm_curves(results).items()}
    if by_label:
        figures.append(plots.lm_curves(by_label, fig_dir / "lm_curve.png"))
    links = ", ".join(f"[{p.name}]({p.relative_to(out_md.parent)})" for p in figures)
    notes = fig_dir / "notes.md"  # hand-written context of a run (conditions, budget, what limits it), kept as is
    extra = [notes.read_text(encoding="utf-8").rstrip(), ""] if notes.is_file() else []
    text = rep.header() + extra + rep.summary() + [f"Figures: {links or 'none'}.", ""] + body + rep.commands()
    out_md.write_text("\n".join(text).rstrip() + "\n", encoding="utf-8")
    return [out_md, *figures]
