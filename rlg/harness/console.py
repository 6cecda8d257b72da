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
"""

from __future__ import annotations

import logging
import os
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


def quiet_third_party(verbose: bool = False) -> None:
    """Silence (``verbose=False``) or restore (``verbose=True``) third-party progress bars, verbosity and
    the KNOWN_WARNINGS. Imports only the libraries already importable; cheap, idempotent.

    Call it once at start-up, before a pipeline or evaluator is loaded.
    """
    level = logging.WARNING if verbose else logging.ERROR  # WARNING: the libraries' own default
    if not verbose and not {"WANDB_QUIET", "WANDB_SILENT"} & set(os.environ):
        os.environ["WANDB_SILENT"] = "true"
        _SET_HERE.add("WANDB_SILENT")
    elif verbose and "WANDB_SILENT" in _SET_HERE:  # take back only what this function set
        os.environ.pop("WANDB_SILENT", None)
        _SET_HERE.discard("WANDB_SILENT")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    try:
        from diffusers.utils import logging as dlog

        (dlog.enable_progress_bar if verbose else dlog.disable_progress_bar)()
        dlog.set_verbosity(level)
    except ImportError:
        pass
    try:
        from transformers.utils import logging as tlog

        (tlog.enable_progress_bar if verbose else tlog.disable_progress_bar)()
        tlog.set_verbosity(level)
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if verbose else disable_progress_bars)()
    except ImportError:
        pass
    for message, category, module in KNOWN_WARNINGS:
        if verbose:
            warnings.filters[:] = [f for f in warnings.filters
                                   if not (f[0] == "ignore" and f[1] is not None and f[1].pattern == message
                                           and f[2] is category)]
        else:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
