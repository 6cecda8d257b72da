"""The paper's base models at their real sizes, from the published configurations shipped in benchmarks/real_configs.

No weights are downloaded: each component is built from its config.json (sources: benchmarks/real_configs/SOURCES.md)
with the real diffusers / transformers class, on the meta device (no memory: parameter counts, key names,
adapter mapping) or with random weights (a real-shapes run: benchmarks/real_shapes.py).

    MODELS                          "sd15", "sdxl", "sd35m", "flux"
    real_config(model, component)   the shipped config dict
    build(model, component, ...)    the component (meta by default; ``random=True``: random weights, real memory)
    real_pipeline(model, ...)       a stock diffusers pipeline at real size with random weights
    UPSTREAM_ADAPTERS               each RL checkpoint kind as upstream saves it (rank, alpha, target modules)
    save_upstream_adapter(...)      write one in the upstream layout (LoRA kinds), for rlg.pairs' loaders

torch, diffusers and transformers are imported where a model is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CONFIG_ROOT = Path(__file__).parent / "real_configs"
MODELS = ("sd15", "sdxl", "sd35m", "flux")
PIPELINES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
             "sd35m": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}
DENOISER = {"sd15": "unet", "sdxl": "unet", "sd35m": "transformer", "flux": "transformer"}
# pair name prefix (rlg/conf/pair) -> the base model it loads
PAIR_MODELS = {"sd15": "sd15", "sdxl": "sdxl", "sd35m": "sd35m", "flux": "flux"}


@dataclass(frozen=True)
class Published:
    """A published parameter count: ``count`` within ``rel_tol``, from ``source``."""

    count: float
    rel_tol: float
    source: str
    with_buffers: bool = False  # count the persistent buffers too (SD3's 384x384 position table is one)


# (model, component) -> the published figure the meta-device build is checked against (tests/test_real_shapes.py)
PUBLISHED = {
    ("sd15", "unet"): Published(860e6, 0.01, "Rombach et al. 2022 / SD v1 model card: 860M-parameter UNet"),
    ("sd15", "text_encoder"): Published(123e6, 0.01, "CLIP ViT-L/14 text encoder, 123M (SD v1 model card)"),
    ("sd15", "vae"): Published(83.7e6, 0.01, "BK-SDM (Kim et al. 2023) Table 1: SD VAE 84M"),
    ("sdxl", "unet"): Published(2.6e9, 0.02, "Podell et al. 2023 (SDXL) Table 1: UNet 2.6B"),
    ("sdxl", "text_encoder"): Published(123e6, 0.01, "SDXL paper: CLIP ViT-L 123M"),
    ("sdxl", "text_encoder_2"): Published(695e6, 0.01, "SDXL paper: OpenCLIP ViT-bigG 694M (817M text total)"),
    ("sdxl", "vae"): Published(83.7e6, 0.01, "same architecture as the SD VAE (SDXL paper, section 2.4)"),
    ("sdxl", "vae_fp16_fix"): Published(83.7e6, 0.01, "madebyollin/sdxl-vae-fp16-fix model card: the SDXL VAE "
                                        "fine-tuned, same architecture"),
    ("sd35m", "transformer"): Published(2.5e9, 0.02, "stabilityai/stable-diffusion-3.5-medium model card: 2.5B "
                                        "(2.243B parameters + the 384x384x1536 position table, a buffer)",
                                        with_buffers=True),
    ("sd35m", "text_encoder"): Published(124e6, 0.01, "CLIP ViT-L/14 text encoder with projection"),
    ("sd35m", "text_encoder_2"): Published(695e6, 0.01, "OpenCLIP ViT-bigG/14 text encoder (as SDXL's)"),
    ("sd35m", "text_encoder_3"): Published(4.76e9, 0.01, "T5 v1.1 XXL encoder, 4.76B (Esser et al. 2024, SD3)"),
    ("sd35m", "vae"): Published(83.8e6, 0.01, "SD3 VAE: the SD VAE with 16 latent channels"),
    ("flux", "transformer"): Published(12e9, 0.02, "black-forest-labs/FLUX.1-dev model card: 12B"),
    ("flux", "text_encoder"): Published(123e6, 0.01, "CLIP ViT-L/14 text encoder, 123M"),
    ("flux", "text_encoder_2"): Published(4.76e9, 0.01, "T5 v1.1 XXL encoder, 4.76B"),
    ("flux", "vae"): Published(83.8e6, 0.01, "FLUX AE: ch 128, ch_mult 1-2-4-4, z 16 (src/flux/util.py)"),
}


def components(model: str) -> list[str]:
    """The shipped components of ``model`` (folder names under benchmarks/real_configs/<model>)."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {MODELS}")
    return sorted(p.name for p in (CONFIG_ROOT / model).iterdir() if p.is_dir())


def real_config(model: str, component: str) -> dict[str, Any]:
    """The shipped configuration of one component (config.json, or scheduler_config.json for a scheduler)."""
    folder = CONFIG_ROOT / model / component
    if component not in components(model):
        raise ValueError(f"{model} has no component {component!r}; it has {components(model)}")
    name = "scheduler_config.json" if (folder / "scheduler_config.json").is_file() else "config.json"
    return json.loads((folder / name).read_text())


def _transformers_model(cfg: dict[str, Any]):
    import transformers

    kw = {k: v for k, v in cfg.items() if k != "architectures"}
    config = (transformers.T5Config if cfg["model_type"] == "t5" else transformers.CLIPTextConfig)(**kw)
    return getattr(transformers, cfg["architectures"][0])(config)


def build(model: str, component: str, *, random: bool = False, dtype: torch.dtype | None = None, seed: int = 0):
    """One component of ``model`` at its real size.

    random=False: parameters and buffers on the meta device (no memory; counts, names and shapes are real).
    random=True: buffers computed as the class does (position ids, SD3's position table), random parameters in
    ``dtype`` (default float32): N(0, 0.02) for matrices, 1 for norm weights, 0 for other vectors; enough for
    timing and memory, not for images. A scheduler is returned as is.
    """
    import torch
    from accelerate import init_empty_weights

    cfg = real_config(model, component)
    if "_class_name" in cfg and cfg["_class_name"].endswith("Scheduler"):
        import diffusers

        return getattr(diffusers, cfg["_class_name"]).from_config(cfg)
    with init_empty_weights(include_buffers=not random):
        if "_class_name" in cfg:
            import diffusers

            module = getattr(diffusers, cfg["_class_name"]).from_config(cfg)
        else:
            module = _transformers_model(cfg)
    if dtype is not None:
        module.to(dtype)  # meta parameters (and buffers); integer buffers keep their dtype
    if random:
        materialize(module, dtype or torch.float32, seed)
    return module.eval()


def materialize(module: torch.nn.Module, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """Give every meta parameter of ``module`` random CPU values in ``dtype``, in place (see :func:`build`)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for mod_name, mod in module.named_modules():
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.device.type != "meta":
                continue
            t = torch.empty(p.shape, dtype=dtype)
            if p.ndim >= 2:
                t.normal_(0.0, 0.02, generator=gen)
            elif name == "weight" and "norm" in (mod_name.rsplit(".", 1)[-1] + type(mod).__name__).lower():
                t.fill_(1.0)
            else:
                t.zero_()
            setattr(mod, name, torch.nn.Parameter(t, requires_grad=False))
    return module


def count(module: torch.nn.Module, with_buffers: bool = False) -> int:
    """Parameters of ``module`` (plus its persistent buffers with ``with_buffers``)."""
    n = sum(p.numel() for p in module.parameters())
    if with_buffers:
        keys = set(module.state_dict().keys())
        n += sum(b.numel() for name, b in module.named_buffers() if name in keys)
    return n


def clip_tokenizer_full():
    """The full CLIP BPE tokenizer (49408 tokens), built offline from open_clip's vocabulary file."""
    from rlg.tiny_pairs import ALL_MERGES, clip_tokenizer

    return clip_tokenizer(num_merges=ALL_MERGES)


def real_pipeline(model: str, *, dtype: torch.dtype, skip: tuple[str, ...] = (), seed: int = 0,
                  vae: str = "vae"):
    """A stock diffusers pipeline of ``model`` at real size, random weights in ``dtype`` on the CPU.

    ``skip``: components passed as None, the documented way to leave one out (SD3 without T5:
    ``("text_encoder_3", "tokenizer_3")``). ``vae``: the VAE folder (``vae_fp16_fix`` for SDXL in fp16).
    Tokenizers are the real CLIP tokenizer (built offline); a T5 encoder that is not skipped gets the tiny
    pairs' T5 tokenizer (a real Unigram tokenizer over a smaller vocabulary: its ids stay in range).
    FLUX.1-dev does not fit a 24 GB machine in bf16 (12B + 4.8B); use the meta device for it.
    """
    import diffusers

    from rlg.tiny_pairs import t5_tokenizer

    kw: dict[str, Any] = {}
    for i, comp in enumerate(components(model)):
        if comp.startswith("vae") and comp != vae:
            continue
        key = "vae" if comp.startswith("vae") else comp
        if key in skip:
            kw[key] = None
            continue
        kw[key] = build(model, comp, random=comp != "scheduler", dtype=dtype, seed=seed + i)
        if comp.startswith("text_encoder"):
            tok = comp.replace("text_encoder", "tokenizer")
            if tok in skip:
                kw[tok] = None
            else:
                kw[tok] = t5_tokenizer() if "T5" in type(kw[key]).__name__ else clip_tokenizer_full()
    for tok in skip:
        kw.setdefault(tok, None)
    cls = getattr(diffusers, PIPELINES[model])
    if model == "sd15":
        kw.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return cls(**kw)


# ---------------------------------------------------------------------------------------------
# The RL checkpoint kinds as upstream saves them
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UpstreamAdapter:
    """How one RL method saves its checkpoint (rank, alpha and target modules from its training code)."""

    model: str
    rl_kind: str  # rlg.choices.RL_KINDS
    source: str
    r: int | None = None
    lora_alpha: int | None = None
    target_modules: tuple[str, ...] = ()
    weight_name: str | None = None  # the file name the published checkpoint uses

    def lora_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.lora_alpha, init_lora_weights="gaussian",
                          target_modules=list(self.target_modules))


_SPO_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
_FLOW_GRPO_TARGETS = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                      "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v")
_SPO = "RockeyCoss/SPO@27a86428edcff3b25dcce8001be94a7a01608f58:spo_training_and_inference/train_scripts/train_spo.py"
UPSTREAM_ADAPTERS = {
    "sd15_dpo": UpstreamAdapter("sd15", "full", "Diffusion-DPO: a full UNet (unet/ subfolder), same config as SD1.5"),
    "sd15_ddpo": UpstreamAdapter("sd15", "full", "DDPO (kvablack/ddpo-*): full pipelines, UNet as pickle .bin"),
    "sd15_spo_lora": UpstreamAdapter("sd15", "diffusers_lora", _SPO + " (LoraConfig, save_lora_weights); r=4 "
                                     "alpha=r from FACTS section 2", r=4, lora_alpha=4, target_modules=_SPO_TARGETS,
                                     weight_name="spo-sd-v1-5_4k-p_10ep_lora_diffusers.safetensors"),
    "sdxl_dpo": UpstreamAdapter("sdxl", "full", "Diffusion-DPO: a full SDXL UNet, same config as SDXL base"),
    "sdxl_spo_lora": UpstreamAdapter("sdxl", "diffusers_lora", _SPO.replace("train_spo.py", "train_spo_sdxl.py") +
                                     "; r=64 alpha=r from FACTS section 2", r=64, lora_alpha=64,
                                     target_modules=_SPO_TARGETS,
                                     weight_name="spo_sdxl_10ep_4k-data_lora_diffusers.safetensors"),
    "sd35m_flowgrpo": UpstreamAdapter("sd35m", "peft_lora", "yifan123/flow_grpo@74db69191de9a0a54869c9c3341ce4b54db7"
                                      "005f:scripts/train_sd3.py (LoraConfig r=32, lora_alpha=64; "
                                      "PeftModel.save_pretrained)", r=32, lora_alpha=64,
                                      target_modules=_FLOW_GRPO_TARGETS),
    "flux_dancegrpo": UpstreamAdapter("flux", "full", "DanceGRPO: a full FLUX.1-dev transformer"),
    "flux_mixgrpo": UpstreamAdapter("flux", "full", "MixGRPO: a full FLUX.1-dev transformer"),
}


def adapter_for_pair(pair_name: str, rl_kind: str) -> UpstreamAdapter:
    """The upstream checkpoint kind of a shipped pair (rlg/conf/pair/<name>.yaml): its base model from the name's
    prefix; a full-weight kind is a denoiser of the base's own config, a LoRA kind the one entry of
    ``UPSTREAM_ADAPTERS`` for that model and kind. ValueError when none (or several) fit."""
    model = next((m for p, m in PAIR_MODELS.items() if pair_name.startswith(p)), None)
    if model is None:
        raise ValueError(f"pair {pair_name!r} loads none of the real models {MODELS} (its name has no such prefix)")
    if rl_kind == "full":
        return UpstreamAdapter(model, "full", "a full denoiser of the base model's own configuration")
    found = [a for a in UPSTREAM_ADAPTERS.values() if a.model == model and a.rl_kind == rl_kind]
    if len(found) != 1:
        raise ValueError(f"no single upstream {rl_kind} checkpoint is known for {model} (pair {pair_name!r})")
    return found[0]


def random_lora_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Fill every LoRA A and B of ``model`` with small random values (PEFT starts B at zero: an adapter that
    changes nothing, which rlg.pairs refuses)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(0.01 * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype))


def empty_weights(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every meta parameter replaced, in place, by a zero of its shape and dtype that takes no
    memory (one element broadcast to the shape): PEFT and diffusers can inject and load an adapter into a
    2.6B UNet with only the adapter's own memory. For loading tests, not for a forward pass."""
    import torch

    for mod in module.modules():
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.device.type == "meta":
                zero = torch.zeros((1,) * max(p.ndim, 1), dtype=p.dtype).expand(p.shape) if p.ndim else \
                    torch.zeros((), dtype=p.dtype)
                setattr(mod, name, torch.nn.Parameter(zero, requires_grad=False))
    return module


def save_upstream_adapter(adapter: UpstreamAdapter, denoiser: torch.nn.Module, out: Path, seed: int = 0) -> Path:
    """Save a random LoRA of kind ``adapter`` for ``denoiser`` (real CPU storage: see :func:`empty_weights`)
    in the upstream layout, and return the directory:

      diffusers_lora  <out>/<weight_name>: get_peft_model_state_dict -> convert_state_dict_to_diffusers ->
                      <Pipeline>.save_lora_weights (SPO's save_model_hook)
      peft_lora       <out>/adapter_config.json + adapter_model.safetensors: get_peft_model(...).save_pretrained
                      (Flow-GRPO's save_ckpt)
    ``denoiser`` is adapted in place (pass one built for this; :func:`empty_weights` keeps it free).
    Raises ValueError for a full-weight kind.
    """
    import diffusers
    from peft import get_peft_model, get_peft_model_state_dict
    from diffusers.utils import convert_state_dict_to_diffusers

    out = Path(out)
    model = denoiser
    if adapter.rl_kind == "peft_lora":
        peft_model = get_peft_model(model, adapter.lora_config())
        random_lora_weights(peft_model, seed)
        peft_model.save_pretrained(str(out))
        return out
    if adapter.rl_kind == "diffusers_lora":
        model.add_adapter(adapter.lora_config())
        random_lora_weights(model, seed)
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
        cls = getattr(diffusers, PIPELINES[adapter.model])
        cls.save_lora_weights(str(out), unet_lora_layers=layers, weight_name=adapter.weight_name)
        return out
    raise ValueError(f"{adapter.rl_kind} checkpoints are whole denoisers; there is no adapter file to save")


__all__ = ["MODELS", "PIPELINES", "DENOISER", "PUBLISHED", "Published", "components", "real_config", "build",
           "materialize", "count", "real_pipeline", "clip_tokenizer_full", "UpstreamAdapter", "UPSTREAM_ADAPTERS",
           "adapter_for_pair", "random_lora_weights", "empty_weights", "save_upstream_adapter"]
