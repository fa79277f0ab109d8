"""Decoding sweep: grid logic, fairseq's speed line, and a real 1 x 1 x 2 x 2 sweep on a tiny trained model."""
import csv
import sys

import pytest

from fairseq_plugins.score import ScoreError
from fairseq_plugins.sweep import Point, grid, parse_speed, sweep
from tests.fairseq.cli_helpers import ROOT, generate_args, run_cli, train_args

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_grid_skips_mbr_with_one_candidate():
    points, skipped = grid([5, 10], [1], [1, 2], ["score", "mbr-bleu", "mbr-rouge"])
    assert len(points) + len(skipped) == 12
    assert skipped == [Point(s, 1, 1, sel) for s in (5, 10) for sel in ("mbr-bleu", "mbr-rouge")]
    assert Point(5, 1, 2, "mbr-rouge") in points and Point(5, 1, 1, "score") in points
    assert Point(5, 3, 1, "mbr-bleu").candidates == 3


def test_parse_speed_reads_fairseq_timer_line():
    line = ("INFO | fairseq_cli.generate | Translated 1,000 sentences (23,456 tokens) in 4.0s "
            "(250.00 sentences/s, 5864.00 tokens/s)")
    speed = parse_speed(line)
    assert speed == {"sentences": 1000, "tokens": 23456, "decode_s": 4.0, "sentences_per_s": 250.0,
                     "tokens_per_s": 5864.0}
    with pytest.raises(ScoreError, match="Translated"):
        parse_speed("no timing here")


def test_bad_flags_are_refused_before_decoding(tmp_path):
    base = ["data", "--path", "ck.pt", "--out-dir", str(tmp_path)]
    with pytest.raises(ScoreError, match="--decoding-steps is set by the sweep"):
        sweep(base + ["--decoding-steps", "5"])
    with pytest.raises(ScoreError, match="--metric bleurt is not computed; choose from .*sacrebleu"):
        sweep(base + ["--metric", "bleurt"])
    with pytest.raises(SystemExit):  # argparse: "argument --steps: must be in [1, inf), got 0"
        sweep(base + ["--steps", "5", "0"])
    assert not (tmp_path / "generate").exists()


@pytest.mark.slow
def test_sweep_writes_csv_and_plots(data_bin, tmp_path):
    run_cli(train_args(data_bin, tmp_path / "ck", "difformer_tiny", "--max-update", "20"))
    out = tmp_path / "sweep"
    checkpoint = tmp_path / "ck" / "checkpoint_last.pt"
    proc = run_cli([sys.executable, "-m", "fairseq_plugins.sweep", data_bin, "--path", checkpoint,
                    "--out-dir", out, "--steps", "2", "--length-beam", "1", "--noise-beam", "1", "2",
                    "--selection", "score", "mbr-rouge", "--cpu", "--batch-size", "64", "--seed", "1",
                    "--post-process", "sentencepiece", "--ref", data_bin / "raw" / "test.en"], cwd=ROOT)
    assert "4 grid points, 1 skipped" in proc.stderr
    assert "3 points run, 1 skipped, 0 failed" in proc.stdout
    with (out / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert {(r["steps"], r["noise_beam"], r["selection"]) for r in rows} == {
        ("2", m, sel) for m, sel in (("1", "score"), ("2", "score"), ("2", "mbr-rouge"))}
    columns = set(rows[0])
    assert {"steps", "length_beam", "noise_beam", "selection", "candidates", "sentences", "tokens",
            "sentences_per_s", "tokens_per_s", "wall_s", "sacrebleu", "tokenized_bleu", "rougeL", "self_bleu",
            "distinct_1", "empty_hypotheses"} <= columns
    for r in rows:
        assert int(r["sentences"]) == 60 and float(r["sentences_per_s"]) > 0 and float(r["wall_s"]) > 0
        assert 0 <= float(r["sacrebleu"]) <= 100
        assert (r["self_bleu"] == "") == (r["noise_beam"] == "1"), "self-BLEU needs several candidates"
    for name in ("quality_vs_speed.png", "quality_vs_steps.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    assert len(list((out / "generate").glob("*.txt"))) == 3
    # the MBR points the sweep skips are refused by fairseq-generate itself, in one line
    proc = run_cli(generate_args(data_bin, checkpoint, "--candidate-selection", "mbr-rouge"), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if ": error: " in line][-1].endswith(
        "--candidate-selection mbr-rouge needs several candidates per input; set --noise-beam and/or --length-beam "
        "so that their product is at least 2")
