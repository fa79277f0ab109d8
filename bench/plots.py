"""The suite's figures, each a side-by-side comparison or a ratio from one run (PNG, matplotlib Agg)."""
import logging
from pathlib import Path
from typing import Dict, List


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def speed_quality(results: Dict[str, Dict], out: Path) -> Path:
    """sacreBLEU vs sentences/s at batch 128 for every decoding setting of every translation model."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    for name, r in results.items():
        grid = (r.get("decode") or {}).get("grid") or []
        pts = [g for g in grid if g.get("sentences_per_s_b128")]
        if not pts:
            continue
        baseline = r["family"] in ("ar", "cmlm")
        ax.scatter([g["sentences_per_s_b128"] for g in pts], [g["sacrebleu"] for g in pts], label=r["label"],
                   marker="*" if baseline else "o", s=120 if baseline else 28, zorder=3 if baseline else 2)
        if baseline:
            for g in pts:
                ax.annotate(g["name"], (g["sentences_per_s_b128"], g["sacrebleu"]), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")
    ax.set_xscale("log")
    ax.set(xlabel="decoding speed at batch 128 (sentences/s, log scale)", ylabel="sacreBLEU (test2016)",
           title="Speed vs quality, every decoding setting (same checkpoints)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def learning_curves(results: Dict[str, Dict], out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for r in results.values():
        curve = (r.get("decode") or {}).get("curve") or []
        if curve:
            ax.plot([p["train_minutes"] for p in curve], [p["sacrebleu"] for p in curve], marker="o", label=r["label"])
    ax.set(xlabel="training minutes", ylabel="sacreBLEU (test2016, default decoding)",
           title="Learning curves at an equal budget (average of the last interval checkpoints)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def training_cost(rows: List[Dict], out: Path) -> Path:
    """Bars: seconds per target token relative to the AR transformer, with each model's target."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    labels = [r["label"] for r in rows]
    ax.bar(labels, [r["ratio"] for r in rows], color=["tab:gray" if r["target"] is None else "tab:blue" for r in rows])
    for i, r in enumerate(rows):
        if r["target"] is not None:
            ax.hlines(r["target"], i - 0.4, i + 0.4, colors="tab:red", linestyles="--")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set(ylabel="training time per target token / AR transformer",
           title="Training cost relative to the AR transformer (same batches; dashed: target)")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    return _save(fig, out)


def lm_bound(rows: Dict[str, List[Dict]], reference: float, out: Path) -> Path:
    """Perplexity bound vs Monte-Carlo time samples (mean, min-max over seeds); AR perplexity as a line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, pts in rows.items():
        ks = [p["k"] for p in pts]
        mean = [p["mean"] for p in pts]
        err = [[p["mean"] - p["min"] for p in pts], [p["max"] - p["mean"] for p in pts]]
        ax.errorbar(ks, mean, yerr=err, marker="o", capsize=3, label=label)
    if reference:
        ax.axhline(reference, color="black", linestyle="--", label="AR transformer LM (exact)")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="Monte-Carlo time samples per sequence (K)", ylabel="validation perplexity (bound)",
           title="Brown: ELBO perplexity bound vs K (bars: min-max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def lm_curves(curves: Dict[str, List[Dict]], out: Path) -> Path:
    """Validation perplexity (exact, or the masked LMs' bound) against training minutes, one line per LM."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, pts in curves.items():
        ax.plot([p["train_minutes"] for p in pts], [p["ppl"] for p in pts], marker="o", label=label)
    ax.set_yscale("log")
    ax.set(xlabel="training minutes", ylabel="validation perplexity (masked LMs: bound)",
           title="Brown: language models' learning curves at an equal budget")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, out)
