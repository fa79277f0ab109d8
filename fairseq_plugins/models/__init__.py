from fairseq_plugins.models import difformer, diffuseq  # noqa: F401
