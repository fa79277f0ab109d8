from fairseq_plugins.criterions import text_diffusion_loss  # noqa: F401
