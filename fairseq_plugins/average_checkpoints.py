"""Average the parameters of several fairseq checkpoints (the Difformer recipe averages the best five).

    python -m fairseq_plugins.average_checkpoints --inputs ck/checkpoint_3_1200.pt ck/checkpoint_3_1600.pt \
        --output ck/checkpoint_avg.pt
    python -m fairseq_plugins.average_checkpoints --last 4 --dir ck --output ck/checkpoint_avg.pt

fairseq's own ``scripts/average_checkpoints.py`` is not installed with the fairseq wheel, so this is the
same operation for checkpoints of any model: float tensors are averaged (in float64, then cast back),
integer buffers (e.g. the loss-aware sampler's counts) are taken from the newest checkpoint. Loading
goes through the allowlist of :mod:`fairseq_plugins.checkpoints`, never through unrestricted unpickling.
"""
import argparse
import re
import sys
from pathlib import Path
from typing import List

import torch

from fairseq_plugins import checkpoints
from fairseq_plugins.errors import DifftextError


def interval_checkpoints(directory: Path) -> List[Path]:
    """checkpoint_<epoch>_<update>.pt files of a save dir, oldest first."""
    found = []
    for path in directory.glob("checkpoint_*_*.pt"):
        m = re.fullmatch(r"checkpoint_\d+_(\d+)\.pt", path.name)
        if m:
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def average(paths: List[Path]) -> dict:
    """The newest checkpoint's state with its model parameters replaced by the mean over ``paths``."""
    checkpoints.allow_fairseq_checkpoint_types()
    states = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
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
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", type=Path, help="checkpoint files to average")
    parser.add_argument("--dir", type=Path, help="a --save-dir; with --last N averages its N newest interval checkpoints")
    parser.add_argument("--last", type=int, default=0, help="how many interval checkpoints of --dir to average")
    parser.add_argument("--output", type=Path, required=True, help="where to write the averaged checkpoint")
    args = parser.parse_args(argv)
    paths = []
    if args.dir is not None and args.last > 0:
        paths += interval_checkpoints(args.dir)[-args.last:]
    paths += [p for p in args.inputs or [] if p not in paths]  # explicit inputs count as newest
    if not paths:
        sys.exit("average_checkpoints: error: no checkpoints given; pass --inputs FILES or --dir DIR --last N "
                 "(DIR needs checkpoint_<epoch>_<update>.pt files: train with --save-interval-updates)")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        sys.exit(f"average_checkpoints: error: checkpoint(s) not found: {', '.join(missing)}")
    try:
        state = average(paths)
    except DifftextError as err:
        sys.exit(f"average_checkpoints: error: {err}")
    torch.save(state, args.output)
    print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) -> {args.output}")


if __name__ == "__main__":
    main()
