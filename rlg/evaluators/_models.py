"""Shared plumbing for the model-based evaluators: loading weights from the Hugging Face hub, a local
path or a pinned URL with errors that name the fix. Device, dtype and the offline rule are the
project's own (``rlg.runtime``: default_device, torch_dtype, hub_offline); file hashes ``rlg.files``.

Only light imports at module level: torch and the model libraries are imported inside functions so
that selecting one evaluator never imports another's stack.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from rlg.extras import require
from rlg.files import sha256_file

class ModelNotAvailableError(FileNotFoundError):
    """Weights or a tokenizer an evaluator needs are neither on disk nor downloadable."""


def dtype_tag(dtype) -> str:
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[str(dtype).removeprefix("torch.")]


def source_tag(id_or_path: str, revision: str | None, commit: str | None = None) -> str:
    """How a model source appears in a version string: ``id@revision`` or ``local:<dir name>``."""
    if Path(id_or_path).exists():
        return f"local:{Path(id_or_path).resolve().name}"
    return f"{id_or_path}@{commit or revision or 'main'}"


def hub_commit(repo_id: str, revision: str | None, filename: str, cache_dir: str | None = None) -> str | None:
    """The commit a cached hub file was downloaded from (its snapshot folder name), or None for local folders."""
    if Path(repo_id).exists():
        return None
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=True, cache_dir=cache_dir))
    except Exception:
        return None
    parts = path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def how_to_get(repo_id: str, revision: str | None, option: str, filename: str | None = None) -> str:
    rev = f" --revision {revision}" if revision else ""
    what = f" {filename}" if filename else ""
    return (f"make it available with `huggingface-cli download {repo_id}{what}{rev} --local-dir DIR` on a machine "
            f"with network access and pass {option}=DIR (or run once online so it lands in the hub cache, "
            f"then set HF_HUB_OFFLINE=1)")


def load_pretrained(loader: Callable[..., Any], id_or_path: str, *, revision: str | None, offline: bool, option: str,
                    what: str, cache_dir: str | None = None, **kwargs: Any) -> Any:
    """``loader.from_pretrained(id_or_path)`` honouring offline mode; a miss raises ModelNotAvailableError."""
    local = Path(id_or_path).expanduser()
    looks_local = local.is_absolute() or id_or_path.startswith((".", "~")) or local.exists()
    if looks_local and not local.is_dir():
        raise ModelNotAvailableError(
            f"{what}: local path {str(local)!r} (option {option}=) does not exist or is not a directory; "
            f"point {option}= at a folder saved in the hub layout (config.json + weights)"
        )
    try:
        return loader(
            str(local) if looks_local else id_or_path,
            revision=revision,
            local_files_only=offline,
            cache_dir=cache_dir,
            trust_remote_code=False,  # never run code shipped with weights
            **kwargs,
        )
    except (OSError, ValueError) as exc:  # transformers reports a missing repo/file as OSError
        if looks_local:
            raise ModelNotAvailableError(f"{what}: could not load from {str(local)!r}: {exc}") from exc
        mode = "offline mode (offline=True or HF_HUB_OFFLINE=1), not in the hub cache" if offline else "not reachable"
        raise ModelNotAvailableError(
            f"{what} {id_or_path!r} (revision {revision or 'main'}) could not be loaded: {mode}. "
            f"{how_to_get(id_or_path, revision, option)}. Original error: {exc}"
        ) from exc


def hub_file(repo_id: str, filename: str, *, revision: str | None, offline: bool, option: str, what: str,
             cache_dir: str | None = None) -> str:
    """Path of ``filename`` from the hub repo (downloading unless offline)."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename, revision=revision, local_files_only=offline, cache_dir=cache_dir)
    except Exception as exc:  # hub errors are many classes (offline, 404, gated, network)
        mode = "offline mode (offline=True or HF_HUB_OFFLINE=1), not in the hub cache" if offline else "not reachable"
        raise ModelNotAvailableError(
            f"{what}: {repo_id}/{filename} (revision {revision or 'main'}) could not be loaded: {mode}. "
            f"{how_to_get(repo_id, revision, option, filename)}. Original error: {exc}"
        ) from exc


def default_cache_dir() -> Path:
    base = os.environ.get("RLG_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "rlg-bench"
    )
    return Path(base)


def cached_url_file(
    url: str, sha256: str, filename: str, *, cache_dir: str | Path | None, offline: bool, option: str, what: str
) -> Path:
    """``filename`` in the cache dir, downloaded from ``url`` if absent; the sha256 is checked either way."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / filename
    if not path.exists():
        if offline:
            raise ModelNotAvailableError(
                f"{what}: {path} is missing and offline mode is on (offline=True or HF_HUB_OFFLINE=1). "
                f"Download {url} (sha256 {sha256}) on a machine with network access and either put it at "
                f"{path} or pass {option}=<the file>"
            )
        cache.mkdir(parents=True, exist_ok=True)
        from rlg.downloads import DownloadError, url_file  # the project's one downloader (retries, pin, atomic)

        try:
            url_file(url, path, sha256=sha256, offline=False)
        except DownloadError as exc:
            raise ModelNotAvailableError(
                f"{what}: {exc} Download it (sha256 {sha256}) by hand and pass {option}=<the file> or put it at {path}"
            ) from exc
    got = sha256_file(path)
    if got != sha256:
        raise ModelNotAvailableError(
            f"{what}: {path} has sha256 {got}, expected {sha256}; delete it so it is downloaded again "
            f"from {url}, or pass {option}=<a verified copy>"
        )
    return path


def embeddings(output: Any):
    """transformers 5 ``get_*_features`` return a ModelOutput (projected ``pooler_output``); 4.x a tensor."""
    return output if hasattr(output, "dim") else output.pooler_output


def open_clip_tag(model_name: str, tag: str) -> tuple[str, list[str], dict[str, Any]]:
    """Hub repo, weight file candidates (safetensors first) and ``create_model_and_transforms``
    keyword arguments (QuickGELU flag, preprocessing) of an open_clip pretrained tag."""
    open_clip = require("open_clip", purpose="open_clip models (hps, aesthetic, geneval)")

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        raise ModelNotAvailableError(
            f"{tag!r} is neither a file nor a pretrained tag of open_clip {model_name!r} "
            f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(model_name)) or 'none'})"
        )
    hf = cfg.get("hf_hub", "")
    if not hf:
        raise ModelNotAvailableError(
            f"open_clip tag {model_name}:{tag} has no hub repo; download {cfg.get('url')} and pass the file "
            f"as the pretrained option"
        )
    if hf.endswith("/"):  # "org/repo/" means the default file names
        repo, candidates = hf.rstrip("/"), ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    else:
        repo, fname = os.path.split(hf)
        candidates = [str(Path(fname).with_suffix(".safetensors")), fname]
    kwargs = dict(force_quick_gelu=bool(cfg.get("quick_gelu", False)),
                  image_mean=cfg.get("mean"), image_std=cfg.get("std"),
                  image_interpolation=cfg.get("interpolation"), image_resize_mode=cfg.get("resize_mode"))
    return repo, candidates, kwargs


def clip_quick_gelu(model_name: str, pretrained: str | None, quick_gelu: bool | None, *, option: str,
                    what: str) -> bool:
    """Whether an open_clip model must be built with QuickGELU: the activation its weights were trained with.

    A pretrained tag says so itself (open_clip's ``quick_gelu`` flag: True for the "openai" tags, whose
    weights come from OpenAI's QuickGELU CLIP); a ``-quickgelu`` config name says so too. A weights *file*
    does not: open_clip would build e.g. ``ViT-L-14`` with plain GELU, load every tensor and say nothing,
    so ``quick_gelu`` (``option``) must be given. An explicit value that contradicts the tag or config is
    refused. Raises ModelNotAvailableError naming what to pass."""
    open_clip = require("open_clip", purpose="open_clip models (hps, aesthetic, geneval)")

    if model_name.startswith("hf-hub:"):  # open_clip reads the repo's own open_clip_config.json
        if quick_gelu is not None:
            raise ModelNotAvailableError(f"{what}: {option}= does not apply to {model_name!r}, whose activation comes "
                                         f"from its open_clip_config.json; drop {option}")
        return False
    if model_name.startswith("local-dir:"):  # the folder's open_clip_config.json states the architecture
        import json

        config_file = Path(model_name.removeprefix("local-dir:")).expanduser() / "open_clip_config.json"
        model_cfg = json.loads(config_file.read_text()).get("model_cfg", {}) if config_file.is_file() else {}
        if "quick_gelu" not in model_cfg:
            if quick_gelu is None and config_file.is_file():
                raise ModelNotAvailableError(
                    f"{what}: {config_file} does not say which activation the weights were trained with (no "
                    f"model_cfg.quick_gelu); pass {option}=true for OpenAI CLIP weights (QuickGELU) or {option}=false "
                    f"for LAION/DataComp weights")
            return bool(quick_gelu)
        known = bool(model_cfg["quick_gelu"])
        if quick_gelu is not None and bool(quick_gelu) != known:
            raise ModelNotAvailableError(f"{what}: {option}={str(bool(quick_gelu)).lower()} contradicts "
                                         f"{config_file} (quick_gelu={str(known).lower()}); drop {option}")
        return known
    config = open_clip.get_model_config(model_name) or {}
    known: bool | None = True if config.get("quick_gelu") else None
    if pretrained and not Path(pretrained).expanduser().is_file():
        known = bool((open_clip.get_pretrained_cfg(model_name, pretrained) or {}).get("quick_gelu", False)) or known
    if known is None and pretrained is not None:
        if quick_gelu is None:
            raise ModelNotAvailableError(
                f"{what}: the weights file {pretrained!r} does not say which activation it was trained with, and "
                f"open_clip would build {model_name!r} with plain GELU without a word. Pass {option}=true for OpenAI "
                f"CLIP weights (e.g. ViT-L-14 'openai', QuickGELU) or {option}=false for LAION/DataComp weights")
        return bool(quick_gelu)
    known = bool(known)
    if quick_gelu is not None and bool(quick_gelu) != known:
        raise ModelNotAvailableError(
            f"{what}: {option}={str(bool(quick_gelu)).lower()} contradicts the weights {model_name}:{pretrained}, "
            f"trained with {'QuickGELU' if known else 'GELU'}; drop {option} (it follows the weights)")
    return known


def load_open_clip(model_name: str, pretrained: str | None, *, offline: bool, option: str, what: str,
                   cache_dir: str | None = None, quick_gelu: bool | None = None,
                   quick_gelu_option: str = "clip_quick_gelu"):
    """An open_clip model and its inference transform, with the weights resolved by us.

    ``model_name`` is a built-in config name (then ``pretrained`` is a tag such as "openai" or a
    checkpoint file) or ``local-dir:/path`` (open_clip_config.json + weights, the hub layout).
    A tag's weights are fetched from its hub repo with ``local_files_only`` in offline mode,
    preferring safetensors; the tag's QuickGELU flag and preprocessing are applied explicitly,
    because open_clip builds e.g. ``ViT-L-14`` with plain GELU even for the "openai" weights.
    A weights file needs ``quick_gelu`` (see :func:`clip_quick_gelu`; ``quick_gelu_option`` names it).
    Returns ``(model, preprocess, source)`` with ``source`` for version strings (":quickgelu" when set
    for a file).
    """
    open_clip = require("open_clip", purpose="open_clip models (hps, aesthetic, geneval)")

    quick = clip_quick_gelu(model_name, pretrained, quick_gelu, option=quick_gelu_option, what=what)

    extra: dict[str, Any] = {}
    if model_name.startswith("local-dir:"):
        local = Path(model_name.removeprefix("local-dir:")).expanduser()
        if not (local / "open_clip_config.json").is_file():
            raise ModelNotAvailableError(
                f"{what}: {str(local)!r} (option {option}=) has no open_clip_config.json; save the model "
                f"in the open_clip hub layout (open_clip_config.json + open_clip_model.safetensors)"
            )
        if not any(local.glob(p) for p in ("*.safetensors", "*.bin", "*.pth")):
            # open_clip would only warn and hand back a randomly initialised model.
            raise ModelNotAvailableError(f"{what}: {str(local)!r} (option {option}=) holds no weights file")
        weights, source = None, f"local:{local.resolve().name}"
        extra = dict(force_quick_gelu=quick)
    elif pretrained is None:
        weights, source = None, f"{model_name}:random"
    elif Path(pretrained).expanduser().is_file():
        weights, source = str(Path(pretrained).expanduser()), f"{model_name}:local:{Path(pretrained).name}"
        extra = dict(force_quick_gelu=quick)
        source += ":quickgelu" if quick else ":gelu"
    else:
        try:
            repo, candidates, extra = open_clip_tag(model_name, pretrained)
        except ModelNotAvailableError as exc:
            raise ModelNotAvailableError(f"{what} (option {option}=): {exc}") from None
        weights, error = None, None
        for candidate in candidates:  # safetensors first; the pickle only when the repo has nothing else
            try:
                weights = hub_file(repo, candidate, revision=None, offline=offline, option=option, what=what,
                                   cache_dir=cache_dir)
                break
            except ModelNotAvailableError as exc:
                error = exc
        if weights is None:
            raise ModelNotAvailableError(
                f"{what}: open_clip weights {model_name}:{pretrained} from hub repo {repo} not available "
                f"({'offline' if offline else 'download failed'}). Get them with `huggingface-cli download {repo} "
                f"--local-dir DIR` and pass {option}='local-dir:DIR' (add an open_clip_config.json if the repo "
                f"has none) or the weights file as the pretrained option with {quick_gelu_option}="
                f"{str(bool(extra.get('force_quick_gelu'))).lower()} (the activation of these weights). "
                f"Last error: {error}"
            ) from error
        source = f"{model_name}:{pretrained}"
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=weights, device="cpu", cache_dir=cache_dir, **extra
    )
    return model.eval(), preprocess, source


def load_processor_and_model(processor_loader: Callable[..., Any], processor: str, processor_revision: str | None,
                             model_loader: Callable[..., Any], model: str, model_revision: str | None, *, what: str,
                             offline: bool, cache_dir: str | None, device: Any, dtype: Any,
                             processor_option: str = "model", **model_kwargs: Any) -> tuple[Any, Any]:
    """(processor, model) of a hub CLIP-style scorer through ``load_pretrained``: the processor's tokenizer checked
    (``check_tokenizer``; option ``processor_option``), the model in eval mode on ``device`` in ``dtype``. ``what``
    names both in messages ("<what> processor", "<what> model"); ``model_kwargs`` go to the model's loader."""
    proc = load_pretrained(processor_loader, processor, revision=processor_revision, offline=offline,
                           option=processor_option, what=f"{what} processor", cache_dir=cache_dir)
    check_tokenizer(proc.tokenizer, processor, option=processor_option, what=f"{what} processor")
    net = load_pretrained(model_loader, model, revision=model_revision, offline=offline, option="model",
                          what=f"{what} model", cache_dir=cache_dir, **model_kwargs)
    return proc, net.eval().to(device, dtype)


def check_tokenizer(tokenizer: Any, source: str, *, option: str, what: str) -> Any:
    """Refuse a tokenizer with no vocabulary beyond its special tokens.

    transformers 5's tokenizer classes (e.g. ``BertTokenizer.from_pretrained``) can come back from a
    folder or hub id without vocabulary files as an *empty* tokenizer instead of raising; every
    prompt would then encode as [UNK] and scores would be silently wrong.
    """
    if len(tokenizer.get_vocab()) <= len(set(tokenizer.all_special_tokens)):
        raise ModelNotAvailableError(
            f"{what}: no vocabulary found for {source!r} (option {option}=); "
            + (how_to_get(source, None, option) if not Path(source).exists() else "the folder has no tokenizer files")
        )
    return tokenizer
