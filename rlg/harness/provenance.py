"""What produced a run: code version, package versions, device, resolved config; secrets redacted."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from rlg.runtime import package_versions

SECRET_NAME = re.compile(r"(^|_)(api_?key|access_?key|secret(_access)?_?key|token|secret|passw(or)?d|credentials?)$",
                         re.IGNORECASE)
PACKAGES = ("rlg-bench", "torch", "diffusers", "transformers", "peft", "accelerate", "huggingface_hub", "safetensors",
            "open_clip_torch", "timm", "easyocr", "numpy", "pillow", "pandas", "hydra-core", "wandb")


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of ``obj`` with values of secret-looking keys, and any secret from the environment
    (WANDB_API_KEY, HF_TOKEN, ...), replaced by '<redacted>'."""
    if secrets is None:
        secrets = [v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 8]
    if isinstance(obj, dict):
        return {k: "<redacted>" if isinstance(k, str) and SECRET_NAME.search(k) and v not in (None, "")
                else redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, secrets) for v in obj)
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, "<redacted>")
    return obj


def _source_checkout() -> Path | None:
    """The rlg-bench git checkout this code runs from, or None for an installed package (whose parent
    directory may be someone else's repository)."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "rlg-bench"' in pyproject.read_text(errors="replace"):
        return root
    return None


def _git(root: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # no git binary, not a repository: provenance then says None
        return None


def code_version() -> dict[str, Any]:
    root = _source_checkout()
    return {"git_commit": _git(root, "rev-parse", "HEAD") if root else None,
            "git_dirty": bool(_git(root, "status", "--porcelain")) if root else None}


def versions() -> dict[str, str | None]:
    return package_versions(PACKAGES)


def device_info(device: str, models: bool = True) -> dict[str, Any]:
    """The device, its name and torch's thread count; ``models=False`` (an invocation that runs no torch
    model: a report, JPEG scoring) records the device without importing torch (torch_threads None)."""
    if not models:
        return {"device": device, "device_name": platform.processor(), "torch_threads": None,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    import torch

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    return {"device": str(dev), "device_name": name,
            "torch_threads": torch.get_num_threads(),  # CPU reductions, hence image bits, depend on it
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}  # speed only (rlg.harness.cli.cpu_defaults)


def provenance(device: str, resolved: dict[str, Any], overrides: list[str], seed: int,
               models: bool = True) -> dict[str, Any]:
    """The provenance block of one invocation's meta.json entry (``models``: see :func:`device_info`)."""
    return {**code_version(), "versions": versions(), "python": platform.python_version(),
            "platform": platform.platform(), **device_info(device, models), "config": resolved,
            "overrides": redact(list(overrides)), "seed": seed}
