"""Shared fixtures: a small real Multi30k slice, binarized through the project's own prepare script."""
from pathlib import Path

import pytest

from tests.fairseq.cli_helpers import make_data_bin


@pytest.fixture(scope="session")
def data_bin(tmp_path_factory) -> Path:
    return make_data_bin(tmp_path_factory.mktemp("m30k"), vocab_size=600)


@pytest.fixture(scope="session")
def difformer_dir(data_bin, tmp_path_factory) -> Path:
    """The --save-dir of a Difformer (difformer_tiny) trained for 10 updates on the slice (reliability tests)."""
    from tests.fairseq.cli_helpers import run_cli, train_args

    save = tmp_path_factory.mktemp("difformer_tiny")
    run_cli(train_args(data_bin, save, "difformer_tiny", "--max-update", "10"))
    return save
