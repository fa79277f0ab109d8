"""fairseq plugins of difftext: ``--user-dir fairseq_plugins`` registers the ``text_diffusion`` task,
the diffusion models and architectures, the ``text_diffusion_loss`` criterion, the ``adamw_torch`` optimizer
and the safe-checkpoint loader. fairseq auto-imports nothing else from a user dir, so every module is imported
here.
"""
from fairseq_plugins import checkpoints, compat
from fairseq_plugins.errors import install_excepthook

install_excepthook()
checkpoints.install()
compat.install()  # CPU data parallelism (gloo), atomic checkpoint writes: see compat.py

from fairseq_plugins import criterions, models, optim, tasks  # noqa: E402,F401  (registration side effects)
