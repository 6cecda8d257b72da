"""The trained offline model zoo: small real models, trained by this package's own scripts on CPU.

Layout: ``rlg/zoo/weights/<model>/`` holds each model in diffusers hub layout (safetensors only);
``rlg/zoo/manifest.json`` records per model its files' sha256, training config, data source and
licence, training time and metrics. ``python -m rlg.zoo.train digits|all`` retrains from scratch.

Pair configs point at zoo models with a ``zoo:`` prefix, e.g. ``zoo:digits_base`` or
``zoo:digits_dpo/unet``; :func:`resolve_zoo_id` turns such an id into a local path and leaves
every other id (hub ids, local paths) unchanged.
"""

from __future__ import annotations

from pathlib import Path

ZOO_PREFIX = "zoo:"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = Path(__file__).resolve().parent / "manifest.json"


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
