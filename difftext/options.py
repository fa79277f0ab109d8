"""Number ranges of user options, for every command-line tool of the project (no dependency beyond argparse).

Intervals are written as in mathematics: "[0, 1)", "(0, inf)"; a square bracket allows its end, a round one not.
"""
import argparse


def within(value, interval: str) -> bool:
    """Whether ``value`` lies in ``interval``, written as "[0, 1)" or "[1, inf)" (square bracket: the end is
    allowed; round: it is not)."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    return (low < value or (interval[0] == "[" and value == low)) and \
        (value < high or (interval[-1] == "]" and value == high))


def bounded(kind, interval: str):
    """An argparse ``type``: a number of ``kind`` (int or float) in ``interval``, else argparse's one-line error
    ("argument --budget: must be in (0, inf), got -1.0") before anything runs."""
    def parse(text: str):
        value = kind(text)  # a ValueError: argparse's "invalid int value"
        if not within(value, interval):
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {value}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid ... value" message
    return parse


POSITIVE = bounded(int, "[1, inf)")  # steps, beams, batch sizes, workers
COUNT = bounded(int, "[0, inf)")     # warm-up updates, how many checkpoints (0: none)
