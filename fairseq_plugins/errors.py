"""User-facing errors: one line that names the problem and the fix, never a deep traceback.

Errors a user can cause (a bad flag, missing data, a mismatched checkpoint) are raised as
:class:`DifftextError`. When one escapes to the top of a fairseq command-line tool, the hook installed
by :func:`install_excepthook` prints ``<tool>: error: <message>`` and exits with status 2, like argparse.
Every other exception keeps Python's normal traceback.
"""
import os
import sys


class DifftextError(Exception):
    """An error caused by the user's input, with a message that says what to change."""


def _hook(previous):
    def hook(exc_type, exc, tb):
        if issubclass(exc_type, DifftextError):
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "difftext"
            print(f"{prog}: error: {exc}", file=sys.stderr)
            sys.stderr.flush()
            os._exit(2)  # skip fairseq's atexit/distributed teardown after a clean user error
        previous(exc_type, exc, tb)

    hook.difftext = True
    return hook


def install_excepthook() -> None:
    """Install the one-line error hook (idempotent)."""
    if not getattr(sys.excepthook, "difftext", False):
        sys.excepthook = _hook(sys.excepthook)
