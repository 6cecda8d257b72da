"""Model ids that rlg-bench resolves itself: ``zoo:<name>[/<sub>]``, the weights shipped in the package.

The trained zoo's weights live in ``rlg/zoo/weights/<model>/`` (diffusers hub layout); pair presets,
evaluator options and the KL claim name them ``zoo:digits_base``, ``zoo:digits_dpo/unet``, ...
:func:`resolve_zoo_id` turns such an id into a local path and leaves every other id (hub ids, local
paths) unchanged. This is a base module (no import of rlg): the evaluators resolve their default
weights (``zoo:digits_classifier``) here without importing the zoo package that trains them.
"""

from __future__ import annotations

from pathlib import Path

ZOO_PREFIX = "zoo:"
WEIGHTS_DIR = Path(__file__).resolve().parent / "zoo" / "weights"


def resolve_zoo_id(model_id: str) -> str:
    """``zoo:<name>[/<sub>]`` -> the absolute path ``rlg/zoo/weights/<name>[/<sub>]``; other ids unchanged.

    Raises FileNotFoundError (naming the retrain command) when the zoo model is not there.
    """
    if not isinstance(model_id, str) or not model_id.startswith(ZOO_PREFIX):
        return model_id
    rel = model_id[len(ZOO_PREFIX):].strip("/")
    path = WEIGHTS_DIR / rel
    if not path.exists():
        known = sorted(p.name for p in WEIGHTS_DIR.iterdir() if p.is_dir()) if WEIGHTS_DIR.is_dir() else []
        raise FileNotFoundError(f"zoo model {model_id!r} not found at {path}; shipped zoo models: {known}. "
                                "Train it with `python -m rlg.zoo.train all --ship` (or fix the id).")
    return str(path)
