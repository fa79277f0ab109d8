"""Number ranges of user options (difftext.options): the intervals and the argparse type."""
import argparse

import pytest

from difftext.options import bounded, within


@pytest.mark.parametrize("value, interval, inside", [
    (0, "[0, 1)", True), (1, "[0, 1)", False), (1, "[0, 1]", True), (0, "(0, 1]", False), (1e-9, "(0, 1]", True),
    (-1, "[0, inf)", False), (10 ** 9, "[1, inf)", True), (float("inf"), "[1, inf)", False),
    (float("nan"), "[0, 1]", False), (0.005, "[0.01, inf)", False),
])
def test_within_reads_closed_and_open_ends(value, interval, inside):
    assert within(value, interval) is inside


def test_bounded_type_refuses_a_number_outside_in_one_argparse_line(capsys):
    p = argparse.ArgumentParser(prog="tool")
    p.add_argument("--budget", type=bounded(float, "(0, inf)"))
    p.add_argument("--jobs", type=bounded(int, "[1, inf)"))
    assert p.parse_args(["--budget", "0.5", "--jobs", "2"]) == argparse.Namespace(budget=0.5, jobs=2)
    for argv, message in ((["--budget", "0"], "argument --budget: must be in (0, inf), got 0.0"),
                          (["--jobs", "0"], "argument --jobs: must be in [1, inf), got 0"),
                          (["--jobs", "1.5"], "argument --jobs: invalid int value: '1.5'")):
        with pytest.raises(SystemExit) as info:
            p.parse_args(argv)
        assert info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"tool: error: {message}"
