"""Small, isolated patches of fairseq 0.12 that difftext needs; :func:`install` applies them (idempotent).

Each patch names the fairseq function it changes and why. Nothing else in fairseq is touched.

Data-parallel training on CPU (gloo)
------------------------------------
fairseq 0.12 assumes one GPU per process when it starts several processes:

* ``fairseq.distributed.utils.call_main`` spawns ``min(torch.cuda.device_count(), world_size)``
  processes (0 without GPUs), and ``infer_init_method`` asserts ``world_size <= cuda.device_count()``;
* ``_infer_torch_distributed_launch_init`` (torchrun) computes ``rank % torch.cuda.device_count()``
  (ZeroDivisionError without GPUs); and on CPU ``--distributed-world-size`` defaults to 1, so two torchrun
  processes would silently train two independent models into the same ``--save-dir``;
* the default ``--distributed-backend nccl`` needs GPUs;
* ``fairseq.models.distributed_fairseq_model.DistributedFairseqModel`` passes ``device_ids=[device_id]``
  to ``torch.nn.parallel.DistributedDataParallel``, which torch refuses for a CPU module.

With ``--cpu`` and more than one process, :func:`_call_main` fills in what fairseq would have inferred
(gloo, ``env://`` under torchrun, ``tcp://localhost:PORT`` and ``world_size`` spawned processes
otherwise) and hands over to fairseq's own ``distributed_main``; :class:`_DistributedDataParallel`
leaves ``device_ids`` out for a CPU module (what torch requires). GPU runs are unchanged.

--bf16 without a TPU
--------------------
``fairseq.options.parse_args_and_arch`` turns ``--bf16`` into TPU training (it sets ``--tpu``; the
trainer then asks torch_xla for a device and fails with ``'NoneType' object has no attribute
'xla_device'``). When torch_xla is not installed no TPU run is possible, so the ``call_main`` patch clears
the TPU flags again: the trainer then uses its own non-TPU bf16 path (bf16 weights, fp32 master copy in
fairseq's FP16Optimizer) on the CPU (tested) or the GPU (not run in this project's tests).

Checkpoints are never left half-written
---------------------------------------
``fairseq.checkpoint_utils.torch_persistent_save`` writes the first checkpoint file to ``NAME.tmp`` and
renames it, but retries a failed ``torch.save`` on the *same* file handle (a retry appends a second
pickle after the bytes of the failed one, and the result is renamed into place), and nothing is fsynced.
``save_checkpoint`` then writes ``checkpoint_last.pt`` / ``checkpoint_best.pt`` with
``PathManager.copy`` (``shutil.copyfile``) *in place*: a crash or SIGKILL during that copy leaves a
truncated ``checkpoint_last.pt`` and destroys the previous one. Here every attempt writes a fresh
temporary file in the target directory, fsyncs it and ``os.replace``-s it over the target, for the
first file and for every copy. (``--write-checkpoints-asynchronously`` goes through iopath and is left
as fairseq has it.)

EMA of models with integer buffers
----------------------------------
``fairseq.models.ema.ema.EMA._step_internal`` (``--store-ema``) averages every entry of the
state dict in place (``mul_(decay)``), which fails for integer buffers (DiffuSeq's loss-aware sampler
counts, DiffusionBERT's spindle token counts): "result type Float can't be cast to ... Long". Its
``skip_keys`` (entries copied instead of averaged) is never set by the trainer; :func:`_wrap_ema_init`
puts the model's non-floating-point entries in it.

Warnings about fairseq's own use of newer libraries
---------------------------------------------------
Every fairseq-train / fairseq-generate run printed eight warnings (about 25 lines) that name no problem a user
can fix: six from hydra-core about the 1.0-era API fairseq 0.12 calls (``hydra.experimental``, the compose
``strict`` flag, ``_group_`` package headers, schema matching, ``version_base``), torch's deprecation of the
``torch.cuda.amp.autocast`` that fairseq's task calls, and torch's note that fairseq's data loader asks for pinned
memory on a machine without an accelerator. :data:`KNOWN_WARNINGS` silences exactly those messages (matched
from their start, each with its category); every other warning still shows.
"""
import logging
import os
import shutil
import socket
import tempfile
import time
import warnings

import torch
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)

_MARK = "__difftext_compat__"
SAVE_ATTEMPTS = 3
RETRY_DELAY_S = 2.5  # fairseq's delay between attempts (for flaky network file systems)


# --- data-parallel training on CPU ------------------------------------------------------------------
def _torchrun_env():
    """(world_size, rank, local_rank) when started by torchrun / torch.distributed.launch, else None."""
    if not all(k in os.environ for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")):
        return None
    return int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wrap_call_main(original):
    """Patch of ``fairseq.distributed.utils.call_main``: CPU data parallelism, see the module docstring."""

    def call_main(cfg, main, **kwargs):
        _bf16_without_tpu(cfg)
        dt = cfg.distributed_training
        launched = _torchrun_env()
        world = launched[0] if launched else dt.distributed_world_size
        if not cfg.common.cpu or cfg.common.tpu or world <= 1:
            return original(cfg, main, **kwargs)
        if dt.distributed_backend == "nccl":  # fairseq's default; NCCL needs GPUs
            dt.distributed_backend = "gloo"
        if launched:  # torchrun made the processes: fairseq's _infer_torch_distributed_launch_init, minus CUDA
            dt.distributed_world_size, dt.distributed_rank, dt.device_id = launched
            dt.distributed_init_method, dt.distributed_no_spawn = "env://", True
            return original(cfg, main, **kwargs)  # -> distributed_main(device_id, main, cfg, kwargs)
        if dt.distributed_init_method is None:  # fairseq's _infer_single_node_init, minus the GPU count
            port = dt.distributed_port if dt.distributed_port > 0 else _free_port()
            dt.distributed_init_method = f"tcp://localhost:{port}"
        if dt.distributed_no_spawn:  # one process per command, ranks given by the user
            return original(cfg, main, **kwargs)
        from fairseq.distributed import utils as distributed_utils

        # fairseq's spawn branch of call_main, with one process per rank instead of one per GPU.
        # The children re-import --user-dir in fairseq_cli.train.main, which re-applies these patches.
        kwargs["start_rank"] = dt.distributed_rank
        dt.distributed_rank = None
        logger.info(f"data-parallel training on CPU: {world} processes, gloo, {dt.distributed_init_method}")
        torch.multiprocessing.spawn(
            fn=distributed_utils.distributed_main, args=(main, cfg, kwargs), nprocs=world, join=True
        )

    setattr(call_main, _MARK, original)
    return call_main


def _bf16_without_tpu(cfg) -> None:
    """--bf16 without torch_xla: undo the --tpu that fairseq implied (see the module docstring)."""
    if not (cfg.common.bf16 and cfg.common.tpu):
        return
    try:
        import torch_xla  # noqa: F401
    except ImportError:
        logger.info("--bf16 without torch_xla: bf16 training on the CPU/GPU, not on a TPU")
        for section in ("common", "distributed_training", "optimizer"):
            if section in cfg and cfg[section] is not None and "tpu" in cfg[section]:
                cfg[section].tpu = False


class _DistributedDataParallel(DistributedDataParallel):
    """Patch of the ``DistributedDataParallel`` that ``DistributedFairseqModel`` instantiates: torch
    requires ``device_ids=None`` for a CPU module, fairseq always passes ``[device_id]``."""

    def __init__(self, module, device_ids=None, output_device=None, **kwargs):
        if all(p.device.type == "cpu" for p in module.parameters()):
            device_ids = output_device = None
        super().__init__(module, device_ids=device_ids, output_device=output_device, **kwargs)


# --- atomic checkpoint writes -----------------------------------------------------------------------
def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. not supported on this platform / file system
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write) -> None:
    """Write ``path`` through ``write(file_object)`` into a fresh temporary file, fsync, ``os.replace``.

    Up to ``SAVE_ATTEMPTS`` attempts, each with a new empty file. A failure (or a kill) at any point
    leaves the previous ``path`` as it was and no partial file under its name.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    for attempt in range(1, SAVE_ATTEMPTS + 1):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(directory)
            return
        except Exception:
            if os.path.exists(tmp):
                os.remove(tmp)
            if attempt == SAVE_ATTEMPTS:
                raise
            logger.warning(f"writing {path} failed (attempt {attempt} of {SAVE_ATTEMPTS}); retrying", exc_info=True)
            time.sleep(RETRY_DELAY_S)


def atomic_torch_save(obj, path) -> None:
    """``torch.save(obj, path)`` that never leaves a half-written ``path``."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _wrap_torch_persistent_save(original):
    """Patch of ``fairseq.checkpoint_utils.torch_persistent_save`` (see the module docstring)."""
    from fairseq.file_io import PathManager

    def torch_persistent_save(obj, filename, async_write: bool = False):
        if async_write or not isinstance(filename, (str, os.PathLike)) or not PathManager.supports_rename(
            os.fspath(filename)
        ):
            return original(obj, filename, async_write=async_write)
        atomic_torch_save(obj, filename)

    setattr(torch_persistent_save, _MARK, original)
    return torch_persistent_save


def _atomic_path_manager():
    """``PathManager`` as seen by ``fairseq.checkpoint_utils``: ``copy`` (checkpoint_last.pt,
    checkpoint_best.pt, ...) goes through a temporary file and ``os.replace``."""
    from fairseq.file_io import PathManager

    class AtomicCopyPathManager(PathManager):
        @staticmethod
        def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
            if not (PathManager.supports_rename(src_path) and PathManager.supports_rename(dst_path)):
                return PathManager.copy(src_path, dst_path, overwrite=overwrite)
            if not overwrite and os.path.exists(dst_path):
                return False
            with open(src_path, "rb") as src:
                atomic_write(dst_path, lambda f: (src.seek(0), shutil.copyfileobj(src, f, 1 << 20)))
            return True

    setattr(AtomicCopyPathManager, _MARK, PathManager)
    return AtomicCopyPathManager


# --- EMA of integer buffers -------------------------------------------------------------------------
def _wrap_ema_init(original):
    """Patch of ``fairseq.models.ema.ema.EMA.__init__``: copy integer buffers, do not average them."""

    def __init__(self, model, config, device=None, skip_keys=None):
        integer = {k for k, v in model.state_dict().items() if torch.is_tensor(v) and not v.is_floating_point()}
        original(self, model, config, device=device, skip_keys=set(skip_keys or ()) | integer)

    setattr(__init__, _MARK, original)
    return __init__


# (category, message regex matched from the message's start) of the warnings above
KNOWN_WARNINGS = (
    (UserWarning, r"hydra\.experimental\.(initialize|compose)\(\) is no longer experimental"),
    (UserWarning, r"\s*The version_base parameter is not specified"),
    (UserWarning, r"\s*The strict flag in the compose API is deprecated"),
    (UserWarning, r"In '[^']*': Usage of deprecated keyword in package header '# @package _group_'"),
    (UserWarning, r"\s*'[^']*' is validated against ConfigStore schema with the same name"),
    (FutureWarning, r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated"),
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator is found"),
)


def quiet_known_warnings() -> None:
    """Silence :data:`KNOWN_WARNINGS` (fairseq's calls into newer hydra and torch), nothing else."""
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def quiet_hydra_debug() -> None:
    """Keep hydra's DEBUG records (two "Setting JobRuntime" lines before every fairseq run's first line, and before
    each one-line error) out of the log: importing fairseq sets the root logger to DEBUG (its
    wav2vec2_classification module calls ``logging.basicConfig(level=DEBUG)``), and the CLIs' own basicConfig then
    changes nothing. Only hydra's logger is raised to INFO, unless fairseq's ``LOGLEVEL`` asks for DEBUG."""
    if os.environ.get("LOGLEVEL", "INFO").upper() != "DEBUG":
        logging.getLogger("hydra").setLevel(logging.INFO)


def install() -> None:
    """Apply the patches (idempotent)."""
    quiet_known_warnings()
    quiet_hydra_debug()
    from fairseq import checkpoint_utils
    from fairseq.distributed import utils as distributed_utils
    from fairseq.models import distributed_fairseq_model

    if not hasattr(distributed_utils.call_main, _MARK):
        distributed_utils.call_main = _wrap_call_main(distributed_utils.call_main)
    distributed_fairseq_model.DistributedDataParallel = _DistributedDataParallel
    if not hasattr(checkpoint_utils.torch_persistent_save, _MARK):
        checkpoint_utils.torch_persistent_save = _wrap_torch_persistent_save(checkpoint_utils.torch_persistent_save)
    if not hasattr(checkpoint_utils.PathManager, _MARK):
        checkpoint_utils.PathManager = _atomic_path_manager()
    from fairseq.models.ema import ema

    if not hasattr(ema.EMA.__init__, _MARK):
        ema.EMA.__init__ = _wrap_ema_init(ema.EMA.__init__)
