"""User-facing errors: one line that names the problem and the fix, never a deep traceback.

Errors a user can cause (a bad flag, missing data, a mismatched checkpoint) are raised as
:class:`DifftextError`. When one escapes to the top of a fairseq command-line tool, the hook installed
by :func:`install_excepthook` prints ``<tool>: error: <message>`` and exits with status 2, like argparse.
Every other exception keeps Python's normal traceback.
"""
import os
import re
import sys

from difftext.options import within


class DifftextError(Exception):
    """An error caused by the user's input, with a message that says what to change."""


def in_range(name: str, value, interval: str, what: str = "") -> None:
    """A one-line error unless ``value`` of the option ``--name`` lies in ``interval`` (see :func:`within`)."""
    if not within(value, interval):
        flag = "--" + name.replace("_", "-")
        raise DifftextError(f"{flag} must be in {interval}, got {value}" + (f" ({what})" if what else ""))


def _subclass_names(cls) -> set:
    return {cls.__name__}.union(*(_subclass_names(c) for c in cls.__subclasses__()))


def _state_dict_mismatch(wrapper: str, error: str) -> str:
    """One line from fairseq's 'Cannot load model parameters' and torch's load_state_dict error."""
    path = re.search(r"from checkpoint (.*?); please", wrapper)
    model = re.search(r"loading state_dict for (\w+)", error)

    def keys(label):
        found = re.search(label + r" key\(s\) in state_dict: (.*)", error)
        return re.findall(r'"([^"]+)"', found.group(1)) if found else []

    missing, unexpected = keys("Missing"), keys("Unexpected")
    shapes = re.findall(r"size mismatch for (\S+): copying a param with shape (.*?) from checkpoint, "
                        r"the shape in current model is (.*?)\.", error)
    found = [f"{len(missing)} missing parameters, e.g. {missing[0]}" if missing else "",
             f"{len(unexpected)} unexpected, e.g. {unexpected[0]}" if unexpected else "",
             f"{len(shapes)} of another shape, e.g. {shapes[0][0]}: {shapes[0][1]} in the checkpoint, "
             f"{shapes[0][2]} here" if shapes else ""]
    return (f"checkpoint {path.group(1) if path else ''} does not fit this {model.group(1) if model else 'model'} "
            f"({'; '.join(f for f in found if f) or 'other parameters'}): it was trained with another --arch or "
            "model options; pass the ones it was trained with, or train into a new --save-dir")


def user_error(exc: BaseException):
    """The :class:`DifftextError` to report for ``exc`` (unwrapped from fairseq's and torch's wrappers), or None."""
    if isinstance(exc, DifftextError):
        return exc
    text = str(exc)
    # fairseq's Trainer.load_checkpoint replaces any error raised while loading the model parameters by
    # Exception("Cannot load model parameters from checkpoint PATH; please ensure that the architectures match.")
    if type(exc) is Exception and text.startswith("Cannot load model parameters from checkpoint"):
        cause = exc.__context__
        if isinstance(cause, DifftextError):
            return cause
        if isinstance(cause, RuntimeError) and "Error(s) in loading state_dict" in str(cause):
            return DifftextError(_state_dict_mismatch(text, str(cause)))
    # fairseq's load_model_ensemble_and_task (fairseq-generate, -interactive, -validate with --path)
    if isinstance(exc, OSError) and text.startswith("Model file not found: "):
        path = text[len("Model file not found: "):]
        return DifftextError(f"checkpoint {path} does not exist; pass --path a checkpoint file that fairseq-train "
                             "wrote (e.g. <save-dir>/checkpoint_last.pt)")
    # torch.multiprocessing.spawn (fairseq's data-parallel processes) re-raises a child's error as its text
    if type(exc).__name__ == "ProcessRaisedException" and text.strip():
        name, _, message = text.strip().splitlines()[-1].partition(": ")
        if name.rsplit(".", 1)[-1] in _subclass_names(DifftextError):
            return DifftextError(message)
    return None


def _hook(previous):
    def hook(exc_type, exc, tb):
        clear = user_error(exc)
        if clear is not None:
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "difftext"
            print(f"{prog}: error: {clear}", file=sys.stderr)
            sys.stderr.flush()
            os._exit(2)  # skip fairseq's atexit/distributed teardown after a clean user error
        previous(exc_type, exc, tb)

    hook.difftext = True
    return hook


def install_excepthook() -> None:
    """Install the one-line error hook (idempotent)."""
    if not getattr(sys.excepthook, "difftext", False):
        sys.excepthook = _hook(sys.excepthook)
