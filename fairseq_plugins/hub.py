"""Python API: load a trained checkpoint and decode strings through fairseq's hub interface.

    from fairseq_plugins.hub import load
    model = load("checkpoints/checkpoint_last.pt", "data-bin/multi30k",
                 sentencepiece_model="data-bin/multi30k/spm.model", decoding_steps=20, length_beam=3)
    model.translate(["Ein Hund rennt über die Wiese."])   # -> ['A dog runs across the grass.']

Keyword arguments override the saved task options (any ``text_diffusion`` decoding flag, with
underscores). The SentencePiece model is applied on the way in and undone on the way out.
"""
import difflib
from pathlib import Path
from typing import Optional

from fairseq import hub_utils

import fairseq_plugins  # noqa: F401  (registers the task and models, installs the safe loader)
from fairseq_plugins.errors import DifftextError


def load(checkpoint: str, data: str, *, sentencepiece_model: Optional[str] = None, cpu: bool = True, **overrides):
    """A :class:`fairseq.hub_utils.GeneratorHubInterface` whose ``translate(list_of_str)`` decodes."""
    ckpt, data_dir = Path(checkpoint).resolve(), Path(data).resolve()
    if not ckpt.is_file():
        raise DifftextError(f"checkpoint {checkpoint!r} does not exist; pass the path of a checkpoint_*.pt file")
    if sentencepiece_model is not None:
        if not Path(sentencepiece_model).is_file():
            raise DifftextError(f"SentencePiece model {sentencepiece_model!r} does not exist")
        overrides.update(bpe="sentencepiece", sentencepiece_model=str(Path(sentencepiece_model).resolve()))
    loaded = hub_utils.from_pretrained(
        str(ckpt.parent), checkpoint_file=ckpt.name, data_name_or_path=str(data_dir), **overrides
    )
    _check_options(loaded["args"], overrides)
    hub = hub_utils.GeneratorHubInterface(loaded["args"], loaded["task"], loaded["models"])
    return hub if cpu else hub.cuda()


def _check_options(cfg, overrides: dict) -> None:
    """A one-line error for a keyword that names no option (fairseq would ignore it, e.g. a misspelt one)."""
    known = set(cfg.keys())  # the config groups themselves: bpe, tokenizer, ...
    for group in cfg.keys():
        section = cfg.get(group)
        if hasattr(section, "keys"):
            known.update(section.keys())
    unknown = sorted(name for name in overrides if name not in known)
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, sorted(known), n=1)
        raise DifftextError(
            f"load() got the unknown option {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            + "; pass decoding options as the text_diffusion flags with underscores, e.g. decoding_steps=20"
        )
