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
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from rlg.denoiser import RLGDenoiser
from rlg.guidance import StepWindow

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
    rl_kind: Literal["full", "diffusers_lora", "peft_lora"] = "full"
    pipeline_class: str | None = None  # e.g. StableDiffusionInpaintPipeline; default: from model_index.json
    vae: Checkpoint | None = None  # e.g. madebyollin/sdxl-vae-fp16-fix for SDXL in fp16
    dtype: str = "float32"
    allow_pickle: bool = False  # .bin/.pt weights (DDPO) only when the user opts in
    offline: bool = False  # or HF_HUB_OFFLINE=1

    def identity(self) -> dict[str, Any]:
        """What about the pair determines an image (part of every content key)."""
        return {"name": self.name, "base": asdict(self.base), "rl": asdict(self.rl), "rl_kind": self.rl_kind,
                "pipeline_class": self.pipeline_class, "vae": asdict(self.vae) if self.vae else None,
                "dtype": self.dtype}


@dataclass
class LoadedPair:
    spec: PairSpec
    pipe: Any  # a diffusers pipeline whose unet/transformer is `denoiser`
    denoiser: RLGDenoiser
    denoiser_name: str  # "unet" or "transformer"
    info: dict[str, Any] = field(default_factory=dict)  # what was loaded (LoRA layers, scaling, ...)


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise PairError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def _offline(spec: PairSpec) -> bool:
    return spec.offline or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


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
        if "safety_checker" in config:  # research images are scored, not filtered (black images would bias every metric)
            kw.update(safety_checker=None, requires_safety_checker=False)
        pipe = cls.from_pretrained(spec.base.id, dtype=dtype, **kw)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise _safetensors_hint(exc, spec, spec.base) or _not_found("base pipeline", spec.base, exc, _offline(spec)) from exc
    return pipe


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
            raise _not_found("file", Checkpoint(str(local), subfolder=str(rel)), FileNotFoundError(path), _offline(spec))
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
                            "pair.allow_pickle=true if you trust it (it is then read with torch.load(weights_only=True))")
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
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    return _check_lora(model, spec, len(state), unexpected)


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
        raise PairError(f"{spec.rl.describe()} is a PEFT-format adapter (keys base_model.model.*); set rl_kind: peft_lora")
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


# ---------------------------------------------------------------------------------------------
def load_pair(spec: PairSpec, *, window: StepWindow = StepWindow(), micro_batch: int | None = None) -> LoadedPair:
    """Load the base pipeline, the RL checkpoint, and install an RLGDenoiser in the pipeline.

    ``window`` and ``micro_batch`` are only the denoiser's defaults; ``RLGSampler`` sets them per call
    from ``SamplerSettings`` (so a sweep over them keeps the pair loaded), as does
    ``RLGDenoiser.begin(..., window=, micro_batch=)``.
    """
    pipe = load_pipeline(spec)
    name = _denoiser_name(pipe)
    base = getattr(pipe, name).eval()
    if spec.rl_kind == "full":
        rl = load_full_rl(spec, base, name)
        denoiser = RLGDenoiser(base, rl, window=window, micro_batch=micro_batch)
        info: dict[str, Any] = {}
    elif spec.rl_kind in ("diffusers_lora", "peft_lora"):
        info = load_peft_lora(spec, base) if spec.rl_kind == "peft_lora" else load_diffusers_lora(spec, pipe, name)
        base.eval()
        denoiser = RLGDenoiser(base, rl_adapter=RL_ADAPTER, window=window, micro_batch=micro_batch)
    else:
        raise PairError(f"unknown rl_kind {spec.rl_kind!r}; use full, diffusers_lora or peft_lora")
    setattr(pipe, name, denoiser)
    pipe.set_progress_bar_config(disable=True)
    log.info("loaded pair %s (%s) %s", spec.name, spec.rl_kind, json.dumps(info))
    return LoadedPair(spec=spec, pipe=pipe, denoiser=denoiser, denoiser_name=name, info=info)


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
        pair.denoiser.base = torch.compile(pair.denoiser.base).eval()
        if pair.denoiser.rl is not None:
            pair.denoiser.rl = torch.compile(pair.denoiser.rl).eval()
