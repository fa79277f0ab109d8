from fairseq_plugins.tasks import text_diffusion, text_diffusion_lm  # noqa: F401
