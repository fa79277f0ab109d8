"""Safe loading of real fairseq checkpoints (fairseq_plugins/checkpoints.py).

A tiny transformer is trained with the real fairseq CLIs on toy data written here,
so the checkpoints hold everything fairseq 0.12 stores (legacy-args config
Namespace, optimizer state, meters with numpy arrays from --eval-bleu and a numpy
scalar logged by a criterion).  Runs in well under a minute on 2 CPU cores.
"""
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fairseq")

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from fairseq_plugins import checkpoints as ckpt_mod  # noqa: E402

CLI_TIMEOUT = 240
CORRUPT_SUFFIX = "; use another checkpoint (e.g. checkpoint_last.pt or an earlier checkpoint_N.pt) or retrain"

# Criterion that logs a numpy scalar (as real criterions may), so the meters saved
# in the checkpoint contain one.  It lives in its own user dir, used only for
# training: loading a checkpoint never needs it.
TRAIN_USER_DIR_INIT = '''
import numpy as np
from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterion, CrossEntropyCriterionConfig


@register_criterion("difftext_test_np_metric_ce", dataclass=CrossEntropyCriterionConfig)
class NumpyMetricCrossEntropy(CrossEntropyCriterion):
    @classmethod
    def reduce_metrics(cls, logging_outputs):
        super().reduce_metrics(logging_outputs)
        metrics.log_scalar("np_metric", np.float64(1.5), 1, round=3)
'''

# A user dir that only installs the safe loader, independent of the rest of
# fairseq_plugins.
INSTALL_USER_DIR_INIT = "from fairseq_plugins.checkpoints import install; install()\n"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    return env


def _cli(name):
    """The console script installed with fairseq (e.g. fairseq-train), else -m."""
    script = Path(sys.executable).parent / f"fairseq-{name}"
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", f"fairseq_cli.{name}"]


def _run(cmd, cwd, check=True):
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=CLI_TIMEOUT
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def fs(tmp_path_factory):
    """Toy data, binarized data and a trained tiny transformer (real CLIs)."""
    root = tmp_path_factory.mktemp("fairseq_ckpt")
    words = "a b c d e f g h".split()
    src, tgt = [], []
    for i in range(50):
        sent = [words[(i * 7 + j * 3) % len(words)] for j in range(2 + i % 4)]
        src.append(" ".join(sent))
        tgt.append(" ".join(w.upper() for w in reversed(sent)))
    for split, lines in (("train", range(40)), ("valid", range(40, 50))):
        (root / f"{split}.src").write_text("".join(src[i] + "\n" for i in lines))
        (root / f"{split}.tgt").write_text("".join(tgt[i] + "\n" for i in lines))

    train_udir = root / "difftext_test_train_udir"
    train_udir.mkdir()
    (train_udir / "__init__.py").write_text(TRAIN_USER_DIR_INIT)
    install_udir = root / "difftext_test_install_udir"
    install_udir.mkdir()
    (install_udir / "__init__.py").write_text(INSTALL_USER_DIR_INIT)

    data = root / "bin"
    _run(_cli("preprocess") + ["--source-lang", "src", "--target-lang", "tgt", "--trainpref", root / "train",
                               "--validpref", root / "valid", "--destdir", data, "--workers", "1"], cwd=root)
    save = root / "ckpt"
    _run(_cli("train") + [
        data, "--user-dir", train_udir, "--arch", "transformer",
        "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "8", "--decoder-embed-dim", "8",
        "--encoder-ffn-embed-dim", "16", "--decoder-ffn-embed-dim", "16",
        "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
        "--criterion", "difftext_test_np_metric_ce", "--optimizer", "adam", "--lr", "1e-3",
        "--max-tokens", "200", "--max-update", "2", "--save-dir", save, "--cpu", "--num-workers", "0",
        "--no-progress-bar", "--log-interval", "1", "--seed", "1",
        "--eval-bleu", "--eval-bleu-args", '{"beam": 1, "max_len_b": 5}',
        "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric",
    ], cwd=root)
    for name in ("checkpoint1.pt", "checkpoint_best.pt", "checkpoint_last.pt"):
        assert (save / name).is_file(), name
    return types.SimpleNamespace(root=root, data=data, save=save, last=save / "checkpoint_last.pt",
                                 install_udir=install_udir)


def _assert_one_line(err):
    msg = str(err)
    assert "\n" not in msg
    assert torch.serialization.UNSAFE_MESSAGE not in msg  # never advise unsafe loading
    assert err.__cause__ is None and err.__suppress_context__
    return msg


def test_checkpoint_needs_the_allowlist_in_a_fresh_process(fs):
    """Without the allowlist fairseq cannot load its own checkpoint; with it, it can,
    and after registration no global in the checkpoint is left unallowed."""
    script = textwrap.dedent('''
        import json, sys, torch
        from fairseq import checkpoint_utils
        path = sys.argv[1]
        out = {"before": sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))}
        try:
            checkpoint_utils.load_checkpoint_to_cpu(path)
            out["plain_load"] = "ok"
        except Exception as e:
            out["plain_load"] = type(e).__name__ + ": " + str(e)
        from fairseq_plugins.checkpoints import allow_fairseq_checkpoint_types
        allow_fairseq_checkpoint_types()
        out["after"] = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
        out["loaded_arch"] = state["cfg"].model.arch
        print("RESULT=" + json.dumps(out))
    ''')
    proc = _run([sys.executable, "-c", script, fs.last], cwd=fs.root)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT=")][-1]
    out = json.loads(line[len("RESULT="):])
    # What a real fairseq 0.12 checkpoint holds beyond torch's defaults.
    assert set(out["before"]) == {
        "argparse.Namespace",
        "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
        "numpy.dtype",
        "numpy.ndarray",
    } or set(out["before"]) == {  # numpy < 2 names
        "argparse.Namespace",
        "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy.dtype",
        "numpy.ndarray",
    }, out["before"]
    assert out["plain_load"].startswith("UnpicklingError") and "argparse.Namespace" in out["plain_load"]
    assert out["after"] == []
    assert out["loaded_arch"] == "transformer"


def test_install_loads_real_checkpoints(fs):
    import argparse

    import numpy as np
    from fairseq import checkpoint_utils

    ckpt_mod.install()
    for name in ("checkpoint1.pt", "checkpoint_best.pt", "checkpoint_last.pt"):
        state = checkpoint_utils.load_checkpoint_to_cpu(str(fs.save / name))
        assert state["cfg"].model.arch == "transformer"
        assert state["last_optimizer_state"]["state"], "optimizer state missing"
        assert any(k.endswith("embed_tokens.weight") for k in state["model"])
        meters = {m[1]: m[3] for agg in state["extra_state"]["metrics"].values() for m in agg}
        assert isinstance(meters["_bleu_counts"]["sum"], np.ndarray)
        assert isinstance(meters["np_metric"]["val"], np.float64)
    raw = torch.load(str(fs.last), map_location="cpu")  # the types really come back
    assert isinstance(raw["cfg"]["model"], argparse.Namespace)

    # The full model-loading path used by fairseq-generate / hub_utils.
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(fs.last)], arg_overrides={"data": str(fs.data)}
    )
    assert len(models) == 1 and cfg.model.encoder_embed_dim == 8


def test_install_is_idempotent_and_patches_direct_importers():
    from fairseq import checkpoint_utils

    ckpt_mod.install()
    wrapped = checkpoint_utils.load_checkpoint_to_cpu
    original = wrapped.__wrapped__
    assert not hasattr(original, "__wrapped__"), "double-wrapped"
    assert ckpt_mod.install() == []
    assert checkpoint_utils.load_checkpoint_to_cpu is wrapped

    # A module that did `from fairseq.checkpoint_utils import load_checkpoint_to_cpu`.
    fake = types.ModuleType("difftext_test_direct_importer")
    fake.load_checkpoint_to_cpu = original
    sys.modules[fake.__name__] = fake
    try:
        assert ckpt_mod.install() == [fake.__name__]
        assert fake.load_checkpoint_to_cpu is wrapped
        assert ckpt_mod.install() == []
    finally:
        del sys.modules[fake.__name__]


class _Payload:
    """Unpickling this calls FUNC(*ARGS): the classic malicious-pickle trick."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _payloads(sentinel):
    import builtins

    return {
        "os.system": (_Payload(os.system, (f"touch {sentinel}",)), "posix.system" if os.name == "posix" else "nt.system"),
        "builtins.eval": (
            _Payload(builtins.eval, (f"__import__('pathlib').Path({str(sentinel)!r}).touch()",)),
            "builtins.eval",
        ),
        "subprocess.Popen": (_Payload(subprocess.Popen, (["touch", str(sentinel)],)), "subprocess.Popen"),
    }


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_malicious_checkpoint_is_refused(tmp_path, kind, legacy_format):
    from fairseq import checkpoint_utils

    ckpt_mod.install()
    sentinel = tmp_path / "SENTINEL"
    payload, global_name = _payloads(sentinel)[kind]
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "extra_state": {"x": payload}}, str(path),
               _use_new_zipfile_serialization=not legacy_format)

    with pytest.raises(RuntimeError) as info:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    msg = _assert_one_line(info.value)
    assert isinstance(info.value, ckpt_mod.UnsafeCheckpointError)
    assert msg == (
        f"refusing to load checkpoint {path}: it contains the object '{global_name}', which is not on "
        "difftext's allowlist of safe checkpoint types (loading it could run arbitrary code); "
        "re-save the checkpoint from trusted code if you know it is safe"
    )
    assert not sentinel.exists(), "the payload ran"


def test_trojaned_real_checkpoint_is_refused(fs, tmp_path):
    """A genuine fairseq checkpoint with a payload slipped into extra_state."""
    from fairseq import checkpoint_utils

    ckpt_mod.install()
    sentinel = tmp_path / "SENTINEL"
    state = torch.load(str(fs.last), map_location="cpu")
    state["extra_state"]["hook"] = _payloads(sentinel)["os.system"][0]
    path = tmp_path / "checkpoint_last.pt"
    torch.save(state, str(path))
    with pytest.raises(ckpt_mod.UnsafeCheckpointError) as info:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    msg = _assert_one_line(info.value)
    assert f"refusing to load checkpoint {path}: it contains the object 'posix.system'" in msg or os.name != "posix"
    assert not sentinel.exists()


@pytest.mark.parametrize("cut", ["half", "empty"])
def test_truncated_checkpoint(fs, tmp_path, cut):
    from fairseq import checkpoint_utils

    ckpt_mod.install()
    data = fs.last.read_bytes()
    path = tmp_path / "checkpoint_last.pt"
    path.write_bytes(data[: len(data) // 2] if cut == "half" else b"")
    with pytest.raises(RuntimeError) as info:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    msg = _assert_one_line(info.value)
    assert isinstance(info.value, ckpt_mod.CorruptCheckpointError)
    assert msg.startswith(f"checkpoint {path} is truncated or corrupted (")
    assert msg.endswith(CORRUPT_SUFFIX)


def test_missing_checkpoint(tmp_path):
    from fairseq import checkpoint_utils

    ckpt_mod.install()
    path = tmp_path / "nope" / "checkpoint_best.pt"
    with pytest.raises(FileNotFoundError) as info:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert str(info.value) == f"checkpoint {path} does not exist"


def test_fairseq_generate_with_install_user_dir(fs):
    gen = _cli("generate") + [fs.data, "--path", fs.save / "checkpoint_best.pt", "--cpu", "--beam", "2",
                              "--max-len-b", "5", "--batch-size", "16", "--gen-subset", "valid"]
    without = _run(gen, cwd=fs.root, check=False)
    assert without.returncode != 0
    assert "argparse.Namespace" in without.stdout + without.stderr

    proc = _run(gen + ["--user-dir", fs.install_udir], cwd=fs.root)
    hyps = [ln for ln in proc.stdout.splitlines() if ln.startswith("H-")]
    assert hyps, proc.stdout[-2000:]
    assert "BLEU4" in proc.stdout


# --- malicious checkpoints through every entry point ------------------------------------------------------
def _exec_global_pickle(sentinel) -> bytes:
    """Hand-written pickle: GLOBAL builtins.exec, then REDUCE with a string that creates ``sentinel``."""
    import struct

    code = f"open({str(sentinel)!r}, 'w').close()".encode()
    return b"\x80\x02cbuiltins\nexec\nX" + struct.pack("<I", len(code)) + code + b"\x85R."


def _zip_checkpoint_with(path, data_pkl: bytes):
    """A torch zip checkpoint whose ``data.pkl`` record is replaced by ``data_pkl``."""
    import zipfile

    torch.save({"model": {}}, str(path))
    with zipfile.ZipFile(path) as z:
        records = {name: z.read(name) for name in z.namelist()}
    records[next(n for n in records if n.endswith("/data.pkl"))] = data_pkl
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in records.items():
            z.writestr(name, data)


def _evil(tmp_path, kind):
    """(checkpoint path, sentinel the payload would create, name of the refused global)."""
    sentinel = tmp_path / "SENTINEL"
    path = tmp_path / "checkpoint_evil.pt"
    if kind == "exec-GLOBAL":
        _zip_checkpoint_with(path, _exec_global_pickle(sentinel))
        return path, sentinel, "builtins.exec"
    payload, name = _payloads(sentinel)[kind]
    torch.save({"model": {"w": torch.zeros(2)}, "extra_state": {"x": payload}}, str(path))
    return path, sentinel, name


def test_the_exec_global_payload_is_live(tmp_path):
    """Plain pickle runs it (so the refusals below are real), torch's weights-only loader with the allowlist
    does not."""
    import pickle

    sentinel = tmp_path / "SENTINEL"
    pickle.loads(_exec_global_pickle(sentinel))
    assert sentinel.exists()
    sentinel.unlink()
    path, sentinel, _ = _evil(tmp_path, "exec-GLOBAL")
    with pytest.raises(ckpt_mod.UnsafeCheckpointError, match="'builtins.exec'"):
        ckpt_mod.load(path)
    assert not sentinel.exists()


def _cli_one_line_error(proc):
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("kind", ["os.system", "exec-GLOBAL"])
def test_fairseq_generate_refuses_a_malicious_checkpoint(data_bin, tmp_path, kind):
    from tests.fairseq.cli_helpers import generate_args, run_cli

    path, sentinel, name = _evil(tmp_path, kind)
    error = _cli_one_line_error(run_cli(generate_args(data_bin, path), check=False))
    assert f"refusing to load checkpoint {path}" in error and f"'{name}'" in error
    assert not sentinel.exists(), "the payload ran"


def test_fairseq_train_restore_file_refuses_a_malicious_checkpoint(data_bin, tmp_path):
    from tests.fairseq.cli_helpers import run_cli, train_args

    path, sentinel, name = _evil(tmp_path, "exec-GLOBAL")
    proc = run_cli(train_args(data_bin, tmp_path / "ck", "difformer_tiny", "--restore-file", path,
                              "--max-update", "1"), check=False)
    error = _cli_one_line_error(proc)
    assert f"refusing to load checkpoint {path}" in error and f"'{name}'" in error
    assert not sentinel.exists()


@pytest.mark.parametrize("kind", ["subprocess.Popen", "exec-GLOBAL"])
def test_python_api_and_averaging_refuse_a_malicious_checkpoint(data_bin, tmp_path, kind):
    from fairseq_plugins import average_checkpoints
    from fairseq_plugins.hub import load

    path, sentinel, name = _evil(tmp_path, kind)
    with pytest.raises(ckpt_mod.UnsafeCheckpointError) as info:
        load(path, data_bin)
    assert f"'{name}'" in _assert_one_line(info.value)
    with pytest.raises(SystemExit) as info:
        average_checkpoints.main(["--inputs", str(path), "--output", str(tmp_path / "avg.pt")])
    assert str(info.value).startswith(f"average_checkpoints: error: refusing to load checkpoint {path}")
    assert not (tmp_path / "avg.pt").exists() and not sentinel.exists()


def test_a_checkpoint_from_before_position_encoding_keeps_its_learned_positions():
    from omegaconf import OmegaConf

    def state(model_cfg, weights):
        return {"cfg": OmegaConf.create({"model": model_cfg}), "model": dict.fromkeys(weights)}

    # an LM preset now defaults to rotary; a checkpoint trained before with a position table must stay learned
    old = ckpt_mod.upgrade_model_config(state({"_name": "mdlm_lm_small"}, ["embed.weight", "stack.positions.weight"]))
    assert old["cfg"].model.position_encoding == "learned"
    rotary = ckpt_mod.upgrade_model_config(state({"_name": "mdlm_lm_small"}, ["embed.weight"]))
    assert "position_encoding" not in rotary["cfg"].model
    chosen = ckpt_mod.upgrade_model_config(
        state({"_name": "x", "position_encoding": "rotary"}, ["encoder.positions.weight"]))
    assert chosen["cfg"].model.position_encoding == "rotary"


def test_old_positive_option_names_become_their_no_flags():
    from omegaconf import OmegaConf

    old = {"cfg": OmegaConf.create({"model": {"_name": "mdlm_small", "antithetic_time": False,
                                              "pred_length_offset": True, "loss_aware_sampler": False}})}
    model = ckpt_mod.upgrade_model_config(old)["cfg"].model
    assert (model.no_antithetic_time, model.no_pred_length_offset, model.no_loss_aware_sampler) == (True, False, True)
    assert not set(ckpt_mod.NEGATED_OPTIONS) & set(model)  # the old names are gone
    new = ckpt_mod.upgrade_model_config({"cfg": {"model": {"no_antithetic_time": True}}})["cfg"]["model"]
    assert new == {"no_antithetic_time": True}  # a current config is left as it is
