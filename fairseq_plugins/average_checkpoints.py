"""Average the parameters of several fairseq checkpoints (the Difformer recipe averages the best five).

    python -m fairseq_plugins.average_checkpoints --inputs ck/checkpoint_3_1200.pt ck/checkpoint_3_1600.pt \
        --output ck/checkpoint_avg.pt
    python -m fairseq_plugins.average_checkpoints --last 4 --dir ck --output ck/checkpoint_avg.pt
    python -m fairseq_plugins.average_checkpoints --best 5 --dir ck --output ck/checkpoint_best5.pt
    python -m fairseq_plugins.average_checkpoints --ema --inputs ck/checkpoint_last.pt --output ck/checkpoint_ema.pt

``--best N`` averages the N best ``checkpoint.best_<metric>_<value>.pt`` files that fairseq-train keeps with
``--keep-best-checkpoints N`` (whether larger is better is read from the checkpoints' own
``--maximize-best-checkpoint-metric``). ``--ema`` takes the exponential moving average that fairseq-train
stores with ``--store-ema`` (``extra_state["ema"]``) instead of the raw weights; fairseq-generate itself
always decodes with the raw weights.

fairseq's own ``scripts/average_checkpoints.py`` is not installed with the fairseq wheel, so this is the
same operation for checkpoints of any model: float tensors are averaged (in float64, then cast back),
integer buffers (e.g. the loss-aware sampler's counts) are taken from the newest checkpoint. Loading
goes through the allowlist of :mod:`fairseq_plugins.checkpoints`, never through unrestricted unpickling.
"""
import argparse
import re
import sys
from pathlib import Path
from typing import List, Optional

import torch

from difftext.options import COUNT  # a negative --last or --best was read as 0
from fairseq_plugins import checkpoints, compat
from fairseq_plugins.errors import DifftextError


def interval_checkpoints(directory: Path) -> List[Path]:
    """checkpoint_<epoch>_<update>.pt files of a save dir, oldest first."""
    found = []
    for path in directory.glob("checkpoint_*_*.pt"):
        m = re.fullmatch(r"checkpoint_\d+_(\d+)\.pt", path.name)
        if m:
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


BEST = re.compile(r"checkpoint\.best_(.+)_(\d+\.\d{3})\d*\.pt")  # fairseq appends a tie-breaking digit


def _maximize(path: Path) -> Optional[bool]:
    """--maximize-best-checkpoint-metric as saved in a fairseq checkpoint's config (None if absent)."""
    checkpoints.allow_fairseq_checkpoint_types()
    cfg = checkpoints.load(path, mmap=True).get("cfg") or {}
    return (cfg.get("checkpoint") or {}).get("maximize_best_checkpoint_metric")


def best_checkpoints(directory: Path, n: int, maximize: Optional[bool] = None) -> List[Path]:
    """The ``n`` best checkpoint.best_<metric>_<value>.pt files of a save dir, the best last."""
    found = [(m.group(1), float(m.group(2)), p) for p in directory.glob("checkpoint.best_*.pt")
             if (m := BEST.fullmatch(p.name))]
    if not found:
        raise DifftextError(f"no checkpoint.best_<metric>_<value>.pt files in {directory}; train with "
                            "--keep-best-checkpoints N (and validation)")
    metrics = sorted({metric for metric, _, _ in found})
    if len(metrics) > 1:
        raise DifftextError(f"{directory} keeps best checkpoints of several metrics ({', '.join(metrics)}); "
                            "pass the files of one with --inputs")
    if maximize is None:
        maximize = _maximize(found[0][2])
    if maximize is None:
        raise DifftextError(f"{found[0][2]} does not say whether a larger {metrics[0]} is better; pass --maximize "
                            "or --minimize")
    ranked = sorted(found, key=lambda f: f[1], reverse=not maximize)  # worst first, best last
    return [p for _, _, p in ranked[-n:]]


def _weights(state: dict, path: Path, ema: bool) -> dict:
    if not ema:
        return state["model"]
    weights = (state.get("extra_state") or {}).get("ema")
    if weights is None:
        raise DifftextError(f"{path} has no EMA weights; train with --store-ema (and --ema-decay)")
    return weights


def average(paths: List[Path], ema: bool = False) -> dict:
    """The newest checkpoint's state with its model parameters replaced by the mean over ``paths``
    (of their EMA weights when ``ema``)."""
    checkpoints.allow_fairseq_checkpoint_types()
    states = [checkpoints.load(p) for p in paths]
    for state, path in zip(states, paths):
        state["model"] = _weights(state, path, ema)
    keys = list(states[-1]["model"])
    for state, path in zip(states, paths):
        if list(state["model"]) != keys:
            raise DifftextError(f"{path} has other parameters than {paths[-1]}; average checkpoints of one model")
    out = dict(states[-1])
    out["model"] = {}
    for key in keys:
        newest = states[-1]["model"][key]
        if newest.is_floating_point():
            mean = torch.stack([s["model"][key].double() for s in states]).mean(0)
            out["model"][key] = mean.to(newest.dtype)
        else:
            out["model"][key] = newest
    out["last_optimizer_state"] = None  # an average is for decoding, not for resuming
    if ema:  # the EMA is now the model: do not carry a second copy
        out["extra_state"] = {k: v for k, v in (out.get("extra_state") or {}).items()
                              if k not in ("ema", "ema_fp32_params")}
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", type=Path, help="checkpoint files to average")
    parser.add_argument("--dir", type=Path,
                        help="a --save-dir; with --last N averages its N newest interval checkpoints")
    parser.add_argument("--last", type=COUNT, default=0, help="how many interval checkpoints of --dir to average")
    parser.add_argument("--best", type=COUNT, default=0, help="average the N best checkpoint.best_*.pt of --dir "
                        "(fairseq-train --keep-best-checkpoints N)")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--maximize", action="store_true", default=None,
                           help="with --best: larger metric is better (default: as the checkpoints were trained)")
    direction.add_argument("--minimize", dest="maximize", action="store_false",
                           help="with --best: smaller metric is better")
    parser.add_argument("--ema", action="store_true", help="average the EMA weights of --store-ema checkpoints")
    parser.add_argument("--output", type=Path, required=True, help="where to write the averaged checkpoint")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    paths = []
    if args.dir is not None and args.last > 0:
        paths += interval_checkpoints(args.dir)[-args.last:]
    if args.dir is not None and args.best > 0:
        try:
            paths += [p for p in best_checkpoints(args.dir, args.best, args.maximize) if p not in paths]
        except DifftextError as err:
            sys.exit(f"average_checkpoints: error: {err}")
    paths += [p for p in args.inputs or [] if p not in paths]  # explicit inputs count as newest
    if not paths:
        sys.exit("average_checkpoints: error: no checkpoints given; pass --inputs FILES or --dir DIR --last/--best N "
                 "(DIR needs checkpoint_<epoch>_<update>.pt files: train with --save-interval-updates)")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        sys.exit(f"average_checkpoints: error: checkpoint(s) not found: {', '.join(missing)}")
    try:
        state = average(paths, ema=args.ema)
    except DifftextError as err:
        sys.exit(f"average_checkpoints: error: {err}")
    compat.atomic_torch_save(state, args.output)  # never a half-written output
    print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) -> {args.output}")


if __name__ == "__main__":
    main()
