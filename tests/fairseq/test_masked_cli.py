"""Masked-diffusion models end to end through the real CLIs: seq2seq train + generate (every sampler, length
beam, MBR), LM train + fairseq-validate (ELBO) + sampling (semi-AR beyond the training length)."""
import math
import re
import sys

import pytest
import torch

from tests.fairseq.cli_helpers import ROOT, SHARED, cli, generate_args, run_cli, train_args
from tests.fairseq.test_cli_e2e import hypotheses, one_line_error

SEQ2SEQ = ["mdlm_tiny", "md4_tiny", "genmd4_tiny", "diffusionbert_tiny"]
UPDATES = 40


@pytest.fixture(scope="module")
def trained(data_bin, tmp_path_factory):
    out = {}
    for arch in SEQ2SEQ:
        save = tmp_path_factory.mktemp(arch)
        proc = run_cli(train_args(data_bin, save, arch, "--max-update", str(UPDATES)))
        out[arch] = (save / "checkpoint_last.pt", proc.stdout + proc.stderr)
    return out


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_seq2seq_training_lowers_the_bound(trained, arch):
    log = trained[arch][1]
    nelbo = [float(x) for x in re.findall(r"\| train_inner \|.*? nelbo=([0-9.]+)", log)]
    assert len(nelbo) == UPDATES // 5
    assert nelbo[-1] < 0.9 * nelbo[0], nelbo
    ppl = re.findall(r"\| train_inner \|.*? nelbo=([0-9.]+).*? ppl=([0-9.]+)", log)[-1]
    assert float(ppl[1]) == pytest.approx(math.exp(float(ppl[0])), rel=0.01)


@pytest.mark.parametrize(
    "arch,flags",
    [
        ("mdlm_tiny", ["--length-beam", "3"]),  # confidence (mask-predict), greedy
        ("mdlm_tiny", ["--sampler", "ddpm_cache", "--noise-beam", "2", "--candidate-selection", "mbr-bleu"]),
        ("md4_tiny", ["--sampler", "ddpm", "--token-topk", "5", "--token-topp", "0.9"]),
        ("genmd4_tiny", ["--sampler", "ddpm", "--token-temperature", "0.5"]),
        ("diffusionbert_tiny", ["--token-temperature", "0.7", "--noise-beam", "2"]),
    ],
)
def test_generate_decodes_every_test_sentence(data_bin, trained, arch, flags):
    proc = run_cli(generate_args(data_bin, trained[arch][0], "--decoding-steps", "4", *flags))
    hyps = hypotheses(proc.stdout)
    assert sorted(hyps) == list(range(60))
    assert re.search(r"^Generate test with beam=\d+: BLEU = [0-9.]+ ", proc.stdout, re.M)
    lengths = [len(h.split("\t", 1)[1].split()) for h in hyps.values()]
    assert min(lengths) >= 1  # length >= 2 with eos: at least one generated token per sentence


def test_same_seed_same_samples_and_seeds_differ(data_bin, trained):
    ckpt = trained["mdlm_tiny"][0]
    runs = [run_cli(generate_args(data_bin, ckpt, "--decoding-steps", "3", "--sampler", "ddpm", "--seed", s)).stdout
            for s in ("1", "1", "2")]
    first, again, other = (hypotheses(r) for r in runs)
    assert first == again
    assert first != other


@pytest.mark.parametrize(
    "arch,flags,fragments",
    [
        ("md4_tiny", ["--sampler", "ddpm_cache"], ["ddpm_cache", "time-agnostic", "--sampler ddpm"]),
        ("mdlm_tiny", ["--noise-beam", "2"], ["identical candidates", "--token-temperature"]),
        ("mdlm_tiny", ["--temperature", "0.5"], ["fairseq's autoregressive sampling flag", "--token-temperature"]),
        ("mdlm_tiny", ["--clamping"], ["--clamping applies to continuous"]),
        ("mdlm_tiny", ["--sampler", "nope"], ["unknown --sampler", "confidence"]),
    ],
)
def test_bad_decoding_flags_are_one_line_errors(data_bin, trained, arch, flags, fragments):
    proc = run_cli(generate_args(data_bin, trained[arch][0], *flags), check=False)
    one_line_error(proc, *fragments)


def test_sampler_flag_on_a_continuous_model_is_refused(data_bin, difformer_dir):
    proc = run_cli(generate_args(data_bin, difformer_dir / "checkpoint_last.pt", "--sampler", "ddpm"), check=False)
    one_line_error(proc, "--sampler applies to masked diffusion models only")


def test_incompatible_objective_and_schedule_is_a_one_line_error(data_bin, tmp_path):
    proc = run_cli(train_args(data_bin, tmp_path, "mdlm_tiny", "--masking-schedule", "spindle", "--max-update", "1"),
                   check=False)
    one_line_error(proc, "--objective mdlm", "loglinear", "spindle")


def test_prefix_time_conditioning_trains_and_decodes(data_bin, tmp_path):
    """(time-agnostic: mdlm/diffusionbert presets; layer-wise: md4/genmd4 presets, tested above)"""
    run_cli(train_args(data_bin, tmp_path, "diffusionbert_tiny", "--time-conditioning", "prefix",
                       "--max-update", "5"))
    proc = run_cli(generate_args(data_bin, tmp_path / "checkpoint_last.pt", "--decoding-steps", "3",
                                 "--sampler", "ddpm"))
    assert len(hypotheses(proc.stdout)) == 60


# --- language modelling -------------------------------------------------------------------------
LM_UPDATES = 60


@pytest.fixture(scope="module")
def lm_bin(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("brown")
    raw = tmp / "raw"
    raw.mkdir()
    for split, n in (("train", 2000), ("valid", 150)):
        lines = (SHARED / "brown" / f"brown.{split}.txt").read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (raw / f"brown.{split}.txt").write_text("".join(lines), encoding="utf-8")
    out = tmp / "bin"
    run_cli([sys.executable, ROOT / "data_scripts" / "prepare_lm.py", "--raw-dir", raw, "--pattern",
             "brown.{split}.txt", "--out-dir", out, "--vocab-size", "500", "--workers", "1"])
    return out


def lm_train_args(data, save, arch, *extra):
    return [cli("fairseq-train"), data, "--user-dir", ROOT / "fairseq_plugins", "--task", "text_diffusion_lm",
            "--arch", arch, "--criterion", "text_diffusion_loss", "--optimizer", "adam", "--lr", "3e-3",
            "--tokens-per-sample", "64", "--batch-size", "16", "--save-dir", save, "--no-epoch-checkpoints",
            "--log-interval", "10", "--log-format", "simple", "--cpu", "--seed", "1", "--num-workers", "0", *extra]


@pytest.fixture(scope="module")
def lm(lm_bin, tmp_path_factory):
    out = {}
    for arch in ("mdlm_lm_tiny", "diffusionbert_lm_tiny"):
        save = tmp_path_factory.mktemp(arch)
        proc = run_cli(lm_train_args(lm_bin, save, arch, "--max-update", str(LM_UPDATES)))
        out[arch] = (save / "checkpoint_last.pt", proc.stdout + proc.stderr)
    return out


def validate(lm_bin, ckpt, *extra):
    proc = run_cli([cli("fairseq-validate"), lm_bin, "--user-dir", ROOT / "fairseq_plugins", "--task",
                    "text_diffusion_lm", "--path", ckpt, "--cpu", "--batch-size", "16", *extra])
    m = re.search(r"valid on 'valid' subset \|.*? nelbo ([0-9.]+) .*?\| ppl ([0-9.]+)", proc.stdout + proc.stderr)
    assert m, proc.stderr[-2000:]
    return float(m.group(1)), float(m.group(2))


@pytest.mark.parametrize("arch", ["mdlm_lm_tiny", "diffusionbert_lm_tiny"])
def test_lm_trains_and_validates_an_elbo_bound(lm_bin, lm, arch):
    log = lm[arch][1]
    nelbo = [float(x) for x in re.findall(r"\| train_inner \|.*? nelbo=([0-9.]+)", log)]
    assert len(nelbo) == LM_UPDATES // 10
    assert nelbo[-1] < 0.9 * nelbo[0] and sum(nelbo[3:]) < sum(nelbo[:3]), nelbo
    bound, ppl = validate(lm_bin, lm[arch][0], "--elbo-samples", "4")
    assert ppl == pytest.approx(math.exp(bound), rel=0.01)
    vocab = len((lm_bin / "dict.txt").read_text().splitlines()) + 4  # + bos, pad, eos, unk
    assert 1.0 < bound < math.log(vocab)  # learnt something, and no better than perfect


def test_elbo_samples_average_the_monte_carlo_draws(lm_bin, lm):
    """--elbo-samples K: the reported bound is the mean of K draws of time and masks (exactly, in-process),
    seeded per batch from (--seed, its example ids): the same seed gives the same bound, another seed another."""
    from fairseq import checkpoint_utils

    import fairseq_plugins  # noqa: F401  (registers the task and the safe checkpoint loader)
    from fairseq.tasks import FairseqTask
    from fairseq_plugins.criterions.text_diffusion_loss import TextDiffusionLoss
    from fairseq_plugins.reliability import validation_seed

    ckpt = lm["mdlm_lm_tiny"][0]
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(ckpt)], arg_overrides={"data": str(lm_bin)})
    criterion = TextDiffusionLoss(task)
    task.load_dataset("valid")
    batch = task.dataset("valid").collater([task.dataset("valid")[i] for i in range(4)])
    torch.manual_seed(validation_seed(task.cfg.seed, batch["id"].tolist()))
    singles = [FairseqTask.valid_step(task, batch, models[0], criterion)[2] for _ in range(4)]
    assert len({s["elbo_nats"] for s in singles}) == 4  # four different draws
    task.cfg.elbo_samples = 4
    state = torch.get_rng_state()
    _, sample_size, four = task.valid_step(batch, models[0], criterion)
    assert torch.equal(torch.get_rng_state(), state)  # validation leaves the caller's RNG alone
    assert sample_size == 4 and four["ntokens"] == singles[0]["ntokens"]
    assert four["elbo_nats"] == pytest.approx(sum(s["elbo_nats"] for s in singles), rel=1e-6)
    assert four["elbo_tokens"] == sum(s["elbo_tokens"] for s in singles)

    runs = [validate(lm_bin, ckpt, "--elbo-samples", "1", "--seed", s)[0] for s in ("1", "1", "2")]
    assert runs[0] == runs[1], "the same seed draws the same times and masks"
    assert runs[0] != runs[2], "different seeds draw different times and masks"


def test_sample_cli_prints_n_samples_and_speed(lm_bin, lm):
    proc = run_cli([sys.executable, "-m", "fairseq_plugins.sample", lm_bin, "--path", lm["mdlm_lm_tiny"][0],
                    "--num-samples", "3", "--length", "32", "--decoding-steps", "8", "--sampler", "ddpm_cache",
                    "--post-process", "sentencepiece"], cwd=ROOT)
    assert len(re.findall(r"^S-\d+\t", proc.stdout, re.M)) == 3
    assert re.search(r"sampled 3 sequences of 32 tokens in [0-9.]+ s \([0-9.]+ samples/s", proc.stderr)


@pytest.mark.parametrize("length", [40, 150])  # within, and beyond (semi-AR), the trained length of 64
def test_sampling_gives_the_requested_length_without_masks(lm_bin, lm, length):
    from fairseq_plugins.sample import load_language_model, parse_args, sample

    model, _ = load_language_model(str(lm["mdlm_lm_tiny"][0]), str(lm_bin), torch.device("cpu"))
    args = parse_args([str(lm_bin), "--path", "x", "--num-samples", "3", "--length", str(length),
                       "--decoding-steps", "4", "--block-length", "32"])
    tokens = sample(model, args, torch.device("cpu"))
    assert tokens.shape == (3, length)
    assert not bool((tokens == model.mask_id).any()) and not bool((tokens == model.pad).any())


def test_sampling_beyond_the_training_length_is_semi_autoregressive(lm_bin, lm, capsys):
    """The model length is the training --tokens-per-sample (64 here), not the position table (128 for the tiny
    preset): 100 tokens are sampled in blocks, and the default length is 64."""
    from fairseq_plugins import sample as sampler

    model, _ = sampler.load_language_model(str(lm["mdlm_lm_tiny"][0]), str(lm_bin), torch.device("cpu"))
    assert (model.context_length, model.max_positions()) == (64, 128)
    common = [str(lm_bin), "--path", str(lm["mdlm_lm_tiny"][0]), "--num-samples", "2", "--decoding-steps", "4"]
    sampler.main([*common, "--length", "100"])
    assert re.search(r"sampled 2 sequences of 100 tokens in .*, semi-autoregressive\)", capsys.readouterr().err)
    sampler.main(common)
    assert re.search(r"sampled 2 sequences of 64 tokens in [^\n]*tokens/s\)", capsys.readouterr().err)


def test_sampling_a_seq2seq_model_is_a_one_line_error(lm_bin, trained):
    proc = run_cli([sys.executable, "-m", "fairseq_plugins.sample", lm_bin, "--path", trained["mdlm_tiny"][0]],
                   cwd=ROOT, check=False)
    one_line_error(proc, "'text_diffusion'", "not a masked-diffusion language model", "fairseq-generate")


def test_lm_task_refuses_a_seq2seq_arch(lm_bin, tmp_path):
    proc = run_cli(lm_train_args(lm_bin, tmp_path, "mdlm_tiny", "--max-update", "1"), check=False)
    one_line_error(proc, "text_diffusion_lm", "mdlm_lm_small")


def test_seq2seq_task_refuses_a_language_model_arch(data_bin):
    from fairseq_plugins.errors import DifftextError
    from tests.fairseq.cli_helpers import build_in_process

    with pytest.raises(DifftextError, match=r"--arch mdlm_lm_tiny is a language model; .*--task text_diffusion_lm"):
        build_in_process(data_bin, "mdlm_lm_tiny")


def test_each_task_refuses_the_other_kind_of_data(data_bin, lm_bin):
    from fairseq_plugins.errors import DifftextError
    from fairseq_plugins.tasks.text_diffusion import check_data_paths

    parallel = r"holds parallel data \(dict.de.txt, dict.en.txt\).*--task text_diffusion,"
    with pytest.raises(DifftextError, match=parallel):
        check_data_paths(str(data_bin), "text_diffusion_lm")
    with pytest.raises(DifftextError, match=r"holds monolingual data \(dict.txt\).*--task text_diffusion_lm"):
        check_data_paths(str(lm_bin), "text_diffusion")
    assert check_data_paths(str(data_bin), "text_diffusion") == [str(data_bin)]
    assert check_data_paths(str(lm_bin), "text_diffusion_lm") == [str(lm_bin)]


def test_bert_init_through_fairseq_train_and_not_needed_to_load(lm_bin, tmp_path):
    """--bert-init copies BERT at the start of training; loading the checkpoint later does not need it."""
    import shutil

    from tests.fairseq.test_bert_init import save_tiny_bert

    bert_dir = tmp_path / "bert"
    bert_dir.mkdir()
    save_tiny_bert(bert_dir)
    proc = run_cli(lm_train_args(lm_bin, tmp_path / "ck", "diffusionbert_lm_tiny", "--bert-init", bert_dir,
                                 "--max-update", "2"))
    assert re.search(r"initialised 1 transformer stack\(s\) and \d+ of \d+ token embeddings from BERT",
                     proc.stdout + proc.stderr)
    shutil.rmtree(bert_dir)
    bound, _ = validate(lm_bin, tmp_path / "ck" / "checkpoint_last.pt")
    assert bound > 0
