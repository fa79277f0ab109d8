"""Shared fixtures: a small real Multi30k slice, binarized through the project's own prepare script."""
from pathlib import Path

import pytest

from tests.fairseq.cli_helpers import make_data_bin


@pytest.fixture(scope="session")
def data_bin(tmp_path_factory) -> Path:
    return make_data_bin(tmp_path_factory.mktemp("m30k"), vocab_size=600)
