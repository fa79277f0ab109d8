"""End to end through the real CLIs on a small Multi30k slice: train, save, reload, decode, bad input."""
import re
import sys

import pytest
import torch

from fairseq_plugins.compat import KNOWN_WARNINGS
from tests.fairseq.cli_helpers import ROOT, cli, generate_args, make_data_bin, run_cli, train_args

ARCHS = ["difformer_tiny", "diffuseq_tiny"]
UPDATES = 40


@pytest.fixture(scope="session")
def trained(data_bin, tmp_path_factory):
    """{arch: (checkpoint dir, training log)} after UPDATES updates of each tiny model."""
    out = {}
    for arch in ARCHS:
        save = tmp_path_factory.mktemp(arch)
        proc = run_cli(train_args(data_bin, save, arch, "--max-update", str(UPDATES)),
                       env_extra={"PYTHONWARNINGS": "default"})  # (the tests' other runs ignore every warning)
        out[arch] = (save, proc.stdout + proc.stderr)
    return out


def hypotheses(stdout: str) -> dict:
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^H-(\d+)\t(\S+\t.*)$", stdout, re.M)}


def one_line_error(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_decreases(trained, arch):
    losses = [float(x) for x in re.findall(r"\| train_inner \|.*? loss=([0-9.]+)", trained[arch][1])]
    assert len(losses) == UPDATES // 5
    half = len(losses) // 2
    assert losses[-1] < 0.9 * losses[0], losses
    assert sum(losses[half:]) < sum(losses[:half]), losses
    assert known_warnings(trained[arch][1]) == []


def known_warnings(log: str) -> list:
    """The warnings of fairseq's calls into newer hydra and torch (compat.KNOWN_WARNINGS) that a log shows."""
    return [message for category, message in KNOWN_WARNINGS if re.search(f"{category.__name__}: {message}", log)]


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_decodes_every_test_sentence(data_bin, trained, arch):
    proc = run_cli(generate_args(data_bin, trained[arch][0] / "checkpoint_last.pt", "--decoding-steps", "5",
                                 "--noise-beam", "2", "--clamping"), env_extra={"PYTHONWARNINGS": "default"})  # shown
    assert known_warnings(proc.stderr) == []
    assert "DEBUG:hydra" not in proc.stderr  # compat.quiet_hydra_debug
    hyps = hypotheses(proc.stdout)
    assert sorted(hyps) == list(range(60)), "every test sentence is decoded, none dropped"
    assert re.search(r"^Generate test with beam=\d+: BLEU = [0-9.]+ ", proc.stdout, re.M)
    assert len(re.findall(r"^D-\d+\t", proc.stdout, re.M)) == 60


def test_length_beam_and_mbr(data_bin, trained):
    ckpt = trained["difformer_tiny"][0] / "checkpoint_last.pt"
    proc = run_cli(generate_args(data_bin, ckpt, "--decoding-steps", "4", "--length-beam", "3", "--noise-beam", "2",
                                 "--candidate-selection", "mbr-bleu", "--nbest", "6"))
    ids = re.findall(r"^H-(\d+)\t", proc.stdout, re.M)
    assert len(ids) == 60 * 6, "K x M = 6 candidates per sentence, all returned, MBR choice first"


def test_remove_repeats_drops_tokens_equal_to_the_one_before(data_bin, trained):
    """--remove-repeats on one candidate per input: the output is the plain output less each token equal to the one
    before it (SentencePiece pieces, before detokenization), and the log says the flag acted."""
    ckpt = trained["difformer_tiny"][0] / "checkpoint_last.pt"
    plain, deduped = (run_cli(generate_args(data_bin, ckpt, "--decoding-steps", "5", "--post-process", "none", *extra))
                      for extra in ((), ("--remove-repeats",)))
    before = {i: h.split("\t")[1].split() for i, h in hypotheses(plain.stdout).items()}
    after = {i: h.split("\t")[1].split() for i, h in hypotheses(deduped.stdout).items()}
    repeats = sum(a == b for pieces in before.values() for a, b in zip(pieces, pieces[1:]))
    assert repeats > 0, "an undertrained model repeats tokens: the comparison below is not vacuous"
    assert sorted(after) == sorted(before) == list(range(60))
    for i, pieces in before.items():
        assert after[i] == [p for j, p in enumerate(pieces) if j == 0 or p != pieces[j - 1]], i
    assert "--remove-repeats: dropping output tokens" in deduped.stderr
    assert "--remove-repeats" not in plain.stderr


def test_repeats_are_found_across_positions_left_out():
    """A token left out between two equal kept tokens (an eos generated inside a predicted length) does not
    separate them; the first kept token of a row never counts."""
    from fairseq_plugins.generator import repeats_of_kept

    tokens = torch.tensor([[5, 5, 6, 6, 6, 2, 7], [5, 2, 5, 9, 9, 1, 1], [4, 4, 4, 4, 4, 4, 4]])
    keep = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 0, 0], [0, 0, 1, 0, 0, 1, 0]]).bool()
    assert repeats_of_kept(tokens, keep).int().tolist() == [[0, 1, 0, 1, 1, 0, 0], [0, 0, 1, 0, 1, 0, 0],
                                                            [0, 0, 0, 0, 0, 1, 0]]


def test_same_seed_same_output_other_seed_differs(data_bin, trained):
    ckpt = trained["difformer_tiny"][0] / "checkpoint_last.pt"
    runs = [run_cli(generate_args(data_bin, ckpt, "--decoding-steps", "5", "--seed", seed)).stdout
            for seed in ("7", "7", "8")]
    first, again, other = (hypotheses(r) for r in runs)
    assert first == again
    assert first != other


def test_diffuseq_checkpoint_carries_loss_aware_sampler_history(trained):
    import fairseq_plugins  # noqa: F401  (allowlists fairseq's checkpoint types)

    state = torch.load(trained["diffuseq_tiny"][0] / "checkpoint_last.pt", weights_only=True)["model"]
    counts, losses = state["time_sampler._counts"], state["time_sampler._losses"]
    assert counts.sum() > 0, "the sampler history was recorded during training"
    assert (losses[counts > 0, 0] > 0).all()


def test_resume_continues_from_checkpoint(data_bin, trained, tmp_path):
    import shutil

    save = tmp_path / "resume"
    shutil.copytree(trained["diffuseq_tiny"][0], save)
    proc = run_cli(train_args(data_bin, save, "diffuseq_tiny", "--max-update", str(UPDATES + 5)))
    log = proc.stdout + proc.stderr
    assert re.search(rf"num_updates {UPDATES + 5}\b", log), "training went on to the new --max-update"
    assert re.search(rf"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ {UPDATES} updates\)", log)


@pytest.mark.parametrize("steps", ["0", "101"])
def test_bad_decoding_steps(data_bin, trained, steps):
    proc = run_cli(generate_args(data_bin, trained["difformer_tiny"][0] / "checkpoint_last.pt",
                                 "--decoding-steps", steps), check=False)
    one_line_error(proc, "decoding steps must be between 1 and", "T=100", f"got {steps}")


def test_early_stop_must_leave_a_step(data_bin, trained):
    proc = run_cli(generate_args(data_bin, trained["difformer_tiny"][0] / "checkpoint_last.pt",
                                 "--decoding-steps", "5", "--decoding-early-stop", "5"), check=False)
    one_line_error(proc, "--decoding-early-stop 5", "0 <= S < --decoding-steps")


def test_mbr_needs_several_candidates(data_bin, trained):
    proc = run_cli(generate_args(data_bin, trained["difformer_tiny"][0] / "checkpoint_last.pt",
                                 "--candidate-selection", "mbr-bleu"), check=False)
    one_line_error(proc, "mbr-bleu needs several candidates")


def test_length_beam_on_diffuseq_is_refused(data_bin, trained):
    proc = run_cli(generate_args(data_bin, trained["diffuseq_tiny"][0] / "checkpoint_last.pt",
                                 "--length-beam", "3"), check=False)
    one_line_error(proc, "no length predictor")


def test_dictionary_size_mismatch_names_both_sizes(data_bin, trained, tmp_path):
    other = make_data_bin(tmp_path, vocab_size=400, train_lines=600)
    proc = run_cli(generate_args(other, trained["difformer_tiny"][0] / "checkpoint_last.pt"), check=False)
    sizes = (len((data_bin / "dict.en.txt").read_text().splitlines()) + 4,
             len((other / "dict.en.txt").read_text().splitlines()) + 4)
    one_line_error(proc, f"dictionary of {sizes[0]} types", f"has {sizes[1]}")


def test_missing_data_directory(tmp_path):
    proc = run_cli(train_args(tmp_path / "nowhere", tmp_path / "ck", "difformer_tiny", "--max-update", "1"),
                   check=False)
    one_line_error(proc, "nowhere", "does not exist", "fairseq-preprocess")


def test_interactive_translates_stdin_including_an_empty_line(data_bin, trained):
    ckpt = trained["difformer_tiny"][0] / "checkpoint_last.pt"
    proc = run_cli([cli("fairseq-interactive"), data_bin, "--user-dir", ROOT / "fairseq_plugins", "--task",
                    "text_diffusion", "--path", ckpt, "--cpu", "--bpe", "sentencepiece", "--sentencepiece-model",
                    data_bin / "spm.model", "--decoding-steps", "3", "--source-lang", "de", "--target-lang", "en"],
                   input="Ein Hund rennt über die Wiese.\n\nZwei Männer spielen Fußball.\n")
    assert len(re.findall(r"^H-\d+\t", proc.stdout, re.M)) == 3


def test_python_api_translates_strings(data_bin, trained):
    from fairseq_plugins.hub import load

    model = load(trained["difformer_tiny"][0] / "checkpoint_last.pt", data_bin,
                 sentencepiece_model=data_bin / "spm.model", decoding_steps=3, length_beam=2)
    out = model.translate(["Ein Hund rennt über die Wiese.", "Zwei Männer spielen Fußball."])
    assert len(out) == 2 and all(isinstance(s, str) for s in out)
    assert "▁" not in "".join(out), "SentencePiece is undone on the way out"


def test_python_api_refuses_a_misspelt_option(data_bin, trained):
    from fairseq_plugins.errors import DifftextError
    from fairseq_plugins.hub import load

    with pytest.raises(DifftextError, match=r"unknown option 'decoding_step' \(did you mean 'decoding_steps'\?\)"):
        load(trained["difformer_tiny"][0] / "checkpoint_last.pt", data_bin, decoding_step=3)


def test_quickstart_noise_factor_reaches_difformer_training_once():
    from examples.quickstart import NOISE_FACTOR, TRAIN_FLAGS, recipe

    def factors(flags):
        return [flags[i + 1] for i, flag in enumerate(flags) if flag == "--noise-factor"]

    assert factors(recipe("difformer", False)[0]) == [f"{NOISE_FACTOR:g}"]
    assert factors(recipe("difformer", False, 8.0)[0]) == ["8"]
    assert factors(recipe("difformer", True, 2.5)[0]) == ["2.5"], "the smoke flags get one too"
    changed, i = recipe("difformer", False, 8.0)[0], TRAIN_FLAGS.index("--noise-factor")
    assert changed[:i + 1] + changed[i + 2:] == TRAIN_FLAGS[:i + 1] + TRAIN_FLAGS[i + 2:], "nothing else moves"
    assert factors(recipe("mdlm", False)[0]) == [], "the masked recipes carry no Gaussian noise factor"


@pytest.mark.slow
def test_quickstart_smoke(tmp_path):
    proc = run_cli([sys.executable, ROOT / "examples" / "quickstart.py", "--smoke", "--work-dir", tmp_path])
    assert "+ " + cli("fairseq-train") in proc.stdout, "the quickstart prints the fairseq commands it runs"
    m = re.search(r"sacreBLEU on Multi30k test2016 \((\d+) sentences\): ([0-9.]+)", proc.stdout)
    assert m and int(m.group(1)) == 1000
    assert (tmp_path / "checkpoints" / "checkpoint_last.pt").exists()
