"""difftext: diffusion models for text generation, as fairseq plugins over a pure-torch core."""
from setuptools import find_packages, setup

setup(
    name="difftext",
    version="0.1.0",
    description="Text diffusion (Difformer, DiffuSeq, DiffusionBERT, MDLM, MD4) on fairseq",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["difftext", "difftext.*", "fairseq_plugins", "fairseq_plugins.*"]),
    install_requires=[
        "torch>=1.13,<3",
        "numpy",
        "sentencepiece>=0.1.99",
        "sacrebleu>=2.0",
        # fairseq 0.12.2 does not import on Python 3.11; fairseq-fixed is the maintained fork.
        "fairseq>=0.12.2; python_version < '3.11'",
        "fairseq-fixed>=0.12.3.1; python_version >= '3.11'",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3"],  # make test runs one worker per core
        # scoring (difftext-score), decoding sweeps with plots (difftext-sweep), --candidate-selection mbr-rouge
        "eval": ["rouge-score", "nltk", "matplotlib", "tqdm"],
        "bert": ["transformers>=4.30"],  # --bert-init (DiffusionBERT); the tests use it too
    },
    entry_points={
        "console_scripts": [
            "difftext-score=fairseq_plugins.score:main",
            "difftext-sweep=fairseq_plugins.sweep:main",
        ],
    },
)
