from fairseq_plugins.models import difformer, diffuseq, masked_diffusion  # noqa: F401
