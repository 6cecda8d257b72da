"""The trained offline model zoo: small real models, trained by this package's own scripts on CPU.

Layout: ``rlg/zoo/weights/<model>/`` holds each model in diffusers hub layout (safetensors only);
``rlg/zoo/manifest.json`` records per model its files' sha256, training config, data source and
licence, training time and metrics. ``python -m rlg.zoo.train digits|all`` retrains from scratch.

Pair configs point at zoo models with a ``zoo:`` prefix, e.g. ``zoo:digits_base`` or
``zoo:digits_dpo/unet``; :func:`resolve_zoo_id` (``rlg.model_ids``, a base module, so the evaluators
can resolve their weights without importing the zoo) turns such an id into a local path and leaves
every other id (hub ids, local paths) unchanged.
"""

from __future__ import annotations

from pathlib import Path

from rlg.model_ids import WEIGHTS_DIR, ZOO_PREFIX, resolve_zoo_id

MANIFEST = Path(__file__).resolve().parent / "manifest.json"

__all__ = ["MANIFEST", "WEIGHTS_DIR", "ZOO_PREFIX", "resolve_zoo_id"]
