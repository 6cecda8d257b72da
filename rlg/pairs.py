"""Loading a (base, RL) pair into a stock diffusers pipeline whose denoiser is an RLGDenoiser.

Three kinds of RL checkpoint:
  full            a second full-weight denoiser (Diffusion-DPO UNets, DDPO and merged SPO pipelines,
                  FLUX transformers): two networks, two forwards per step.
  diffusers_lora  a diffusers-format LoRA file (SPO LoRAs), loaded with diffusers' own converter.
  peft_lora       a PEFT adapter directory (adapter_config.json + adapter_model.safetensors, keys
                  ``base_model.model.*``; the Flow-GRPO adapters), injected with PEFT itself so
                  ``lora_alpha / r`` is honoured. Handing such a file to diffusers' LoRA loader with
                  the default prefix loads nothing and only logs a line: the classic silent no-op.
LoRA pairs share one network; base and RL come from one batched forward (rlg.denoiser).

torch and the denoiser are imported where a model is loaded: the specs, errors and weight identity
serve report-only and evaluate-only invocations without the model libraries' import time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rlg import runtime
from rlg.choices import RL_KINDS
from rlg.files import StoreWriteError, atomic_write, sha256_file
from rlg.guidance import StepWindow
from rlg.surface import PIPELINE_METHODS, REFUSED

if TYPE_CHECKING:  # annotations only: loading a pair imports torch where it is used, so a config check need not
    import torch

    from rlg.denoiser import RLGDenoiser

log = logging.getLogger(__name__)

RL_ADAPTER = "rl"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class PairError(ValueError):
    """A pair that cannot be loaded or used; the message names the fix."""


@dataclass
class Checkpoint:
    """Where a model comes from: a hub id (with a pinned revision) or a local directory."""

    id: str
    revision: str | None = None
    subfolder: str | None = None
    weight_name: str | None = None  # a single file inside the repo/dir (LoRA files)
    variant: str | None = None  # e.g. "fp16"

    def describe(self) -> str:
        s = self.id + (f"@{self.revision}" if self.revision else "")
        return s + (f" (subfolder {self.subfolder})" if self.subfolder else "")


@dataclass
class PairSpec:
    name: str
    base: Checkpoint
    rl: Checkpoint
    rl_kind: Literal["full", "diffusers_lora", "peft_lora"] = "full"  # a name of rlg.choices.RL_KINDS
    pipeline_class: str | None = None  # e.g. StableDiffusionInpaintPipeline; default: from model_index.json
    vae: Checkpoint | None = None  # e.g. madebyollin/sdxl-vae-fp16-fix for SDXL in fp16
    dtype: str = "float32"
    allow_pickle: bool = False  # .bin/.pt weights (DDPO) only when the user opts in
    offline: bool = False  # or HF_HUB_OFFLINE=1
    # pipeline components passed to from_pretrained as given, e.g. {"text_encoder_3": None, "tokenizer_3": None}
    # loads SD3 without T5 (diffusers' documented way to save memory)
    components: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What about the pair determines an image (part of every content key)."""
        out = {"name": self.name, "base": asdict(self.base), "rl": asdict(self.rl), "rl_kind": self.rl_kind,
               "pipeline_class": self.pipeline_class, "vae": asdict(self.vae) if self.vae else None,
               "dtype": self.dtype}
        if self.components:  # only when set, so the keys of pairs without it do not change
            out["components"] = {k: None if v is None else repr(v) for k, v in sorted(self.components.items())}
        return out


@dataclass
class LoadedPair:
    spec: PairSpec
    pipe: Any  # a diffusers pipeline whose unet/transformer is `denoiser`
    denoiser: RLGDenoiser
    denoiser_name: str  # "unet" or "transformer"
    info: dict[str, Any] = field(default_factory=dict)  # what was loaded (LoRA layers, scaling, ...)
    on_unwrap: list[Any] = field(default_factory=list)  # callables that undo what a sampler changed in the pipeline


    def unwrap(self):
        """Give the pipeline back as it was before wrapping, and return it: its own denoiser, without the RL adapter
        that loading the pair added (an adapter named by ``rl_adapter=`` was the user's and stays), with the
        user's active adapters, its own pipeline methods and unpatched text encoders and VAE. Wrapping it again
        (``from_pipeline``) works."""
        pipe, base = self.pipe, self.denoiser.base
        setattr(pipe, self.denoiser_name, base)
        for method in PIPELINE_METHODS:  # the refusals install() put on the instance
            pipe.__dict__.pop(method, None)
        if self.info.get("loaded_adapter"):
            delete_adapter(base, RL_ADAPTER)
        if self.info.get("user_adapters"):
            set_active_adapters(base, self.info["user_adapters"])
        for undo in self.on_unwrap:  # what samplers changed in the pipeline (row-wise text encoders and VAE)
            undo()
        self.on_unwrap.clear()
        self.denoiser._pipe = None
        return pipe


# ---------------------------------------------------------------------------------------------
# Installing the RLG denoiser in a pipeline, and what a user changed in the networks before that
# ---------------------------------------------------------------------------------------------
def tuner_layers(net: torch.nn.Module) -> list[torch.nn.Module]:
    """PEFT's adapter layers (LoRA, DoRA) and modules_to_save wrappers inside ``net``."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return [m for m in net.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


def active_adapters(net: torch.nn.Module) -> list[str]:
    """The adapters active in ``net``'s PEFT layers (empty without any)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in net.modules():
        if isinstance(m, BaseTunerLayer):
            return list(m.active_adapters)
    return []


def set_active_adapters(net: torch.nn.Module, names: list[str]) -> None:
    """Exactly ``names`` active in every PEFT LoRA layer of ``net`` (their scales unchanged)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in net.modules():
        if isinstance(m, BaseTunerLayer):
            m.set_adapter(names, inference_mode=True)


def delete_adapter(net: torch.nn.Module, name: str) -> None:
    """Remove adapter ``name`` from ``net`` (diffusers' own bookkeeping too), leaving the others as they were."""
    others = [a for a in active_adapters(net) if a != name]
    for m in tuner_layers(net):
        if name in getattr(m, "peft_config", {}) or name in _adapter_names(m):
            m.delete_adapter(name)
    config = getattr(net, "peft_config", None)
    if isinstance(config, dict):
        config.pop(name, None)
        if not config and hasattr(net, "_hf_peft_config_loaded"):
            net._hf_peft_config_loaded = False
    if others:
        set_active_adapters(net, others)


def _adapter_names(layer: torch.nn.Module) -> set[str]:
    names: set[str] = set()
    for attr in getattr(layer, "adapter_layer_names", ()):
        names |= set(getattr(layer, attr, {}).keys())
    return names | set(getattr(layer, "_adapters", ()))


def in_place_changes(net: torch.nn.Module) -> dict[str, Any]:
    """What a pipeline method changes inside a network in place (FreeU, attention processors and slicing, fused
    QKV projections, forward chunking, active LoRA adapters): equal between base and RL for a full pair."""
    return {
        "FreeU (enable_freeu)": [tuple(getattr(b, k, None) for k in ("s1", "s2", "b1", "b2"))
                                 for b in getattr(net, "up_blocks", [])],
        "attention processors (set_attn_processor, enable_attention_slicing, ...)": sorted(
            (k, type(v).__name__, getattr(v, "slice_size", None)) for k, v in getattr(net, "attn_processors", {}).items()),
        "fused QKV projections (fuse_qkv_projections)": sorted(
            n for n, m in net.named_modules() if getattr(m, "fused_projections", False)),
        "forward chunking (enable_forward_chunking)": sorted(
            (n, m._chunk_size) for n, m in net.named_modules() if getattr(m, "_chunk_size", None) is not None),
        "LoRA adapters (load_lora_weights, set_adapters)": active_adapters(net),
    }


def check_same_changes(base: torch.nn.Module, rl: torch.nn.Module) -> None:
    """PairError when the base network carries an in-place change the RL network lacks (made to the pipeline
    before wrapping, so it reached the base only): at w = 1 the images would not be the stock RL pipeline's."""
    a, b = in_place_changes(base), in_place_changes(rl)
    differ = [k for k in a if a[k] != b[k]]
    if differ:
        raise PairError(f"the base and RL networks differ in {', '.join(differ)}: a change made to the pipeline before "
                        "wrapping reached the base network only; make it after wrapping (changes through the wrapped "
                        "pipeline reach both networks) or make it on the RL network too")


def install(pipe, name: str, denoiser: RLGDenoiser) -> None:
    """Put ``denoiser`` in ``pipe`` as its ``name`` (unet / transformer): the denoiser reads the steps each call
    runs from the pipeline, and the pipeline methods ``rlg.surface.PIPELINE_METHODS`` refuses are replaced on this
    pipeline instance by a one-line refusal (``LoadedPair.unwrap`` removes them)."""
    setattr(pipe, name, denoiser)
    denoiser.attach(pipe)
    for method, (state, why) in PIPELINE_METHODS.items():
        if state == REFUSED and hasattr(type(pipe), method):
            setattr(pipe, method, _refusal(method, why))


def _refusal(method: str, why: str):
    def refused(*args, **kwargs):
        raise PairError(f"pipe.{method}() is refused: {why}")
    refused.__name__ = method
    return refused


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of ``pair.dtype`` (rlg.runtime's one table); PairError for an unknown name."""
    try:
        return runtime.torch_dtype(name)
    except ValueError as exc:
        raise PairError(str(exc)) from None


def _offline(spec: PairSpec) -> bool:
    """The pair's own switch, or the project's one offline rule (rlg.runtime.hub_offline: huggingface_hub's)."""
    return spec.offline or runtime.hub_offline()


# ---------------------------------------------------------------------------------------------
# Weight identity: what an image depends on, resolved before loading
# ---------------------------------------------------------------------------------------------
COMMIT_LENGTH = 40  # a full git commit hash, as the hub names snapshots
_HUB_COMMITS: dict[tuple[str, str], str | None] = {}  # (repo id, revision) -> commit the hub named (None: unreachable)


def fingerprint_cache_path() -> Path:
    """Where file content hashes are cached: $RLG_FINGERPRINT_CACHE or ~/.cache/rlg-bench/fingerprints.json."""
    default = Path.home() / ".cache" / "rlg-bench" / "fingerprints.json"
    return Path(os.environ.get("RLG_FINGERPRINT_CACHE", default)).expanduser()


def _file_sha256(path: Path, cache: dict[str, list]) -> str:
    """Content sha256 of a file, cached by (absolute path, size, mtime_ns): a rerun hashes nothing,
    a file rewritten in place is hashed again."""
    st = path.stat()
    key = str(path.resolve())
    hit = cache.get(key)
    if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
        return hit[2]
    cache[key] = [st.st_size, st.st_mtime_ns, sha256_file(path)]
    return cache[key][2]


def _local_files(ckpt: Checkpoint, role: str) -> tuple[Path, list[Path]]:
    """The files of a local checkpoint that an image depends on (hidden files excluded; none when the
    subfolder or file is missing, which loading then reports)."""
    root = Path(ckpt.id).expanduser().resolve()
    folder = root / ckpt.subfolder if ckpt.subfolder else root
    if folder.is_file():
        return folder.parent, [folder]
    if not folder.is_dir():  # loading names the missing part; the identity just has no files
        return folder, []
    if ckpt.weight_name:  # a single weight file plus the configs beside it
        files = [folder / ckpt.weight_name] + sorted(folder.glob("*.json"))
    else:
        files = sorted(p for p in folder.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return folder, [p for p in files if p.is_file()]


def _hub_commit(ckpt: Checkpoint, offline: bool, cache_dir: str | Path | None) -> tuple[str | None, str]:
    """(commit, how it was resolved) for a hub checkpoint: a full-hash revision as given; else the hub
    (when online); else the local HF cache's ref for the revision; else (None, "unresolved")."""
    rev = ckpt.revision or "main"
    if len(rev) == COMMIT_LENGTH and all(c in "0123456789abcdef" for c in rev):
        return rev, "pinned"
    if not offline:
        key = (ckpt.id, rev)
        if key not in _HUB_COMMITS:  # once per process: build and load_pair both ask
            from huggingface_hub import HfApi

            try:
                _HUB_COMMITS[key] = HfApi().model_info(ckpt.id, revision=rev, timeout=10).sha
            except Exception as exc:  # no network, gated, rate limit: fall back to the cache
                log.warning("could not resolve %s on the hub (%s: %s); using the local HF cache. Offline runs: set "
                            "HF_HUB_OFFLINE=1", ckpt.describe(), type(exc).__name__, exc)
                _HUB_COMMITS[key] = None
        if _HUB_COMMITS[key]:
            return _HUB_COMMITS[key], "hub"
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    try:
        repo = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=ckpt.id, repo_type="model")
    except ValueError:  # not a valid repo id (HFValidationError): nothing to resolve; loading names the fix
        return None, "unresolved"
    ref = repo / "refs" / rev
    if ref.is_file():
        return ref.read_text().strip(), "cache"
    return None, "unresolved"


def _looks_local(id_: str) -> bool:
    """A path rather than a hub id (``org/name``), even when it does not exist."""
    return id_.startswith((".", "~", os.sep)) or id_.count("/") > 1


def checkpoint_identity(ckpt: Checkpoint, role: str, *, offline: bool = False, cache_dir: str | Path | None = None,
                        hash_cache: dict[str, list] | None = None) -> dict[str, Any]:
    """The resolved identity of one checkpoint (see ``weights_identity``)."""
    where = {"subfolder": ckpt.subfolder, "weight_name": ckpt.weight_name, "variant": ckpt.variant}
    if Path(ckpt.id).expanduser().exists() or _looks_local(ckpt.id):
        folder, files = _local_files(ckpt, role)
        cache = {} if hash_cache is None else hash_cache
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(folder).as_posix()}\0{_file_sha256(f, cache)}\n".encode())
        return {"source": "local", "path": str(folder), **where, "files": len(files), "sha256": h.hexdigest()}
    commit, how = _hub_commit(ckpt, offline, cache_dir)
    return {"source": "hub", "id": ckpt.id, "revision": ckpt.revision, **where, "commit": commit, "resolved_by": how}


def weights_identity(spec: PairSpec, *, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The resolved identity of every weight file an image of ``spec`` depends on, before loading.

    Returns ``{"base": ..., "rl": ..., "vae": ... | None}``, each a JSON-ready dict:
      hub checkpoints:   {"source": "hub", "id", "revision", "subfolder", "weight_name", "variant",
                          "commit": <40-hex snapshot commit or None>, "resolved_by": pinned|hub|cache|unresolved}
                         (a full-hash revision is used as is; otherwise the hub is asked when online, and the
                         local HF cache's ref for the revision is read when offline or the hub cannot be reached)
      local checkpoints: {"source": "local", "path", ..., "files": n, "sha256": <hash over (relative path,
                         content sha256) of every file it depends on>}; content hashes are cached by
                         (path, size, mtime) in ``fingerprint_cache_path()``, so a rerun reads no weights and a
                         file rewritten in place is hashed again.
    ``cache_dir``: the HF hub cache (default: huggingface_hub's). Raises PairError for a local path that does
    not hold the checkpoint. Content keys that include this change when any weight changes.
    """
    offline = _offline(spec)
    cache_file = fingerprint_cache_path()
    try:
        hash_cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    except (OSError, ValueError):  # a damaged cache is only a cache
        hash_cache = {}
    before = dict(hash_cache)
    out = {role: checkpoint_identity(ckpt, role, offline=offline, cache_dir=cache_dir, hash_cache=hash_cache)
           if ckpt is not None else None for role, ckpt in (("base", spec.base), ("rl", spec.rl), ("vae", spec.vae))}
    if hash_cache != before:
        try:
            atomic_write(cache_file, json.dumps(hash_cache).encode())  # concurrent ranks never read half a file
        except StoreWriteError as exc:
            log.warning("could not write the fingerprint cache %s (%s); weights are hashed again next time",
                        cache_file, exc)
    return out


def pin_resolved(spec: PairSpec, identity: dict[str, Any]) -> PairSpec:
    """``spec`` with every unpinned hub checkpoint set to the commit ``identity`` resolved, so what is loaded
    is what the identity names (a hub ``main`` that moves between the two cannot slip in)."""
    def pin(ckpt: Checkpoint | None, ident: dict[str, Any] | None) -> Checkpoint | None:
        if ckpt is None or not ident or ident["source"] != "hub" or not ident["commit"]:
            return ckpt
        return replace(ckpt, revision=ident["commit"])

    return replace(spec, base=pin(spec.base, identity.get("base")), rl=pin(spec.rl, identity.get("rl")),
                   vae=pin(spec.vae, identity.get("vae")))


def _not_found(what: str, ckpt: Checkpoint, exc: Exception, offline: bool) -> PairError:
    local = Path(ckpt.id).expanduser()
    if local.is_absolute() or ckpt.id.startswith("."):
        hint = f"the local path {local} does not hold it (check the path and the subfolder)"
    else:
        rev = f" --revision {ckpt.revision}" if ckpt.revision else ""
        hint = (f"download it on a machine with internet (`hf download {ckpt.id}{rev}`) and run with "
                f"HF_HUB_OFFLINE=1, or set the pair's id to a local directory" +
                (" (offline mode is on, so nothing was downloaded)" if offline else ""))
    return PairError(f"cannot load the {what} {ckpt.describe()}: {type(exc).__name__}: {exc}\nFix: {hint}")


def _hub_kwargs(spec: PairSpec, ckpt: Checkpoint) -> dict[str, Any]:
    kw: dict[str, Any] = {"local_files_only": _offline(spec)}
    if ckpt.revision:
        kw["revision"] = ckpt.revision
    if ckpt.variant:
        kw["variant"] = ckpt.variant
    # safetensors only, unless the user opted in to pickle weights
    kw["use_safetensors"] = None if spec.allow_pickle else True
    return kw


def _safetensors_hint(exc: Exception, spec: PairSpec, ckpt: Checkpoint) -> PairError | None:
    text = str(exc).lower()
    if not spec.allow_pickle and "safetensors" in text:
        return PairError(f"{ckpt.describe()} has no safetensors weights, only pickle files (.bin/.pt). Pickle "
                         "files can run code when loaded; if you trust the source set pair.allow_pickle=true "
                         "(they are then read with torch.load(weights_only=True)).\nOriginal error: " + str(exc))
    return None


# ---------------------------------------------------------------------------------------------
def load_pipeline(spec: PairSpec):
    import diffusers

    dtype = torch_dtype(spec.dtype)
    kw = _hub_kwargs(spec, spec.base)
    if spec.vae is not None:
        try:
            kw["vae"] = diffusers.AutoencoderKL.from_pretrained(spec.vae.id, subfolder=spec.vae.subfolder,
                                                                dtype=dtype, **_hub_kwargs(spec, spec.vae))
        except (OSError, ValueError) as exc:
            raise _safetensors_hint(exc, spec, spec.vae) or _not_found("VAE", spec.vae, exc, _offline(spec)) from exc
    cls = diffusers.DiffusionPipeline
    if spec.pipeline_class:
        if not hasattr(diffusers, spec.pipeline_class):
            raise PairError(f"pipeline_class {spec.pipeline_class!r} is not a diffusers pipeline class")
        cls = getattr(diffusers, spec.pipeline_class)
    try:
        config = cls.load_config(spec.base.id, **{k: v for k, v in kw.items() if k in ("revision", "local_files_only")})
    except (OSError, ValueError, EnvironmentError) as exc:
        raise _not_found("base pipeline (its model_index.json)", spec.base, exc, _offline(spec)) from exc
    if "safety_checker" in config:  # research images are scored, not filtered (black images would bias every metric)
        kw.update(safety_checker=None, requires_safety_checker=False)
    for comp, value in config.items():  # a pipeline saved without a component lists it as [null, null]
        if not comp.startswith("_") and isinstance(value, (list, tuple)) and list(value) == [None, None]:
            kw.setdefault(comp, None)
    kw.update(spec.components)
    missing = _missing_components(spec, config, kw)
    if missing:
        comp, where = missing[0]
        raise PairError(f"cannot load component {comp!r} of the base pipeline {spec.base.describe()}: {where} "
                        f"does not hold it.\nFix: download it, or load the pipeline without it if it allows that: "
                        f"pair.components: {{{comp}: null{_paired_tokenizer(comp, config)}}}")
    try:
        pipe = cls.from_pretrained(spec.base.id, dtype=dtype, **kw)
    except (OSError, ValueError, EnvironmentError) as exc:
        comp = _failed_component(exc)
        what = f"component {comp!r} of the base pipeline" if comp else "base pipeline"
        raise _safetensors_hint(exc, spec, spec.base) or _not_found(what, spec.base, exc, _offline(spec)) from exc
    return pipe


def _paired_tokenizer(comp: str, config: dict[str, Any]) -> str:
    twin = comp.replace("text_encoder", "tokenizer")
    return f", {twin}: null" if twin != comp and twin in config else ""


def _missing_components(spec: PairSpec, config: dict[str, Any], given: dict[str, Any]) -> list[tuple[str, str]]:
    """Components that model_index.json lists but the local directory (or the offline hub snapshot) lacks."""
    wanted = [c for c, v in config.items() if not c.startswith("_") and isinstance(v, (list, tuple))
              and len(v) == 2 and v[1] is not None and c not in given]
    local = Path(spec.base.id).expanduser()
    if local.is_dir():
        root = local / (spec.base.subfolder or "")
    elif _offline(spec):
        from huggingface_hub import try_to_load_from_cache

        index = try_to_load_from_cache(spec.base.id, "model_index.json", revision=spec.base.revision)
        if not isinstance(index, str):
            return []
        root = Path(index).parent
    else:
        return []
    return [(c, f"{root / c} (listed in model_index.json)") for c in wanted if not (root / c).is_dir()]


def _failed_component(exc: BaseException) -> str | None:
    """The component diffusers was loading when ``exc`` was raised (its ``load_sub_model(name=...)``), if any."""
    tb = exc.__traceback__
    name = None
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "load_sub_model":
            name = tb.tb_frame.f_locals.get("name")
        tb = tb.tb_next
    return name if isinstance(name, str) else None


def _denoiser_name(pipe) -> str:
    for name in ("unet", "transformer"):
        if getattr(pipe, name, None) is not None:
            return name
    raise PairError(f"{type(pipe).__name__} has neither a unet nor a transformer to wrap")


def check_compatible(base: torch.nn.Module, rl: torch.nn.Module, rl_desc: str) -> None:
    """Base and RL denoisers must be the same architecture with the same config."""
    if type(base) is not type(rl):
        raise PairError(f"the RL denoiser {rl_desc} is a {type(rl).__name__} but the base is a {type(base).__name__}; "
                        "RLG needs two denoisers of the same architecture (check the pair's rl.id / subfolder)")
    bc, rc = dict(base.config), dict(rl.config)
    diff = sorted(k for k in set(bc) | set(rc) if not k.startswith("_") and bc.get(k) != rc.get(k))
    if diff:
        detail = "; ".join(f"{k}: base={bc.get(k)!r} rl={rc.get(k)!r}" for k in diff[:6])
        raise PairError(f"the RL denoiser {rl_desc} has a different config from the base ({detail}); "
                        "the two checkpoints are not a (base, fine-tuned) pair of the same model")


def load_full_rl(spec: PairSpec, base: torch.nn.Module, name: str) -> torch.nn.Module:
    kw = _hub_kwargs(spec, spec.rl)
    subfolder = spec.rl.subfolder if spec.rl.subfolder is not None else name
    try:
        config = type(base).load_config(spec.rl.id, subfolder=subfolder or None,
                                        **{k: v for k, v in kw.items() if k in ("revision", "local_files_only")})
        if config.get("_class_name", type(base).__name__) != type(base).__name__:
            raise PairError(f"the RL denoiser {spec.rl.describe()} is a {config['_class_name']} but the base is a "
                            f"{type(base).__name__}; RLG needs two denoisers of the same architecture "
                            "(check the pair's rl.id / subfolder)")
        rl = type(base).from_pretrained(spec.rl.id, subfolder=subfolder or None, dtype=base.dtype, **kw)
    except PairError:
        raise
    except (OSError, ValueError) as exc:
        raise _safetensors_hint(exc, spec, spec.rl) or _not_found("RL denoiser", spec.rl, exc, _offline(spec)) from exc
    check_compatible(base, rl, spec.rl.describe())
    return rl.eval()


# ---------------------------------------------------------------------------------------------
def _resolve_file(spec: PairSpec, ckpt: Checkpoint, filename: str) -> Path:
    """A file of a checkpoint, from a local directory or the hub cache (pinned revision)."""
    local = Path(ckpt.id).expanduser()
    rel = Path(ckpt.subfolder or "") / filename
    if local.is_dir():
        path = local / rel
        if not path.is_file():
            raise _not_found("file", Checkpoint(str(local), subfolder=str(rel)), FileNotFoundError(path),
                             _offline(spec))
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(ckpt.id, filename, subfolder=ckpt.subfolder, revision=ckpt.revision,
                                    local_files_only=_offline(spec)))
    except Exception as exc:  # hub errors come in many types; all mean "not available"
        raise _not_found(f"file {filename} of", ckpt, exc, _offline(spec)) from exc


def _read_weights(spec: PairSpec, path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix in PICKLE_SUFFIXES:
        if not spec.allow_pickle:
            raise PairError(f"{path.name} is a pickle file, which can run code when loaded; set "
                            "pair.allow_pickle=true if you trust it "
                            "(it is then read with torch.load(weights_only=True))")
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    raise PairError(f"unsupported weight file {path}; expected .safetensors (or .bin/.pt with pair.allow_pickle=true)")


def _lora_summary(model: torch.nn.Module, adapter: str) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and adapter in m.lora_A]
    scalings = sorted({float(m.scaling[adapter]) for m in layers})
    nonzero = any(bool(m.lora_B[adapter].weight.abs().sum() > 0) and bool(m.lora_A[adapter].weight.abs().sum() > 0)
                  for m in layers)
    return {"lora_layers": len(layers), "lora_scalings": scalings, "lora_nonzero": nonzero}


def _check_lora(model, spec: PairSpec, expected_tensors: int, unmatched: list[str]) -> dict[str, Any]:
    info = _lora_summary(model, RL_ADAPTER)
    where = spec.rl.describe()
    if info["lora_layers"] == 0:
        raise PairError(f"the LoRA {where} matches no module of the base {type(model).__name__}: it is for another "
                        "architecture, or its format does not match rl_kind (diffusers_lora vs peft_lora)")
    if unmatched:
        raise PairError(f"the LoRA {where} has {len(unmatched)} weights that match no module of the base "
                        f"{type(model).__name__} (e.g. {unmatched[:3]}); it was trained for another architecture")
    loaded = 2 * info["lora_layers"]
    if expected_tensors and loaded < expected_tensors:
        raise PairError(f"only {loaded} of the {expected_tensors} LoRA weights of {where} found a module; "
                        "the LoRA does not fit this base model")
    if not info["lora_nonzero"] or all(s == 0 for s in info["lora_scalings"]):
        raise PairError(f"the LoRA {where} changes nothing (all up- or down-projections are zero, or its scale is 0); "
                        "check that the file is a trained adapter")
    return info


def load_peft_lora(spec: PairSpec, model: torch.nn.Module) -> dict[str, Any]:
    """Inject a PEFT-format adapter with PEFT, honouring lora_alpha / r from adapter_config.json."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    config_path = _resolve_file(spec, spec.rl, "adapter_config.json")
    peft_type = json.loads(config_path.read_text()).get("peft_type", "LORA")
    if peft_type != "LORA":
        raise PairError(f"the PEFT adapter {spec.rl.describe()} is a {peft_type} adapter; RLG loads LoRA adapters "
                        "(including DoRA and modules_to_save). Merge it into the denoiser and use rl_kind: full")
    config = LoraConfig.from_pretrained(str(config_path.parent))
    config.inference_mode = True
    weight_file = spec.rl.weight_name or "adapter_model.safetensors"
    try:
        weights = _read_weights(spec, _resolve_file(spec, spec.rl, weight_file))
    except PairError:
        if spec.rl.weight_name or not spec.allow_pickle:
            raise
        weights = _read_weights(spec, _resolve_file(spec, spec.rl, "adapter_model.bin"))
    prefix = "base_model.model."
    state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in weights.items()}
    try:
        inject_adapter_in_model(config, model, adapter_name=RL_ADAPTER)
    except ValueError as exc:
        raise PairError(f"the PEFT adapter {spec.rl.describe()} matches no module of {type(model).__name__} "
                        f"(target_modules={sorted(config.target_modules or [])}): {exc}") from exc
    result = set_peft_model_state_dict(model, state, adapter_name=RL_ADAPTER)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k or "modules_to_save" in k]
    n_lora = sum(1 for k in state if ".lora_A." in k or ".lora_B." in k)
    info = _check_lora(model, spec, n_lora, unexpected)
    saved = sorted(config.modules_to_save or [])
    if saved:
        from peft.utils.other import ModulesToSaveWrapper

        wrapped = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                          if isinstance(m, ModulesToSaveWrapper)})
        copies = [k for k in state if "lora_" not in k]
        if not wrapped or not copies:
            why = "no module of the base matches" if not wrapped else "its file holds no weights for them"
            raise PairError(f"the PEFT adapter {spec.rl.describe()} lists modules_to_save={saved} but {why}; "
                            "the adapter does not fit this base model")
        info["modules_to_save"] = wrapped
    info["dora"] = bool(config.use_dora)
    return info


def load_diffusers_lora(spec: PairSpec, pipe, name: str) -> dict[str, Any]:
    """Load a diffusers-format LoRA file with the pipeline class's own converter (old attention-processor
    keys, kohya keys and network alphas are handled there)."""
    model = getattr(pipe, name)
    kw = {"weight_name": spec.rl.weight_name, "local_files_only": _offline(spec), "return_lora_metadata": True}
    if spec.rl.revision:
        kw["revision"] = spec.rl.revision
    if spec.rl.subfolder:
        kw["subfolder"] = spec.rl.subfolder
    if spec.allow_pickle:
        kw["use_safetensors"] = None
    try:
        out = type(pipe).lora_state_dict(spec.rl.id, **kw)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise _safetensors_hint(exc, spec, spec.rl) or _not_found("LoRA", spec.rl, exc, _offline(spec)) from exc
    state, alphas, metadata = (out if len(out) == 3 else (out[0], None, out[1]))
    if any(k.startswith("base_model.model.") for k in state):
        raise PairError(f"{spec.rl.describe()} is a PEFT-format adapter (keys base_model.model.*); "
                        "set rl_kind: peft_lora")
    other = sorted({k.split(".")[0] for k in state if not k.startswith(name + ".")})
    if other and any(k.startswith(name + ".") for k in state):
        raise PairError(f"the LoRA {spec.rl.describe()} also changes {other}; RLG shares text embeddings between "
                        "base and RL, so only denoiser LoRAs are supported")
    if not any(k.startswith(name + ".") for k in state):
        raise PairError(f"the LoRA {spec.rl.describe()} has no weights for the {name} (top-level keys: {other[:5]}); "
                        "it is for another architecture or pipeline")
    expected = sum(1 for k in state if k.startswith(name + ".") and ("lora_A" in k or "lora_B" in k))
    kwargs = {"metadata": metadata} if metadata else {"network_alphas": alphas}
    model.load_lora_adapter(state, prefix=name, adapter_name=RL_ADAPTER, **kwargs)
    return _check_lora(model, spec, expected, [])


# the loaders of rlg.choices.RL_KINDS: (spec, pipe, base denoiser, its attribute name) -> (RL denoiser or None, info)
def rl_full(spec: PairSpec, pipe, base: torch.nn.Module, name: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """rl_kind=full: a whole RL denoiser (:func:`load_full_rl`)."""
    return load_full_rl(spec, base, name), {}


def rl_diffusers_lora(spec: PairSpec, pipe, base: torch.nn.Module, name: str) -> tuple[None, dict[str, Any]]:
    """rl_kind=diffusers_lora: a LoRA file, the adapter ``RL_ADAPTER`` on the base (:func:`load_diffusers_lora`)."""
    return None, load_diffusers_lora(spec, pipe, name)


def rl_peft_lora(spec: PairSpec, pipe, base: torch.nn.Module, name: str) -> tuple[None, dict[str, Any]]:
    """rl_kind=peft_lora: a PEFT adapter folder, the adapter ``RL_ADAPTER`` on the base (:func:`load_peft_lora`)."""
    return None, load_peft_lora(spec, base)


# ---------------------------------------------------------------------------------------------
def load_pair(spec: PairSpec, *, window: StepWindow = StepWindow(), micro_batch: int | None = None) -> LoadedPair:
    """Load the base pipeline, the RL checkpoint, and install an RLGDenoiser in the pipeline.

    ``window`` and ``micro_batch`` are only the denoiser's defaults; ``RLGSampler`` sets them per call
    from ``SamplerSettings`` (so a sweep over them keeps the pair loaded), as does
    ``RLGDenoiser.begin(..., window=, micro_batch=)``.
    The resolved weight identity (``weights_identity``) is in ``pair.info["weights"]``; an unpinned hub
    checkpoint is loaded at the commit resolved for it, with a warning naming the revision to pin.
    """
    from rlg.denoiser import RLGDenoiser

    identity = weights_identity(spec)
    for role, ident in identity.items():
        if ident and ident["source"] == "hub" and ident["resolved_by"] != "pinned":
            log.warning("pair %s: the %s %s is not pinned (revision %s); loading commit %s. For exact reproduction "
                        "set pair.%s.revision=%s", spec.name, role, ident["id"], ident["revision"], ident["commit"],
                        role, ident["commit"] or "<commit>")
    requested = spec
    spec = pin_resolved(spec, identity)
    pipe = load_pipeline(spec)
    name = _denoiser_name(pipe)
    base = getattr(pipe, name).eval()
    rl, info = RL_KINDS.get(spec.rl_kind, error=PairError)(spec, pipe, base, name)
    if rl is not None:
        denoiser = RLGDenoiser(base, rl, window=window, micro_batch=micro_batch)
    else:  # an adapter on the base; loading it may leave the base in train mode
        base.eval()
        denoiser = RLGDenoiser(base, rl_adapter=RL_ADAPTER, window=window, micro_batch=micro_batch)
    install(pipe, name, denoiser)
    pipe.set_progress_bar_config(disable=True)
    info["weights"] = identity
    info["loaded_adapter"] = rl is None
    log.info("loaded pair %s (%s)", spec.name, spec.rl_kind)
    log.debug("pair %s: %s", spec.name, json.dumps(info))  # weight paths and sha256s: in meta.json as well
    return LoadedPair(spec=requested, pipe=pipe, denoiser=denoiser, denoiser_name=name, info=info)


def tiny_spec(family: str, rl_kind: str = "full", root: Path | str | None = None, seed: int = 0) -> PairSpec:
    """The PairSpec of a tiny offline pair from rlg.tiny_pairs (built on first use)."""
    from rlg.tiny_pairs import build_pair

    d = build_pair(family, root=root, seed=seed)
    rl = {"full": Checkpoint(str(d / "rl-full")),
          "diffusers_lora": Checkpoint(str(d / "rl-lora"), weight_name="pytorch_lora_weights.safetensors"),
          "peft_lora": Checkpoint(str(d / "rl-peft"))}[rl_kind]
    return PairSpec(name=f"tiny_{family}_{rl_kind}", base=Checkpoint(str(d / "base")), rl=rl, rl_kind=rl_kind,
                    offline=True)


def place(pair: LoadedPair, device: torch.device, *, offload: str = "none", compile: bool = False,
          vae_tiling: bool = False) -> None:
    """Put a loaded pair on its device with the usual GPU options.

    offload: "none" (everything on ``device``), "model" (each component moves to the GPU only while it
    runs: a pair that does not fit), "sequential" (layer by layer: slowest, least memory).
    compile: torch.compile the denoiser network(s). With a LoRA pair the per-row adapter choice
    changes between calls, which costs recompilations; it pays off for full-weight pairs.
    vae_tiling: decode large images tile by tile. Attention already uses PyTorch SDPA (diffusers' default).
    """
    pipe = pair.pipe
    if offload == "none":
        pipe.to(device)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        raise PairError(f"offload={offload!r}; use none, model or sequential")
    if vae_tiling and getattr(pipe, "vae", None) is not None:
        pipe.vae.enable_tiling()
    if compile:
        import torch

        pair.denoiser.base = torch.compile(pair.denoiser.base).eval()
        if pair.denoiser.rl is not None:
            pair.denoiser.rl = torch.compile(pair.denoiser.rl).eval()


def from_pipeline(pipe, rl: Any = None, *, rl_adapter: str | None = None, weight_name: str | None = None,
                  name: str = "pipeline") -> LoadedPair:
    """Make an already-loaded diffusers pipeline an RLG pair, in place (the notebook entry point).

    Args:
        pipe: a stock pipeline with a ``unet`` or ``transformer`` (SD1.5, SDXL, SD3, FLUX, inpainting, ...).
        rl: the RL model: a denoiser module of the same class and config as the pipeline's (a full-weight
            fine-tune, e.g. ``UNet2DConditionModel.from_pretrained("mhdang/dpo-sd1.5-text2image-v1",
            subfolder="unet")``), or a path / hub id of a LoRA: a PEFT adapter directory
            (adapter_config.json), a diffusers LoRA file, or a hub id (a PEFT adapter repo, or with
            ``weight_name`` a diffusers LoRA file in it).
        rl_adapter: instead of ``rl``, the name of a LoRA adapter already loaded on the pipeline's denoiser
            (e.g. ``pipe.load_lora_weights(..., adapter_name="rl")``).
    Returns a LoadedPair whose ``pipe`` is ``pipe`` with an RLGDenoiser installed; ``pair.unwrap()`` undoes it.
    Raises PairError for an RL model that does not fit the pipeline.
    """
    import torch

    from rlg.denoiser import RLGDenoiser

    dname = _denoiser_name(pipe)
    base = getattr(pipe, dname)
    if isinstance(base, RLGDenoiser):
        raise PairError("this pipeline already carries an RLGDenoiser; call pair.unwrap() first or reuse that pair")
    base.eval()
    where = getattr(pipe, "name_or_path", None) or getattr(getattr(pipe, "config", None), "_name_or_path", None)
    spec = PairSpec(name=name, base=Checkpoint(str(where or "<in-memory pipeline>")), rl=Checkpoint("<in-memory>"))
    if (rl is None) == (rl_adapter is None):
        raise PairError("from_pipeline needs the RL model: rl=<denoiser module or LoRA path>, or rl_adapter=<name>")
    layers = tuner_layers(base)
    if any(getattr(m, "disable_adapters", False) for m in layers):
        raise PairError("the pipeline's LoRA adapters are disabled (pipe.disable_lora()), which would switch the RL "
                        "adapter off too; enable them (pipe.enable_lora()) or delete them before wrapping")
    user = [a for a in active_adapters(base) if a != rl_adapter]  # the user's own adapters: part of the base model
    info: dict[str, Any] = {"user_adapters": user}
    if rl_adapter is not None:
        spec.rl_kind = "peft_lora"
        if not any(rl_adapter in _adapter_names(m) for m in layers):
            raise PairError(f"the pipeline's denoiser has no adapter named {rl_adapter!r} (it has "
                            f"{sorted(set().union(*map(_adapter_names, layers)))}); load it first")
        denoiser = RLGDenoiser(base, rl_adapter=rl_adapter)
    elif isinstance(rl, torch.nn.Module):
        check_compatible(base, rl, f"given to from_pipeline ({type(rl).__name__})")
        check_same_changes(base, rl)
        rl = rl.to(device=base.device, dtype=base.dtype).eval()
        denoiser = RLGDenoiser(base, rl)
    else:
        if any(RL_ADAPTER in _adapter_names(m) for m in layers):
            raise PairError(f"the pipeline's denoiser already has an adapter named {RL_ADAPTER!r}: use it with "
                            f"from_pipeline(pipe, rl_adapter={RL_ADAPTER!r}), or delete it (pipe.delete_adapters) first")
        path = Path(str(rl)).expanduser()
        if path.is_file():  # a diffusers LoRA file
            spec.rl, is_peft = Checkpoint(str(path.parent), weight_name=path.name), False
        elif path.is_dir():
            is_peft = (path / "adapter_config.json").is_file()
            spec.rl = Checkpoint(str(path), weight_name=weight_name if not is_peft else None)
        else:  # a hub id: a PEFT adapter repo, or a diffusers LoRA file named by weight_name
            spec.rl, is_peft = Checkpoint(str(rl), weight_name=weight_name), weight_name is None
        spec.rl_kind = "peft_lora" if is_peft else "diffusers_lora"
        info.update(load_peft_lora(spec, base) if is_peft else load_diffusers_lora(spec, pipe, dname))
        info["loaded_adapter"] = True
        base.eval()
        if user:  # loading made the RL adapter the only active one: the user's stay active (the base model)
            if any(not hasattr(m, "lora_A") for m in tuner_layers(base)):
                delete_adapter(base, RL_ADAPTER)
                raise PairError("an RL adapter with modules_to_save cannot be combined with the pipeline's own "
                                f"adapters {user}; fuse yours first (pipe.fuse_lora(); pipe.unload_lora_weights())")
            set_active_adapters(base, user + [RL_ADAPTER])
        denoiser = RLGDenoiser(base, rl_adapter=RL_ADAPTER)
    install(pipe, dname, denoiser)
    return LoadedPair(spec=spec, pipe=pipe, denoiser=denoiser, denoiser_name=dname, info=info)
