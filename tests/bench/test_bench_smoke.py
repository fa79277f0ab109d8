"""The benchmark suite (bench/run.py) in smoke mode: every stage runs end to end on tiny models, so the suite
cannot rot. The full measurement is not part of the test run."""
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu import mfu, peak_flops
from bench.models import DEFAULT_MODELS, FULL_GRID, SMOKE_MODELS, decode_configs, specs

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def number(x, low=0.0, high=math.inf) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and low <= x <= high


def run_bench(*args):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def check_train(t):
    w = t["window"]
    assert w["updates"] > 0 and number(w["seconds"]) and w["seconds"] > 0 and w["target_tokens"] > 0
    assert number(t["ms_per_target_token"]) and t["ms_per_target_token"] > 0
    assert number(t["peak_rss_mb"]) and t["peak_rss_mb"] > 50 and t["parameters"] > 0
    assert t["profile"]["top_ops"] and all(number(o["share"], 0, 1) for o in t["profile"]["top_ops"])
    assert t["command"].startswith("fairseq-train ")


def check_decode(d):
    assert d["grid"] and any(g["name"] == d["default"] for g in d["grid"])
    for g in d["grid"]:
        assert number(g["sacrebleu"], 0, 100) and number(g["repeated_tokens"], 0, 1)
        assert number(g["sentences_per_s_b128"]) and g["sentences_per_s_b128"] > 0
        assert number(g["sentences_per_s_b1"]) and g["sentences_per_s_b1"] > 0
        assert g["command"].startswith("fairseq-generate ")
    assert d["curve"] and all(number(p["sacrebleu"], 0, 100) and number(p["train_minutes"]) for p in d["curve"])
    assert number(d["memory"]["peak_rss_mb"]) and d["memory"]["peak_rss_mb"] > 50
    p = d["profile"]
    assert number(p["outside_forward_share"], 0, 1) and number(p["forward_s"]) and p["forward_calls"] > 0
    assert d["commit"] and d["date"]  # the decoding's own, which --reevaluate makes later than the training's


@pytest.mark.slow
def test_smoke_suite_end_to_end(tmp_path):
    out = tmp_path / "smoke"
    log = run_bench("--smoke", "--out", out)
    results = {p.stem: json.loads(p.read_text()) for p in (out / "results").glob("*.json")}
    assert set(SMOKE_MODELS) <= set(results), log
    for name in SMOKE_MODELS:
        r = results[name]
        assert r["smoke"] and r["key"]["commit"] and r["key"]["config"] and r["machine"]["torch"]
        check_train(r["train"])
        if r["family"].startswith("lm_"):
            v = r["lm"]["validate"]
            assert v and all(number(x["ppl"]) and x["ppl"] > 1 for x in v)
            assert number(r["lm"]["sampling"].get("samples_per_s")), r["lm"]["sampling"]
            assert r["lm"]["commit"] == r["key"]["commit"] and r["lm"]["date"]
            curve = r["lm"]["curve"]  # every curve point validated; the last is the final model's first run
            assert [p["fraction"] for p in curve] == [0.9, 1.0] and all(number(p["ppl"]) and p["ppl"] > 1
                                                                         for p in curve)
            assert curve[-1]["ppl"] == v[-1]["ppl"]  # the largest K's run (smoke: one seed)
            if r["family"] == "lm_discrete":  # the context check: CE of a masked token at 15/50/100% masked
                c = r["lm"]["context"]
                assert c["blocks"] > 0 and all(number(c[f"ce_nats_{p}pct_masked"]) and c[f"ce_nats_{p}pct_masked"] > 0
                                               for p in (15, 50, 100)), c
        else:
            check_decode(r["decode"])

    kd = results["difformer_kd"]  # trained on the smoke AR model's translations of the training slice
    assert kd["teacher"]["model"] == "ar" and kd["teacher"]["checkpoint"].endswith("checkpoints/ar/curve_1.pt")
    assert kd["key"]["teacher_sha256"] == kd["teacher"]["teacher_sha256"] and kd["teacher"]["failed"] == 0
    assert "data/multi30k_distilled_ar --user-dir" in kd["train"]["command"]
    distilled = (out / "work" / "data" / "multi30k_distilled_ar" / "tok" / "train.en").read_text().splitlines()
    reference = (out / "work" / "data" / "multi30k" / "tok" / "train.en").read_text().splitlines()
    assert len(distilled) == len(reference) and distilled != reference

    md = (out / "RESULTS.md").read_text()
    for heading in ("## Targets", "## 1. Training cost", "## 2. Quality", "## 3. Decoding speed",
                    "## 4. Decoding efficiency", "## 5. Language modelling", "## 6. Memory", "## 7. GPU"):
        assert heading in md
    for name in SMOKE_MODELS:
        assert f"| {results[name]['label']} |" in md
    assert "| 1 training cost | Difformer: <= 1.20x AR" in md and "| 5 language model | MDLM LM" in md
    assert "CE 15% / 100% masked" in md
    for png in ("training_cost", "speed_quality", "learning_curves", "lm_bound", "lm_curve"):
        data = (out / "results" / f"{png}.png").read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, png

    # the GPU item alone into a folder without the CPU models' results (as on a GPU machine; on the CPU here, tiny
    # model, fp32, with the data-bin passed in, as a GPU machine has no raw data): its JSON, no RESULTS.md
    alone = tmp_path / "gpu-alone"
    log = run_bench("--smoke", "--out", alone, "--models", "gpu", "--work-dir", out / "work",
                    "--mt-data-bin", out / "work" / "data" / "multi30k", "--gpu-optimizer", "adamw_torch")
    assert "no RESULTS.md: it needs the CPU models' results" in log and not (alone / "RESULTS.md").exists()
    gpu = json.loads((alone / "results" / "gpu.json").read_text())
    assert gpu["key"]["optimizer"] == "adamw_torch"
    fp32 = gpu["precisions"]["fp32"]
    assert number(fp32["tokens_per_s"]) and fp32["tokens_per_s"] > 0 and fp32["parameters"] > 0
    assert fp32["train_command"].endswith("--optimizer adamw_torch")
    decoded = {k: v for k, v in fp32["decode"].items() if isinstance(v, dict)}
    assert len(decoded) == 2 and all(number(v["sentences_per_s"]) and v["sentences_per_s"] > 0
                                     and number(v["length_ratio"]) and v["length_ratio"] > 0 for v in decoded.values())
    assert "--optimizer" not in " ".join(v["command"] for v in decoded.values())
    assert number(fp32["decode"]["outside_network_share"], 0, 1) and fp32["profile"]["top_ops"]

    # copied next to the CPU models' results, a run of both reuses each, and the report adds section 7
    shutil.copy(alone / "results" / "gpu.json", out / "results" / "gpu.json")
    log = run_bench("--smoke", "--out", out, "--models", "ar,gpu", "--mt-data-bin", out / "work" / "data" / "multi30k",
                    "--gpu-optimizer", "adamw_torch")
    assert "bench: ar: cached" in log and "bench: gpu: cached" in log
    md = (out / "RESULTS.md").read_text()
    assert "## 7. GPU" in md and gpu["device"] in md
    # a CPU run has no GPU memory or MFU figure: dashes
    assert re.search(r"^\| fp32 \| [\d,]+ \| [\d,]+ \| – \| – \| ", md, re.M)

    # the dedicated cost pass: section 1 then reads results/cost.json
    run_bench("--smoke", "--out", out, "--cost-only", "--models", "ar,difformer", "--jobs", "1")
    cost = json.loads((out / "results" / "cost.json").read_text())["models"]
    assert set(cost) == {"ar", "difformer"}
    for entry in cost.values():
        check_train(entry["train"])
        assert entry["train"]["window"]["updates"] == entry["train"]["window"]["requested"]
    md = (out / "RESULTS.md").read_text()
    assert "Measured in a dedicated pass" in md and "| 1 training cost | Difformer: <= 1.20x AR" in md

    # the whole test set with the default setting, into the model's result (section 2 reads it)
    run_bench("--smoke", "--out", out, "--full-test", "--models", "ar,difformer")
    for name in ("ar", "difformer"):
        r = json.loads((out / "results" / f"{name}.json").read_text())
        full = r["decode"]["full_test"]
        assert number(full["sacrebleu"], 0, 100) and full["config"] == r["decode"]["default"]
        assert number(full["repeated_tokens"], 0, 1)
        assert full["sentences"] >= r["decode"]["grid"][0]["sentences_b128"] and "--distributed" not in full["command"]

    # --reevaluate decodes again on the finished training (after a change to decoding), and drops the whole-test-set
    # figure, which belonged to the earlier decoding, saying so
    before = json.loads((out / "results" / "mdlm.json").read_text())
    log = run_bench("--smoke", "--out", out, "--reevaluate", "--models", "ar,mdlm")
    assert "bench: mdlm: reusing its finished training" in log and "bench: mdlm: decoding" in log
    after = json.loads((out / "results" / "mdlm.json").read_text())
    assert after["train"] == before["train"] and after["date"] != before["date"]
    check_decode(after["decode"])
    plan = json.loads((out / "work" / "stats" / "mdlm.decode-plan.json").read_text())
    worker_log = (out / "work" / "logs" / "mdlm.decode.log").read_text()
    assert worker_log.count("decode_worker: ") == len(plan["jobs"])  # every job measured again, none resumed
    assert "bench: ar: its whole-test-set figure" in log and "run --full-test again" in log
    assert "full_test" not in json.loads((out / "results" / "ar.json").read_text())["decode"]


def test_grid_of_the_full_suite():
    small = specs("small")
    difformer, default = decode_configs(small["difformer"], FULL_GRID)
    names = {c.name for c in difformer}
    assert len(difformer) == 3 * (3 * 2 + 5) + 1  # steps x (K x M with score + K x M >= 2 with MBR) + the paper's
    assert {"s20_k3_m1_score", "s20_k7_m3_mbr-bleu", default} <= names and "s5_k1_m1_mbr-bleu" not in names
    paper = next(c for c in difformer if c.early_stop)  # Difformer's published decoding, early stop included
    assert paper.name == "s20_e5_k7_m3_mbr-bleu" and (paper.steps, paper.early_stop) == (20, 5)
    assert " ".join(paper.flags) == ("--decoding-steps 20 --decoding-early-stop 5 --length-beam 7 --noise-beam 3 "
                                     "--candidate-selection mbr-bleu")
    small_grid = dict(FULL_GRID, steps=[5, 10], length_beams=[1, 3], noise_beams=[1])
    assert not any(c.early_stop for c in decode_configs(small["difformer"], small_grid)[0])
    diffuseq, _ = decode_configs(small["diffuseq"], FULL_GRID)
    assert {c.length_beam for c in diffuseq} == {1}  # no length predictor
    assert not any(c.early_stop for c in decode_configs(small["mdlm"], FULL_GRID)[0] + diffuseq)
    mdlm, default = decode_configs(small["mdlm"], FULL_GRID)
    assert default == "s10_k3_m1_score"
    assert all(("--token-temperature" in c.flags) == (c.noise_beam > 1) for c in mdlm)
    ar, default = decode_configs(small["ar"], FULL_GRID)
    assert default == "beam5" and {c.name for c in ar} == {"beam1", "beam5"}


def test_same_size_flags():
    """The fairseq baselines get the *_small size; language models 6 layers; all share the optimiser."""
    small = specs("small")
    ar = " ".join(small["ar"].arch)
    assert "--encoder-layers 3" in ar and "--decoder-embed-dim 256" in ar and "--decoder-ffn-embed-dim 1024" in ar
    assert "--decoder-attention-heads 4" in ar and "--share-all-embeddings" in ar
    lm = " ".join(small["transformer_lm"].arch)
    assert "--decoder-layers 6" in lm and "--decoder-input-dim 256" in lm and "--decoder-output-dim 256" in lm
    assert small["mdlm"].arch == ("--arch", "mdlm_small") and small["mdlm_lm"].arch == ("--arch", "mdlm_lm_small")


def test_mfu_estimate():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "fp32") == 51e12
    assert peak_flops("cpu", "fp32") is None and mfu(10, 10.0, "cpu", "fp32") is None
    assert mfu(50_000_000, 100_000.0, "NVIDIA H200", "fp16") == pytest.approx(6 * 5e7 * 1e5 / 989e12)


def test_gpu_item_is_measured_again_for_another_optimizer(tmp_path, monkeypatch, capsys):
    """The GPU result is cached under its key, which carries the optimizer (the smoke suite runs the item once)."""
    import bench.gpu as gpu
    from bench.pipeline import Settings

    measured = []
    def measure(spec, settings, key, force, precision, flags, device, optimizer_flags=()):
        measured.append((precision, list(optimizer_flags)))
        return {"tokens_per_s": 1.0}

    monkeypatch.setattr(gpu, "_measure", measure)
    (tmp_path / "results").mkdir()
    s = Settings(results=tmp_path / "results", work=tmp_path / "work", mt_data=tmp_path, lm_data=tmp_path, budget=1,
                 lm_budget=1, smoke=True)
    first = gpu.run_gpu(s, 1024, 2, optimizer="adam")
    assert measured == [("fp32", [])] and first["key"]["optimizer"] == "adam"
    assert gpu.run_gpu(s, 1024, 2, optimizer="adam") == first and "bench: gpu: cached" in capsys.readouterr().out
    fused = gpu.run_gpu(s, 1024, 2, optimizer="adamw_torch")
    assert measured[1:] == [("fp32", ["--optimizer", "adamw_torch"])] and fused["key"]["optimizer"] == "adamw_torch"
    assert json.loads((tmp_path / "results" / "gpu.json").read_text())["key"] == fused["key"]


def test_mt_data_bin_must_be_a_prepared_data_bin(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(tmp_path),
                           "--models", "ar", "--mt-data-bin", str(tmp_path / "nowhere")], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "lacks manifest.json, dict.en.txt, raw/test.en" in proc.stderr.strip().splitlines()[-1]


def test_report_names_a_gpu_precision_that_failed():
    """One precision failing (e.g. fp16 overflow) is a row and a line of its own; the others stay reported."""
    from bench.report import Report

    decode = {"s20_b128": {"sentences_per_s": 900.0, "sacrebleu": 1.5, "length_ratio": 1.1, "sentences": 512},
              "outside_network_share": 0.05, "profiled": "s20_b128_profile", "worker": "python ..."}
    fp32 = {"tokens_per_s": 1e5, "target_tokens_per_s": 5e4, "peak_gpu_memory_mb": 900.0, "mfu": 0.1,
            "decode": decode}
    gpu = {"model": "difformer_iwslt_de_en", "device": "NVIDIA H200", "key": {"updates": 220, "max_tokens": 4096},
           "precisions": {"fp32": fp32, "fp16": {"error": "python train_worker.py failed (exit 1); log x:\n"
                                                          "FloatingPointError: Minimum loss scale reached"}}}
    lines = Report({}, gpu, "python bench/run.py").gpu_section()
    text = "\n".join(lines)
    assert "| fp32 | 100,000 | 50,000 | 900 | 10.0% | 900.0 (1.5 BLEU, length x1.10) | 5.0% |" in text
    assert "Decoding (512 sentences of test2016, batch 128) reads the checkpoint after the 220 training" in text
    assert "| fp16 | failed | failed | failed | failed | failed | failed |" in text
    assert "- **fp16 failed**: python train_worker.py failed (exit 1); log x: ... `FloatingPointError: Minimum" in text
    assert "4096 tokens per batch, fairseq's adam;" in text  # results from before --gpu-optimizer: fairseq's
    gpu["key"]["optimizer"] = "adamw_torch"
    assert "4096 tokens per batch, `--optimizer adamw_torch`;" in "\n".join(Report({}, gpu, "c").gpu_section())


def test_commit_outside_a_git_checkout(tmp_path, monkeypatch):
    """A copy of the tree sent to a GPU machine is no git checkout: results record the commit its sender names."""
    import bench.common as common

    monkeypatch.setattr(common, "ROOT", tmp_path)
    monkeypatch.setenv("DIFFTEXT_COMMIT", "abc123")
    assert common.git_commit() == "abc123"
    monkeypatch.delenv("DIFFTEXT_COMMIT")
    assert common.git_commit() == "unknown"


def test_cost_only_needs_the_ar_model(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(tmp_path),
                           "--cost-only", "--models", "difformer"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "--cost-only needs the AR model" in proc.stderr


def test_full_test_without_a_training_in_the_work_dir_is_a_one_line_error(tmp_path):
    """A result committed from another machine has no checkpoints here: --full-test says so, no traceback."""
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "mdlm.json").write_text(json.dumps({"smoke": True, "decode": {"grid": []}}))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(tmp_path),
                           "--full-test", "--models", "mdlm"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "mdlm: no finished training in this work directory" in proc.stderr.strip().splitlines()[-1]


def _result(name, family, bleu, speed, processor):
    grid = [{"name": "s5", "sacrebleu": bleu, "sentences_per_s_b128": speed, "sentences_per_s_b1": speed / 10,
             "sentences_b128": 128, "sentences_b1": 10}]
    return {"model": name, "label": name.upper(), "family": family,
            "machine": {"processor": processor, "cpu_cores": 2, "torch_threads": 1, "gpu": None},
            "train": {}, "decode": {"default": "s5", "grid": grid, "curve": [{"fraction": 1.0, "sacrebleu": bleu,
                                                                              "updates": 100, "train_minutes": 45.0}]}}


def test_report_does_not_compare_models_timed_on_another_machine():
    """A model trained on another machine than the AR model gets no % of AR or speed ratio as a verdict."""
    from bench.report import INCOMPARABLE, Report

    results = {"ar": _result("ar", "ar", 40.0, 100.0, "Xeon"),
               "difformer": _result("difformer", "continuous", 36.0, 150.0, "EPYC"),
               "mdlm": _result("mdlm", "discrete", 30.0, 120.0, "Xeon")}
    rep = Report(results, None, "cmd")
    quality, speed = "\n".join(rep.quality()), "\n".join(rep.speed())
    verdicts = {t["target"]: t["met"] for t in rep.targets}
    assert verdicts["best continuous >= 85% of AR beam 5 BLEU"] == INCOMPARABLE  # 90%, but on another machine
    assert verdicts["best discrete >= 85% of AR beam 5 BLEU"] is False  # 75%, same machine
    assert "| 90.0% † |" in quality and "| 75.0% |" in quality
    fast = next(t for t in rep.targets if t["target"].startswith("a diffusion setting"))
    assert fast["met"] and "MDLM" in fast["measured"] and "DIFFORMER" not in fast["measured"]
    assert "1.50 †" in speed and "1.20 |" in speed
    assert "Targets whose figure comes from another machine" in "\n".join(rep.summary())


def test_noise_factor_variants_differ_from_difformer_in_their_noise_factor_only():
    base = specs("small")["difformer"]
    for factor in (8, 16):
        variant = specs("small")[f"difformer_nf{factor}"]
        assert variant.arch == tuple(str(factor) if a == "4" else a for a in base.arch)
        assert (variant.task, variant.criterion, variant.decode_flags, variant.family) == \
            (base.task, base.criterion, base.decode_flags, base.family)
    kd, kd16 = specs("small")["difformer_kd"], specs("small")["difformer_kd_nf16"]  # the same on distilled data
    assert kd.arch == base.arch and kd16.arch == specs("small")["difformer_nf16"].arch
    assert (kd16.task, kd16.criterion, kd16.decode_flags, kd16.teacher) == (kd.task, kd.criterion, kd.decode_flags, "ar")
    assert "difformer_kd_nf16" not in DEFAULT_MODELS


def test_report_without_the_ar_model_leaves_the_speed_target_unmeasured():
    """A run of diffusion models alone (a variant beside the suite) has no AR speed to divide by: item 3's target
    is "not measured" there, not "not met"; with the AR model a slow setting is not met."""
    from bench.report import Report

    slow = _result("difformer", "continuous", 30.0, 50.0, "Xeon")
    for results, met, measured in (({"difformer": slow}, None, "–"),
                                   ({"ar": _result("ar", "ar", 40.0, 100.0, "Xeon"), "difformer": slow}, False, "none")):
        rep = Report(results, None, "cmd")
        rep.speed()
        fast = next(t for t in rep.targets if t["target"].startswith("a diffusion setting"))
        assert (fast["met"], fast["measured"]) == (met, measured)


def test_report_reads_the_paper_configuration_with_its_early_stop():
    """Item 3's paper configuration is Difformer's published decoding, early stop 5 included (15 network calls);
    results decoded before it was in the grid are read from the 20-step setting without it."""
    from bench.report import Report

    def difformer(*settings):
        r = _result("difformer", "continuous", 30.0, 10.0, "Xeon")
        r["decode"]["profile"] = {"outside_forward_share": 0.1, "config": "s5"}
        r["decode"]["grid"] += [{"name": name, "sacrebleu": 30.0, "sentences_per_s_b128": speed,
                                 "sentences_per_s_b1": speed, "sentences_b128": 128, "sentences_b1": 10,
                                 "steps": 20, "length_beam": 7, "noise_beam": 3, "early_stop": stop}
                                for name, speed, stop in settings]
        return r

    paper, plain = ("s20_e5_k7_m3_mbr-bleu", 40.0, 5), ("s20_k7_m3_mbr-bleu", 30.0, 0)
    for settings, name, ratio, limit in (((plain, paper), "s20_e5_k7_m3_mbr-bleu", "0.40x", "20 steps (early stop 5: "
                                                                                             "15 network calls) x 21"),
                                         ((plain,), "s20_k7_m3_mbr-bleu", "0.30x", "20 steps x 21")):
        rep = Report({"ar": _result("ar", "ar", 40.0, 100.0, "Xeon"), "difformer": difformer(*settings)}, None, "c")
        rep.speed()
        target = next(t for t in rep.targets if t["target"] == f"Difformer {name} >= 0.3x AR at b128")
        assert (target["measured"], target["met"]) == (ratio, True) and target["limits"].startswith(limit)


def test_report_shows_repeated_words_from_the_bleu_figures_sentences():
    """Section 2's repeated words come from the same sentences as its BLEU: the whole test set where --full-test
    decoded it (none for a figure recorded before the field), else the grid's default setting; the quality
    target's limit names them beside the AR model's."""
    from bench.report import Report

    results = {"ar": _result("ar", "ar", 40.0, 100.0, "Xeon"),
               "difformer": _result("difformer", "continuous", 20.0, 150.0, "Xeon"),
               "mdlm": _result("mdlm", "discrete", 30.0, 120.0, "Xeon")}
    for name, grid_share, full_share in (("ar", 0.5, 0.002), ("difformer", 0.5, 0.231), ("mdlm", 0.04, None)):
        results[name]["decode"]["grid"][0]["repeated_tokens"] = grid_share
        full = {"sacrebleu": results[name]["decode"]["grid"][0]["sacrebleu"], "sentences": 1000}
        results[name]["decode"]["full_test"] = dict(full, repeated_tokens=full_share) if full_share else full
    rep = Report(results, None, "cmd")
    rows = {line.split(" | ")[0]: line for line in rep.quality() if line.startswith("| ")}
    assert "| 100.0% | 0.2% |" in rows["| AR"] and "| 50.0% | 23.1% |" in rows["| DIFFORMER"]
    assert "| 75.0% | – |" in rows["| MDLM"]  # its whole-test figure predates the field: not the grid's 4%
    limits = {t["target"]: t["limits"] for t in rep.targets}
    assert limits["best continuous >= 85% of AR beam 5 BLEU"].endswith(
        "23.1% of its output words repeat the word before them (AR: 0.2%)")
    assert "repeat" not in limits["best discrete >= 85% of AR beam 5 BLEU"]
    del results["ar"]["decode"]["full_test"]  # the AR figure from the grid: its share comes with it
    rep = Report(results, None, "cmd")
    rep.quality()
    assert {t["target"]: t["limits"] for t in rep.targets}["best continuous >= 85% of AR beam 5 BLEU"].endswith(
        "(AR: 50.0%)")


def test_report_judges_distilled_data_models_apart():
    """A model trained on a teacher's translations is marked and judged in its own target line: the equal-budget
    target reads only the models trained on the suite's data."""
    from bench.report import Report

    results = {"ar": _result("ar", "ar", 40.0, 100.0, "Xeon"),
               "difformer": _result("difformer", "continuous", 20.0, 150.0, "Xeon"),
               "difformer_kd": _result("difformer_kd", "continuous", 36.0, 150.0, "Xeon")}
    results["difformer_kd"]["teacher"] = {"model": "ar", "checkpoint": "ck/curve_1.pt", "updates": 5000,
                                          "train_minutes": 45.0, "beam": 5, "failed": 0}
    rep = Report(results, None, "cmd")
    quality = "\n".join(rep.quality())
    verdicts = {t["target"]: (t["met"], t["measured"]) for t in rep.targets}
    assert verdicts["best continuous >= 85% of AR beam 5 BLEU"] == (False, "DIFFORMER 50.0% (20.00 vs 40.00)")
    kd = "best continuous, distilled data (teacher's budget not counted) >= 85% of AR beam 5 BLEU"
    assert verdicts[kd] == (True, "DIFFORMER_KD 90.0% (36.00 vs 40.00)")
    assert "| DIFFORMER_KD ‡ |" in quality and "‡ trained on the `ar` model's beam-5 translations" in quality


def test_distilled_model_without_its_teacher_run(tmp_path, capsys):
    """No teacher run in the work directory: a cached result is kept (a fresh clone reruns the suite from its
    committed results); without one, a one-line error says which model to run first."""
    from bench.common import BenchError
    from bench.pipeline import run_model
    from bench.run import build_parser, settings_from

    args = build_parser().parse_args(["--smoke", "--out", str(tmp_path)])
    s = settings_from(args, tmp_path / "results", tmp_path / "work", tmp_path / "work" / "data" / "multi30k",
                      tmp_path / "work" / "data" / "brown")
    spec = specs("tiny")["difformer_kd"]
    with pytest.raises(BenchError, match="run --models ar first"):
        run_model(spec, s)
    (tmp_path / "results").mkdir()
    cached = {"model": "difformer_kd", "key": dict(s.key(spec), teacher_sha256="ab" * 32)}
    (tmp_path / "results" / "difformer_kd.json").write_text(json.dumps(cached))
    assert run_model(spec, s) == cached
    assert "its teacher's run is not in this work directory" in capsys.readouterr().out
    with pytest.raises(BenchError, match="run --models ar first"):
        run_model(spec, s, reevaluate=True)  # decoding again needs the training, hence the teacher's data


def _lm_result(name, ppls, updates):
    """The 45-minute suite's result of an LM with a learning curve at 1/4, 1/2, 1 of the budget put in (the last
    point is the final model's, as its first validation run)."""
    r = json.loads((ROOT / "bench" / "budget45" / "results" / f"{name}.json").read_text())
    r["lm"]["curve"] = [{"fraction": f, "train_minutes": 45 * f, "updates": u, "ppl": p, "elbo_samples": 4, "seed": 1}
                        for f, p, u in zip((0.25, 0.5, 1.0), ppls, updates)]
    r["lm"]["validate"] = [dict(r["lm"]["validate"][0], ppl=ppls[-1], elbo_samples=4, seed=1)]
    return r


def test_report_shows_the_language_models_learning_curve_and_ratio_at_each_point(tmp_path):
    """Section 5 gains the LMs' perplexity at each curve point and the masked LM's ratio to the AR LM at the same
    point (an AR LM that overfits late shows as a falling ratio), and a figure of the curves."""
    from bench import report

    results = {"transformer_lm": _lm_result("transformer_lm", (200.0, 120.0, 150.0), (2000, 4000, 8000)),
               "mdlm_lm": _lm_result("mdlm_lm", (500.0, 240.0, 180.0), (2100, 4200, 8400))}
    out = tmp_path / "RESULTS.md"
    written = report.write(results, None, "cmd", out, tmp_path / "results")
    md = out.read_text()
    assert "| model | 0.25 budget | 0.5 budget | 1 budget |" in md
    assert "| AR transformer LM | 200.00 (2000 upd) | 120.00 (4000 upd) | 150.00 (8000 upd) |" in md
    assert "| MDLM LM / AR LM | 2.50 | 2.00 | 1.20 |" in md
    assert "the bound at K=4 and the first seed" in md
    assert "| 5 language model | MDLM LM: ppl bound <= 1.3x AR LM | 1.20x | met |" in md  # the final point's
    # language models alone: no translation sections, and none of their targets shown as "not measured"
    assert "## 1. Training cost" not in md and "## 3. Decoding speed" not in md and "3 decoding speed" not in md
    assert "## 5. Language modelling" in md and "## 6. Memory" in md
    png = tmp_path / "results" / "lm_curve.png"
    assert png in written and png.read_bytes().startswith(PNG)
    # results without a curve (an older run's) give no curve table and no figure
    for r in results.values():
        r["lm"].pop("curve")
    report.write(results, None, "cmd", out, tmp_path / "older")
    assert "budget |" not in out.read_text() and not (tmp_path / "older" / "lm_curve.png").exists()


def test_commands_name_the_evaluations_commit_where_it_differs_from_the_trainings():
    """A model decoded again after a change (--reevaluate) shows both commits in its Commands header; a model
    decoded at its training's commit, or whose result predates the decoding's own record, shows one."""
    from bench.report import Report

    results = {n: json.loads((ROOT / "bench" / "budget45_sc" / "results" / f"{n}.json").read_text())
               for n in ("ar", "difformer_sc")}
    trained = results["difformer_sc"]["key"]["commit"]
    results["ar"]["decode"].update(commit=results["ar"]["key"]["commit"], date="2026-12-02T04:53:00")
    results["difformer_sc"]["decode"].update(commit="13d9c91f48c1" + "0" * 28, date="2026-12-02T04:54:00")
    lines = "\n".join(Report(results, None, "cmd").commands())
    assert f"(`ar`, {results['ar']['date']}, commit {results['ar']['key']['commit'][:12]})" in lines
    assert (f"(`difformer_sc`, {results['difformer_sc']['date']}, commit {trained[:12]}; evaluated "
            "2026-12-02T04:54:00 at commit 13d9c91f48c1)") in lines
    results["difformer_sc"]["decode"].pop("commit")
    assert f"commit {trained[:12]})" in "\n".join(Report(results, None, "cmd").commands())


def test_same_command_reads_a_path_in_any_of_its_forms(tmp_path):
    """Recorded commands compare up to how a path is written: through a symbolic link or as its target, relative to
    the repository root or absolute. Another flag value or another path is another command."""
    from bench.pipeline import same_command

    (tmp_path / "work").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "work")
    a = f"fairseq-train {tmp_path}/work --lr 1e-3 --user-dir fairseq_plugins"
    assert same_command(a, f"fairseq-train {tmp_path}/link --lr 1e-3 --user-dir {ROOT}/fairseq_plugins")
    assert not same_command(a, f"fairseq-train {tmp_path}/work --lr 2e-3 --user-dir fairseq_plugins")
    assert not same_command(a, f"fairseq-train {tmp_path} --lr 1e-3 --user-dir fairseq_plugins")


def test_reevaluate_never_deletes_a_finished_training_it_does_not_match(tmp_path):
    """--reevaluate reuses a finished training whose command differs only in how its paths are written (it was
    made through a symlinked work directory), and stops with a one-line error, deleting nothing, where the finished
    training was made with another configuration. Without --reevaluate such a training is replaced (not run here)."""
    from bench.common import BenchError, relative, tool
    from bench.pipeline import train, train_command
    from bench.run import build_parser, settings_from

    args = build_parser().parse_args(["--smoke", "--out", str(tmp_path)])
    s = settings_from(args, tmp_path / "results", tmp_path / "work", tmp_path / "work" / "data" / "multi30k",
                      tmp_path / "work" / "data" / "brown")
    spec = specs("tiny")["mdlm_lm"]
    save_dir = s.work / "checkpoints" / spec.name
    save_dir.mkdir(parents=True)
    (save_dir / "checkpoint_last.pt").write_bytes(b"finished")
    (tmp_path / "link").symlink_to(s.work)
    command = relative([tool("fairseq-train"), *train_command(spec, s, save_dir)])
    key = s.train_key(spec)
    stats = {"key": key, "command": command.replace(str(s.work), str(tmp_path / "link")), "updates": 9}
    (s.work / "stats").mkdir()
    (s.work / "stats" / f"{spec.name}.train.json").write_text(json.dumps(stats))
    assert stats["command"] != command and train(spec, s, key, keep_finished=True) == stats
    other = dict(key, config="another")
    with pytest.raises(BenchError, match=r"--reevaluate found a finished training .* made with another "
                                         r"configuration or budget"):
        train(spec, s, other, keep_finished=True)
    assert (save_dir / "checkpoint_last.pt").read_bytes() == b"finished"
