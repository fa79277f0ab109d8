"""difftext: the pure-torch mathematics of text diffusion.

Nothing in this package imports fairseq; the fairseq adapters live in ``fairseq_plugins/``.
"""

__version__ = "0.1.0"
