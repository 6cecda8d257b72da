import os

import pytest
import torch

# Tests are CPU-only and small; two threads match the CI machine and keep results repeatable.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def fixture_root():
    """Tiny pairs are built once per machine (rlg.tiny_pairs caches them by version)."""
    from rlg.tiny_pairs import default_root

    return default_root()
