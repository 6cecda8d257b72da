"""Where the upstream data files live that tests read but the project does not ship (prompt sets,
GenEval metadata, the released aesthetic head): ``$RLG_SHARED_DATA``, else ``shared/data`` beside
the checkout (``<checkout>/../shared/data``). Tests that need one skip, naming it and docs/data.md, when it is
absent. ``FILES`` is the list docs/data.md shows (tests/test_shared_data.py holds the two to each other)."""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
GH = "https://raw.githubusercontent.com"


def _files() -> dict[str, tuple[str, str, str]]:
    """relative path -> (upstream repository @ commit : path, download URL, sha256). The files the product itself
    downloads come with its own pins (rlg/harness/prompts.py SOURCES, rlg/evaluators/aesthetic.py)."""
    from rlg.evaluators import aesthetic
    from rlg.harness.prompts import SOURCES

    geneval, flow_grpo = "djghosh13/geneval @ af4902f24d3c", "yifan123/flow_grpo @ ac4c86e8cae0"
    return {
        "geneval/evaluation_metadata.jsonl": (f"{geneval} : prompts/evaluation_metadata.jsonl",
                                              SOURCES["geneval"].url, SOURCES["geneval"].sha256),
        "geneval/object_names.txt": (f"{geneval} : prompts/object_names.txt",
                                     f"{GH}/djghosh13/geneval/af4902f24d3c/prompts/object_names.txt",
                                     "608f6a0e5c8ca1c7a92b818430141fe268c85b7930b50f4160f1d65893b5bacd"),
        "flow_grpo/ocr_test.txt": (f"{flow_grpo} : dataset/ocr/test.txt",
                                   SOURCES["flow_grpo_ocr"].url, SOURCES["flow_grpo_ocr"].sha256),
        "flow_grpo/pickscore_test.txt": (f"{flow_grpo} : dataset/pickscore/test.txt",
                                         SOURCES["flow_grpo_pickscore"].url, SOURCES["flow_grpo_pickscore"].sha256),
        "flow_grpo/geneval_test_metadata.jsonl": (
            f"{flow_grpo} : dataset/geneval/test_metadata.jsonl",
            f"{GH}/yifan123/flow_grpo/ac4c86e8cae0/dataset/geneval/test_metadata.jsonl",
            "cec4b24b9fee7bac21c8f787054ecc8dc9ff831674037713a4cd35e0f0a74a28"),
        f"aesthetic/{aesthetic.HEAD_FILENAME}": (
            f"christophschuhmann/improved-aesthetic-predictor @ 6934dd81792f : {aesthetic.HEAD_FILENAME}",
            aesthetic.HEAD_URL, aesthetic.HEAD_SHA256),
    }


FILES = _files()


def shared_data_dir() -> Path:
    env = os.environ.get("RLG_SHARED_DATA")
    return Path(env).expanduser() if env else CHECKOUT.parent / "shared" / "data"


def shared_path(relative: str) -> Path | None:
    """``<shared data>/<relative>`` if that file exists, else None. ``relative`` must be one of ``FILES``."""
    assert relative in FILES, f"{relative}: list it in tests/helpers/shared_data.py FILES and docs/data.md"
    path = shared_data_dir() / relative
    return path if path.is_file() else None


def missing_reason(relative: str) -> str:
    """The one-line skip reason of a test whose data file is absent."""
    return f"needs the upstream data file {relative} (not in {shared_data_dir()}); docs/data.md says where to get it"
