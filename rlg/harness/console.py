"""A calm console: third-party loading bars, verbosity and known harmless warnings off unless verbose.

What a run prints is then its own: the tqdm bars of generate/evaluate, the per-scale lines and the
report path. Everything silenced here is the libraries' own documented switch:

* diffusers: ``diffusers.utils.logging.disable_progress_bar()`` (checkpoint-loading and denoising
  bars) and ``set_verbosity_error()``;
* transformers: ``transformers.utils.logging.disable_progress_bar()`` and ``set_verbosity_error()``;
* huggingface_hub: ``huggingface_hub.utils.disable_progress_bars()`` (download bars);
* wandb: ``WANDB_SILENT=true`` (its own console lines and run summary; the harness logs one line with
  the run's URL or offline directory), unless the user set WANDB_QUIET or WANDB_SILENT;
* known warnings that say nothing a user can act on (``KNOWN_WARNINGS``), filtered by message.

Errors are never silenced. ``quiet_third_party(verbose=True)`` puts the libraries' defaults back.

It imports no model library: diffusers and transformers (with torch, seconds to import) are switched
now if already imported, else when they load: their verbosity by their own environment variables
(``DIFFUSERS_VERBOSITY``, ``TRANSFORMERS_VERBOSITY``, read on import), transformers' bars follow
huggingface_hub's, and diffusers' loading bars are switched by :func:`quiet_model_libraries`, which the
generate stage calls before it loads a pipeline. So report-only and evaluate-only runs never pay those
imports.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

# (message regex, category, module regex): warnings third-party packages raise on every run that the
# user cannot act on. Each names its source.
KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # EasyOCR builds its recogniser with torch.quantization on CPU (easyocr 1.7 recognition.py)
    (r".*quantiz.*", UserWarning, r"(torch|easyocr).*"),
    (r".*torch\.ao\.quantization.*deprecated.*", DeprecationWarning, r".*"),
    # huggingface_hub deprecates an argument that diffusers/transformers still pass through
    (r".*local_dir_use_symlinks.*", UserWarning, r"huggingface_hub.*"),
    (r".*resume_download.*is deprecated.*", FutureWarning, r"huggingface_hub.*"),
    # torchvision's v2 beta notice, raised on import
    (r".*torchvision\.transforms\.v2.*", UserWarning, r"torchvision.*"),
    # EasyOCR's DataLoader asks for pin_memory on a machine without a GPU (once per reader call)
    (r".*pin_memory.*", UserWarning, r"torch.*"),
)
# matplotlib/fontTools log every PDF font subset; urllib3/filelock/httpx log each request and lock
NOISY_LOGGERS = ("fontTools", "matplotlib", "PIL", "urllib3", "filelock", "httpx", "easyocr", "timm", "open_clip")


_SET_HERE: set[str] = set()  # environment variables this module set (verbose=True removes only those)
_VERBOSE = [False]  # the last quiet_third_party setting, for quiet_model_libraries


def _set_env(name: str, value: str, verbose: bool, user_keys: tuple[str, ...] = ()) -> None:
    """Set ``name`` (unless the user set it or one of ``user_keys``); verbose: remove it if set here."""
    if not verbose and not {name, *user_keys} & set(os.environ):
        os.environ[name] = value
        _SET_HERE.add(name)
    elif verbose and name in _SET_HERE:  # take back only what this module set
        os.environ.pop(name, None)
        _SET_HERE.discard(name)


def quiet_third_party(verbose: bool = False) -> None:
    """Silence (``verbose=False``) or restore (``verbose=True``) third-party progress bars, verbosity and
    the KNOWN_WARNINGS. Imports no model library (module note); cheap, idempotent.

    Call it once at start-up, before a pipeline or evaluator is loaded.
    """
    _VERBOSE[0] = verbose
    _set_env("WANDB_SILENT", "true", verbose, user_keys=("WANDB_QUIET",))
    for name in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):  # for a library imported later
        _set_env(name, "error", verbose)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    try:  # light (no torch); transformers' bars follow it when transformers is imported later
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if verbose else disable_progress_bars)()
    except ImportError:
        pass
    quiet_model_libraries(imported_only=True)
    for message, category, module in KNOWN_WARNINGS:
        if verbose:
            warnings.filters[:] = [f for f in warnings.filters
                                   if not (f[0] == "ignore" and f[1] is not None and f[1].pattern == message
                                           and f[2] is category)]
        else:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)


def quiet_model_libraries(imported_only: bool = False) -> None:
    """Apply the last :func:`quiet_third_party` setting to diffusers' and transformers' bars and verbosity.

    ``imported_only``: only to those already imported; else import them (seconds: call it where a
    pipeline is about to load anyway). A library that is not installed is skipped."""
    verbose = _VERBOSE[0]
    level = logging.WARNING if verbose else logging.ERROR  # WARNING: the libraries' own default
    for package, module in (("diffusers", "diffusers.utils"), ("transformers", "transformers.utils")):
        if imported_only and package not in sys.modules:
            continue
        try:
            log_module = importlib.import_module(f"{module}.logging")
        except ImportError:
            continue
        (log_module.enable_progress_bar if verbose else log_module.disable_progress_bar)()
        log_module.set_verbosity(level)
