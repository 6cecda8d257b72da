"""Run-time conventions shared by the library, the evaluators and the harness (one of each): dtype
names, the default device, and the Hugging Face hub's offline rule. Imports nothing of RLG, so the
evaluators may use it and still know nothing of RLG."""

from __future__ import annotations

import os
from contextlib import contextmanager

# the one dtype table: config values (pair.dtype, evaluator dtype options) -> torch attribute names
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16"}


def torch_dtype(name=None):
    """``torch.float32`` / ``float16`` / ``bfloat16`` for a name in DTYPE_NAMES (any case, an optional
    ``torch.`` prefix), a torch.dtype (returned as is), or None (float32). Raises ValueError listing the
    names."""
    import torch

    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        return name
    key = str(name).removeprefix("torch.").lower()
    if key not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, DTYPE_NAMES[key])


def default_device(device: str | None = None) -> str:
    """``device`` if given, else ``cuda`` when a GPU is visible, else ``cpu``."""
    if device:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def hub_offline(flag: bool | None = None) -> bool:
    """The project's one offline rule: ``flag`` when given (an explicit option), else huggingface_hub's
    own rule: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to one of
    huggingface_hub.constants.ENV_VARS_TRUE_VALUES ("1", "ON", "YES", "TRUE", any case). Read at call
    time, so a change of the environment is seen. (``flag=False`` cannot make huggingface_hub itself go
    online while HF_HUB_OFFLINE is set; it only lets rlg-bench's own URL downloads run.)"""
    if flag is not None:
        return bool(flag)
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return constants.is_offline_mode() or (value is not None and value.upper() in constants.ENV_VARS_TRUE_VALUES)


@contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch intra-op threads, restoring the previous count after (even on error).
    The measurements pin their thread count because their bits depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def package_versions(names) -> dict[str, str | None]:
    """{distribution name: installed version, or None when it is not installed} (importlib.metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
