from fairseq_plugins.tasks import text_diffusion  # noqa: F401
