import os

import pytest
import torch

from tests.helpers.shared_data import missing_reason, shared_path

# Offline (no hub lookup waits for a network that is not there), CPU-only and small.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per pytest-xdist worker, inherited by the runs tests launch in subprocesses: workers x threads
    # must not exceed the cores, or spinning OpenMP threads slow every test several-fold.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def fixture_root():
    """Tiny pairs are built once per machine (rlg.tiny_pairs caches them by version)."""
    from rlg.tiny_pairs import default_root

    return default_root()


@pytest.fixture
def compose():
    """compose(*overrides) -> the composed config of rlg/conf, as the CLI would build it."""
    from pathlib import Path

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    conf = Path(__file__).resolve().parent.parent / "rlg" / "conf"

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            return hydra_compose("config", overrides=list(overrides))

    return _compose


@pytest.fixture(scope="session")
def shared_file():
    """``shared_file("geneval/evaluation_metadata.jsonl")``: the path of an upstream data file the
    project does not ship, or a skip naming it (see tests/helpers/shared_data.py)."""
    def get(relative: str):
        path = shared_path(relative)
        if path is None:
            pytest.skip(missing_reason(relative))
        return path

    return get
