"""Safe loading of fairseq checkpoints on torch >= 2.6.

Why
---
Since torch 2.6, ``torch.load`` runs in *weights-only* mode by default: the
pickle inside a checkpoint may only reference an allowlist of globals (tensors,
storages, ``OrderedDict``...).  fairseq 0.12's
``checkpoint_utils.load_checkpoint_to_cpu`` calls ``torch.load(f,
map_location=cpu)`` on checkpoints that also contain a few plain Python/numpy
objects (an ``argparse.Namespace`` config, numpy arrays/scalars kept by the
training meters), so every fairseq checkpoint fails to load with
``Unsupported global: GLOBAL argparse.Namespace``.

Turning the weights-only mode off would make that error go away, but it also lets
any checkpoint run arbitrary code while it is unpickled (a pickle can call
``os.system``).  This module never does that.  Instead it allowlists, via
``torch.serialization.add_safe_globals``, exactly the data-only types that real
fairseq 0.12 checkpoints contain (see ``SAFE_CHECKPOINT_GLOBALS``), and
everything else stays refused.

What
----
* ``SAFE_CHECKPOINT_GLOBALS``: the allowlist (each entry is justified below).
* ``allow_fairseq_checkpoint_types()``: registers it (idempotent).
* ``install()``: registers it and wraps ``fairseq.checkpoint_utils.load_checkpoint_to_cpu``
  (the module attribute, and any already-imported module that did
  ``from fairseq.checkpoint_utils import load_checkpoint_to_cpu``) so that a failed
  load becomes one clear line instead of torch's long message (which suggests
  disabling the safe mode):

  - a checkpoint referencing a non-allowlisted global raises
    ``UnsafeCheckpointError`` (a ``RuntimeError``) naming the path and the global;
  - a truncated or corrupted file raises ``CorruptCheckpointError`` (a
    ``RuntimeError``) suggesting another checkpoint;
  - a missing file raises ``FileNotFoundError("checkpoint PATH does not exist")``.

  There is never a fallback to unrestricted unpickling.  Installing twice does not
  wrap twice.

On torch < 2.4 (no ``add_safe_globals``) registration is a no-op; torch 2.4/2.5
still load without restrictions by default, which is torch's behaviour, not ours.
"""
import _compat_pickle
import argparse
import contextlib
import functools
import os
import pickle
import re
import sys
from typing import Any, List, Optional

import torch

from fairseq_plugins.errors import DifftextError

__all__ = [
    "SAFE_CHECKPOINT_GLOBALS",
    "CheckpointLoadError",
    "UnsafeCheckpointError",
    "CorruptCheckpointError",
    "allow_fairseq_checkpoint_types",
    "install",
    "load",
]


def _numpy_globals() -> List[Any]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - fairseq itself requires numpy
        return []
    try:  # numpy >= 2 moved numpy.core to numpy._core
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core import multiarray

    entries: List[Any] = []
    # Pickled numpy objects name their constructor by module path, and that path
    # depends on the numpy version that *saved* the checkpoint
    # (numpy._core.multiarray.* for numpy >= 2, numpy.core.multiarray.* for
    # numpy 1.x, which is what most fairseq 0.12 checkpoints were saved with).
    # Register the same function under both names.
    #  - _reconstruct: rebuilds an (empty) ndarray of an allowlisted subclass;
    #    numpy arrays are stored by the meters, e.g. the translation task's
    #    `_bleu_counts` / `_bleu_totals` with --eval-bleu (fairseq issue #5603).
    #  - scalar: rebuilds a numpy scalar (e.g. np.float64) from a dtype and raw
    #    bytes; stored when a criterion's reduce_metrics logs numpy values.
    for name in ("_reconstruct", "scalar"):
        fn = getattr(multiarray, name)
        for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
            entries.append((fn, f"{module}.{name}"))
    # The array class and np.dtype (called to rebuild the dtype of an array or
    # scalar), both needed by the two entries above.
    entries += [np.ndarray, np.dtype]
    # Since numpy 1.25 every dtype instance has its own class
    # (numpy.dtypes.Int64DType, ...), which torch must also allow to apply the
    # pickled dtype state.  Only the numeric dtypes that fairseq metric values turn
    # into: Python int / float / bool (-> int64 / float64 / bool) and values taken
    # from torch tensors (-> float32 / float16 / int32).  Notably *not* the object
    # dtype.  On older numpy these are all just np.dtype.
    for scalar_type in (np.bool_, np.int32, np.int64, np.float16, np.float32, np.float64):
        dtype_class = type(np.dtype(scalar_type))
        if dtype_class not in entries:
            entries.append(dtype_class)
    return entries


#: The types that fairseq 0.12 checkpoints contain beyond torch's defaults.
#: Found with ``torch.serialization.get_unsafe_globals_in_checkpoint`` on
#: checkpoint_N.pt / checkpoint_last.pt / checkpoint_best.pt written by
#: ``fairseq-train`` (optimizer + meters state included):
#:
#: - ``--arch transformer`` (legacy-args arch):   argparse.Namespace
#: - same with ``--eval-bleu``:                   + numpy _reconstruct, ndarray, dtype,
#:                                                  Int64DType (found at load time)
#: - ``--user-dir`` model with a dataclass config
#:   and a criterion logging a numpy scalar:     numpy scalar, dtype, Float64DType
#:
#: The dataclass configs themselves are stored as plain dicts (fairseq calls
#: ``OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)``), so no
#: omegaconf / enum / dataclass type is needed; ``collections.OrderedDict``
#: (model state, meters) is already allowed by torch.
SAFE_CHECKPOINT_GLOBALS: List[Any] = [
    # cfg.model of every arch configured through legacy argparse args (such as
    # --arch transformer) is a Namespace, and pre-hydra checkpoints
    # (fairseq < 0.10) keep their whole config in state["args"].  A Namespace is
    # rebuilt by setting attributes on an empty instance: no code is run.
    argparse.Namespace,
] + _numpy_globals()


def allow_fairseq_checkpoint_types() -> bool:
    """Register ``SAFE_CHECKPOINT_GLOBALS`` with torch's weights-only unpickler.

    Idempotent (torch keeps them in a set).  Returns False on torch versions
    without ``add_safe_globals`` (< 2.4), where there is nothing to register.
    """
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is None:
        return False
    add_safe_globals(list(SAFE_CHECKPOINT_GLOBALS))
    return True


class CheckpointLoadError(DifftextError, RuntimeError):
    """A fairseq checkpoint could not be loaded; ``path`` says which."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


class UnsafeCheckpointError(CheckpointLoadError):
    """The checkpoint references globals outside the allowlist."""

    def __init__(self, message: str, path: str, names: List[str]):
        super().__init__(message, path)
        self.names = names


class CorruptCheckpointError(CheckpointLoadError):
    """The checkpoint file is truncated or corrupted."""


_WRAPPED_MARK = "__difftext_safe_checkpoint_loader__"

# Source files of torch.load and its weights-only unpickler: only errors raised
# inside them are translated (not, say, a failing config upgrade after the load).
_TORCH_LOAD_FILES = {
    os.path.realpath(module.__file__)
    for module in (torch.serialization, getattr(torch, "_weights_only_unpickler", None))
    if getattr(module, "__file__", None)
}

# How torch's weights-only unpickler names what it refused.
_OFFENDER_PATTERNS = [
    re.compile(r"unsupported GLOBAL (\S+) whose module \S+ is blocked"),
    re.compile(r"GLOBAL (\S+) was not an allowed global by default"),
    re.compile(r"allowlisted via `add_safe_globals`,? but got <class '([^']+)'>"),
    re.compile(r"Trying to call reduce for unrecognized function ([^\n]+?)(?: which belongs to|\n|$)"),
]


def _raised_in_torch_load(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if os.path.realpath(tb.tb_frame.f_code.co_filename) in _TORCH_LOAD_FILES:
            return True
        tb = tb.tb_next
    return False


def _python3_name(full_name: str) -> str:
    # Protocol-2 pickles (torch.save's default) store Python 2 names for some
    # globals (subprocess.Popen is written as commands.Popen); show the real one.
    module, _, name = full_name.rpartition(".")
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}" if module else name


def _offending_globals(message: str, path: Any) -> List[str]:
    names: List[str] = []
    for pattern in _OFFENDER_PATTERNS:
        match = pattern.search(message)
        if match:
            name = match.group(1)
            if pattern is _OFFENDER_PATTERNS[1] and "." not in name:
                name = "builtins." + name  # torch strips the "builtins." prefix
            names.append(_python3_name(name))
            break
    if not names:
        return names
    # A static scan of the pickle lists every other refused global too (zip
    # checkpoints only; it reads the small data.pkl record, never the tensors).
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is not None and isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
        try:
            found = sorted({_python3_name(n) for n in scan(path)})
        except Exception:
            found = []
        names += [n for n in found if n not in names]
    return names


def _short_cause(exc: BaseException) -> str:
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:  # drop torch's advice, keep the actual unpickler error
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
    text = " ".join(text.split())
    if ". " in text:
        text = text.split(". ", 1)[0]
    if len(text) > 160:
        text = text[:157] + "..."
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _translate(exc: Exception, path: Any) -> Optional[Exception]:
    """The clear one-line error for ``exc``, or None to re-raise it unchanged."""
    shown = os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path)
    if isinstance(exc, FileNotFoundError):
        if isinstance(path, (str, os.PathLike)) and not os.path.exists(path):
            return FileNotFoundError(f"checkpoint {shown} does not exist")
        return None
    if not _raised_in_torch_load(exc):
        return None  # not a loading failure (e.g. a config upgrade error)
    if isinstance(exc, (PermissionError, IsADirectoryError, MemoryError)):
        return None  # already clear, and not a property of the file's content
    if isinstance(exc, pickle.UnpicklingError):
        names = _offending_globals(str(exc), path)
        if names:
            quoted = ", ".join(f"'{n}'" for n in names)
            what = f"the object {quoted}, which is" if len(names) == 1 else f"the objects {quoted}, which are"
            return UnsafeCheckpointError(
                f"refusing to load checkpoint {shown}: it contains {what} not on difftext's "
                "allowlist of safe checkpoint types (loading it could run arbitrary code); "
                "re-save the checkpoint from trusted code if you know it is safe",
                shown,
                names,
            )
    # Damaged files fail inside torch.load in many ways: RuntimeError from the
    # zip reader, OSError when seeking past the end, EOFError, KeyError /
    # UnicodeDecodeError / "Unsupported operand" from a garbled pickle...
    return CorruptCheckpointError(
        f"checkpoint {shown} is truncated or corrupted ({_short_cause(exc)}); use another "
        "checkpoint (e.g. checkpoint_last.pt or an earlier checkpoint_N.pt) or retrain",
        shown,
    )


# Options on by default that were fields of that name before they became ``no_*`` flags: fairseq makes a boolean
# field that defaults to True a flag that turns it *off*, so ``--antithetic-time`` disabled antithetic times.
NEGATED_OPTIONS = {"loss_aware_sampler": "no_loss_aware_sampler", "antithetic_time": "no_antithetic_time",
                   "pred_length_offset": "no_pred_length_offset"}


def upgrade_model_config(state: dict) -> dict:
    """Options a checkpoint predates, set to what it was trained with (before the arch presets fill them).

    ``position_encoding`` (added with rotary positions, which the masked-diffusion LM presets now default to):
    a checkpoint whose model has a learned position table and no such field was trained with learned positions.
    :data:`NEGATED_OPTIONS`: an old option's value becomes its ``no_*`` flag's negation.
    """
    cfg = state.get("cfg") if isinstance(state, dict) else None
    model_cfg = cfg.get("model") if cfg is not None and hasattr(cfg, "get") else None
    if model_cfg is None or not hasattr(model_cfg, "get"):
        return state
    weights = state.get("model") or {}
    renamed = [old for old in NEGATED_OPTIONS if old in model_cfg]
    upgrades = {NEGATED_OPTIONS[old]: not model_cfg.get(old) for old in renamed
                if NEGATED_OPTIONS[old] not in model_cfg}
    if model_cfg.get("position_encoding") is None and any(name.endswith("positions.weight") for name in weights):
        upgrades["position_encoding"] = "learned"
    if upgrades or renamed:  # the old names go: a config merged into the model's dataclass may not hold them
        from omegaconf import DictConfig, open_dict

        with open_dict(model_cfg) if isinstance(model_cfg, DictConfig) else contextlib.nullcontext():
            model_cfg.update(upgrades)
            for old in renamed:
                del model_cfg[old]
    return state


def _wrap(original):
    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        # Re-registering is cheap and survives torch.serialization.clear_safe_globals().
        allow_fairseq_checkpoint_types()
        try:
            return upgrade_model_config(original(path, *args, **kwargs))
        except Exception as exc:
            clear = _translate(exc, path)
            if clear is None:
                raise
            clear.original_error = exc
        raise clear from None

    setattr(load_checkpoint_to_cpu, _WRAPPED_MARK, original)
    return load_checkpoint_to_cpu


def load(path, **kwargs):
    """``torch.load(path, map_location="cpu", weights_only=True)`` with the allowlist and the same one-line
    errors as the wrapped fairseq loader (for tools that read checkpoints without fairseq's upgrades)."""
    allow_fairseq_checkpoint_types()
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except Exception as exc:
        clear = _translate(exc, path)
        if clear is None:
            raise
        clear.original_error = exc
    raise clear from None


def install() -> List[str]:
    """Allowlist the checkpoint types and wrap fairseq's checkpoint loader.

    Idempotent.  Returns the names of the modules whose ``load_checkpoint_to_cpu``
    was replaced by this call (empty when everything was already installed).
    """
    allow_fairseq_checkpoint_types()
    from fairseq import checkpoint_utils

    patched: List[str] = []
    current = checkpoint_utils.load_checkpoint_to_cpu
    original = getattr(current, _WRAPPED_MARK, None)
    if original is None:
        original, wrapped = current, _wrap(current)
        checkpoint_utils.load_checkpoint_to_cpu = wrapped
        patched.append(checkpoint_utils.__name__)
    else:
        wrapped = current
    # Inside fairseq, trainer / hub_utils / fairseq_cli / models call
    # checkpoint_utils.load_checkpoint_to_cpu through the module (and
    # load_model_ensemble_and_task through the module's globals), so the line above
    # covers them.  Modules that copied the function with
    # `from fairseq.checkpoint_utils import load_checkpoint_to_cpu` before now
    # (in fairseq 0.12.3.1 only fairseq.examples.speech_text_joint_to_text.models.
    # s2t_dualinputwavtransformer) are patched here; later importers get the
    # wrapper from the module attribute.
    for name, module in list(sys.modules.items()):
        if module is None or module is checkpoint_utils:
            continue
        try:
            namespace = vars(module)
        except TypeError:
            continue
        if namespace.get("load_checkpoint_to_cpu") is original:
            namespace["load_checkpoint_to_cpu"] = wrapped
            patched.append(name)
    return patched
