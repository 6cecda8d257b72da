"""Run-time conventions shared by the library, the evaluators and the harness (one of each): dtype
names, the default device, and the Hugging Face hub's offline rule. Imports nothing of RLG, so the
evaluators may use it and still know nothing of RLG."""

from __future__ import annotations

import os

DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16"}


def torch_dtype(name):
    """``torch.float32`` / ``float16`` / ``bfloat16`` for a name in DTYPE_NAMES (or a torch.dtype, returned
    as is). Raises ValueError listing the names."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, DTYPE_NAMES[name])


def default_device(device: str | None = None) -> str:
    """``device`` if given, else ``cuda`` when a GPU is visible, else ``cpu``."""
    if device:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def hub_offline(flag: bool | None = None) -> bool:
    """Offline when ``flag`` is true, or by huggingface_hub's own rule: HF_HUB_OFFLINE (or
    TRANSFORMERS_OFFLINE) set to one of huggingface_hub.constants.ENV_VARS_TRUE_VALUES ("1", "ON",
    "YES", "TRUE"). Read at call time, so a change of the environment is seen."""
    if flag:
        return True
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return constants.is_offline_mode() or (value is not None and value.upper() in constants.ENV_VARS_TRUE_VALUES)
