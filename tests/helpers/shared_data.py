"""Where the upstream data files live that tests read but the project does not ship (prompt sets,
GenEval metadata, the released aesthetic head): ``$RLG_SHARED_DATA``, else ``shared/data`` beside
the checkout (``<checkout>/../shared/data``). Tests that need one skip, naming it, when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
HOW = ("put the upstream data files in ../shared/data beside the checkout or point RLG_SHARED_DATA at them "
       "(their sources and sha256 are listed in that folder's README.md)")


def shared_data_dir() -> Path:
    env = os.environ.get("RLG_SHARED_DATA")
    return Path(env).expanduser() if env else CHECKOUT.parent / "shared" / "data"


def shared_path(relative: str) -> Path | None:
    """``<shared data>/<relative>`` if that file exists, else None."""
    path = shared_data_dir() / relative
    return path if path.is_file() else None


def missing_reason(relative: str) -> str:
    return f"needs the upstream data file {relative} (not in {shared_data_dir()}): {HOW}"
