"""Tiny offline (base, RL) pairs built with the real diffusers / transformers classes.

Nothing here downloads: the CLIP tokenizer is a real byte-level BPE tokenizer built from the
vocabulary file open_clip ships, the T5 tokenizer a real Unigram tokenizer over word pieces of that
vocabulary, and every model is randomly initialised from a seed. Each pair is saved in the hub
layout the real checkpoints use, so tests and the offline default experiment load it through the
same code path (``rlg.pairs``) as a real pair:

    <root>/<family>/base/            a full diffusers pipeline (model_index.json, unet|transformer/, ...)
    <root>/<family>/rl-full/unet/    a full RL denoiser in a subfolder (like mhdang/dpo-sd1.5-text2image-v1)
    <root>/<family>/rl-lora/         pytorch_lora_weights.safetensors, diffusers format (like the SPO LoRAs)
    <root>/<family>/rl-peft/         adapter_config.json + adapter_model.safetensors, PEFT format with
                                     lora_alpha != r (like the Flow-GRPO adapters)
"""

from __future__ import annotations

import copy
import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

import torch

from rlg.extras import require

FAMILIES = ("sd", "sdxl", "sd3", "flux", "sd_inpaint", "sdxl_inpaint", "ddim")
FIXTURE_VERSION = "2"  # bump when a builder changes, so cached fixtures are rebuilt (2: real structure, issue 35)
NUM_MERGES = 2000  # BPE merges kept from open_clip's vocabulary: a small but real tokenizer
ALL_MERGES = 49152 - 256 - 2  # the full CLIP tokenizer (49408 tokens)
LORA_RANK, LORA_ALPHA = 4, 8  # alpha != r, so a loader that ignores alpha is caught


def default_root() -> Path:
    return Path(os.environ.get("RLG_FIXTURES", Path.home() / ".cache" / "rlg-bench" / "fixtures"))


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2 / CLIP byte-to-printable-character table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=None)
def clip_bpe(num_merges: int = NUM_MERGES) -> tuple[dict[str, int], list[str]]:
    """Vocabulary and merges of open_clip's CLIP tokenizer, truncated to ``num_merges`` merges
    (the construction open_clip's SimpleTokenizer uses, so ids agree with the full tokenizer for
    the tokens kept)."""
    open_clip = require("open_clip", purpose="the tiny offline pairs (CLIP vocabulary file)")

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = lines[1 : 1 + num_merges]
    vocab = list(_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def clip_tokenizer(max_length: int = 77, num_merges: int = NUM_MERGES):
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe(num_merges)
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges])
    tok.model_max_length = max_length
    return tok


def t5_tokenizer(max_length: int = 77):
    from transformers import T5TokenizerFast

    vocab, _ = clip_bpe()
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    seen = set()
    for tok in vocab:  # word pieces of the CLIP vocabulary, SentencePiece style
        if tok.startswith("<|"):
            continue
        piece = "▁" + tok[:-4] if tok.endswith("</w>") else tok
        if piece not in seen and piece.isprintable():
            seen.add(piece)
            pieces.append((piece, -float(len(pieces)) / 1000))
    tok = T5TokenizerFast(vocab=pieces, extra_ids=0)
    tok.model_max_length = max_length
    return tok


# ---------------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------------
def _clip_text(tok, hidden=32, projection: int | None = None, seed=0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=tok.model_max_length,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         projection_dim=projection or hidden)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _t5_text(tok, d_model=32, seed=0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=0)
    return T5EncoderModel(cfg).eval()


def _vae(latent_channels=4, flow=False, seed=0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    extra = (dict(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
             if flow else {})
    return AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=32, **extra).eval()


def _sd_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def _unet(cross_dim=32, in_channels=4, sdxl=False, seed=0):
    """SD1.5's block layout (attention at the high resolutions, none at the lowest), or with ``sdxl`` SDXL's:
    no attention at the highest resolution, more transformer layers deeper down, linear projections, and the
    micro-conditioning (``text_time``: 6 time ids + the pooled text embedding); benchmarks/real_configs/*/unet."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    blocks = dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    if sdxl:
        blocks = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                      addition_embed_type="text_time", addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=6 * 8 + 32, use_linear_projection=True)
    return UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=in_channels, out_channels=4,
        cross_attention_dim=cross_dim, attention_head_dim=4, norm_num_groups=8, **blocks,
    ).eval()


def build_base(family: str, seed: int = 0):
    """A tiny stock pipeline of ``family`` (see FAMILIES), randomly initialised from ``seed``."""
    import diffusers as D

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {FAMILIES}")
    if family in ("sd", "sd_inpaint"):
        tok = clip_tokenizer()
        cls = D.StableDiffusionInpaintPipeline if family == "sd_inpaint" else D.StableDiffusionPipeline
        return cls(vae=_vae(seed=seed), text_encoder=_clip_text(tok, seed=seed), tokenizer=tok,
                   unet=_unet(in_channels=9 if family == "sd_inpaint" else 4, seed=seed),
                   scheduler=_sd_scheduler(), safety_checker=None, feature_extractor=None,
                   requires_safety_checker=False)
    if family in ("sdxl", "sdxl_inpaint"):
        tok = clip_tokenizer()
        cls = D.StableDiffusionXLInpaintPipeline if family == "sdxl_inpaint" else D.StableDiffusionXLPipeline
        return cls(vae=_vae(seed=seed), text_encoder=_clip_text(tok, seed=seed), tokenizer=tok,
                   text_encoder_2=_clip_text(tok, projection=32, seed=seed + 1), tokenizer_2=clip_tokenizer(),
                   unet=_unet(cross_dim=64, in_channels=9 if family == "sdxl_inpaint" else 4, sdxl=True, seed=seed),
                   scheduler=D.EulerDiscreteScheduler.from_config(_sd_scheduler().config))
    if family == "sd3":
        tok = clip_tokenizer()
        torch.manual_seed(seed)
        # SD3.5-Medium's structure (benchmarks/real_configs/sd35m): dual attention in the first blocks (13 of 24 there,
        # 1 of 2 here), RMS qk-norm, a position table larger than the default size, cropped per image
        transformer = D.SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
            num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64,
            dual_attention_layers=(0,), qk_norm="rms_norm", pos_embed_max_size=24,
        ).eval()
        return D.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=D.FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=_vae(flow=True, seed=seed),
            text_encoder=_clip_text(tok, projection=32, seed=seed), tokenizer=tok,
            text_encoder_2=_clip_text(tok, projection=32, seed=seed + 1), tokenizer_2=clip_tokenizer(),
            text_encoder_3=_t5_text(t5_tokenizer(), d_model=64, seed=seed), tokenizer_3=t5_tokenizer(),
        )
    if family == "flux":
        tok = clip_tokenizer()
        torch.manual_seed(seed)
        # FLUX.1-dev's block mix (benchmarks/real_configs/flux): twice as many single-stream as double-stream blocks
        transformer = D.FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=[4, 4, 8],
        ).eval()
        return D.FluxPipeline(
            transformer=transformer, scheduler=D.FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=_vae(flow=True, seed=seed), text_encoder=_clip_text(tok, seed=seed), tokenizer=tok,
            text_encoder_2=_t5_text(t5_tokenizer(), d_model=32, seed=seed), tokenizer_2=t5_tokenizer(),
        )
    # family == "ddim": unconditional UNet2DModel
    torch.manual_seed(seed)
    unet = D.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                         layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                         up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    return D.DDIMPipeline(unet=unet, scheduler=D.DDIMScheduler(num_train_timesteps=1000))


def denoiser_name(pipe) -> str:
    return "unet" if hasattr(pipe, "unet") and pipe.unet is not None else "transformer"


def perturbed_copy(denoiser: torch.nn.Module, seed: int = 1, strength: float = 0.05) -> torch.nn.Module:
    """The 'RL fine-tuned' full-weight denoiser: a deterministic perturbation of every weight."""
    rl = copy.deepcopy(denoiser)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in rl.parameters():
            p.add_(strength * (p.std() if p.numel() > 1 else 1.0) * torch.randn(p.shape, generator=gen))
    return rl


def lora_targets(family: str) -> list[str]:
    if family == "flux":
        return ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "proj_mlp"]
    if family == "sd3":  # the Flow-GRPO target modules
        return ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v"]
    return ["to_q", "to_k", "to_v", "to_out.0"]


def random_lora(denoiser: torch.nn.Module, family: str, seed: int = 2, r: int = LORA_RANK, alpha: int = LORA_ALPHA):
    """Inject a PEFT LoRA with random (non-zero) A and B into a copy; returns (model, LoraConfig)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=lora_targets(family), init_lora_weights=True)
    model = inject_adapter_in_model(config, copy.deepcopy(denoiser), adapter_name="default")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:  # B starts at zero in PEFT; make the adapter do something
                p.copy_(0.3 * torch.randn(p.shape, generator=gen) / (p.shape[-1] ** 0.5))
    return model, config


def build_pair(family: str, root: Path | str | None = None, seed: int = 0) -> Path:
    """Build (once) and save the tiny pair of ``family``; returns its directory."""
    root = Path(root) if root is not None else default_root()
    out = root / f"{family}-s{seed}-v{FIXTURE_VERSION}"
    if (out / "DONE").exists():
        return out
    import shutil

    from rlg.files import exclusive

    # Parallel test workers (pytest-xdist) and ranks share the cache: one builds under a lock, into a scratch
    # directory renamed into place, so nobody reads a half-written pair.
    root.mkdir(parents=True, exist_ok=True)
    with exclusive(root / f".{out.name}.lock"):
        if (out / "DONE").exists():
            return out
        scratch = root / f".{out.name}.building-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        _build_pair_into(scratch, family, seed)
        shutil.rmtree(out, ignore_errors=True)  # a partial build left by an older, unlocked version
        os.rename(scratch, out)
    return out


def _build_pair_into(out: Path, family: str, seed: int) -> None:
    from peft import get_peft_model, get_peft_model_state_dict

    pipe = build_base(family, seed=seed)
    name = denoiser_name(pipe)
    denoiser = getattr(pipe, name)
    pipe.save_pretrained(out / "base")
    perturbed_copy(denoiser, seed=seed + 1).save_pretrained(out / "rl-full" / name)

    if family != "ddim":
        # diffusers-format LoRA with alpha recorded in the file's adapter metadata
        lora, config = random_lora(denoiser, family, seed=seed + 2)
        layers = get_peft_model_state_dict(lora, adapter_name="default")
        meta = {k: v for k, v in config.to_dict().items() if k in ("r", "lora_alpha", "target_modules")}
        meta["target_modules"] = sorted(meta["target_modules"])
        type(pipe).save_lora_weights(out / "rl-lora", **{f"{name}_lora_layers": layers,
                                                         f"{name}_lora_adapter_metadata": meta})
        # PEFT-format adapter, saved the way Flow-GRPO saves its PeftModel
        peft_model = get_peft_model(copy.deepcopy(denoiser), copy.deepcopy(config))
        src = dict(random_lora(denoiser, family, seed=seed + 3)[0].named_parameters())
        with torch.no_grad():
            for pname, p in peft_model.base_model.model.named_parameters():
                if "lora_" in pname:
                    p.copy_(src[pname])
        peft_model.save_pretrained(out / "rl-peft")
    (out / "DONE").write_text(json.dumps({"family": family, "seed": seed, "version": FIXTURE_VERSION}))
