"""Test-run wide settings: under pytest-xdist (``make test`` runs one worker per core), each worker's in-process
torch gets its share of the cores, so that the workers do not oversubscribe the machine."""
import os


def pytest_configure(config):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
