"""The paper's base models at their real sizes (benchmarks/real_configs) and the RL checkpoint kinds as upstream
saves them.

Everything here is built on the meta device or with zero-memory weights (benchmarks.real_models.empty_weights):
parameter counts against the published figures, and every LoRA weight of an upstream-layout adapter finding its module
through rlg.pairs' own loaders. The real-shapes runs with random weights are a benchmark (benchmarks/real_shapes.py).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from benchmarks import real_models as R
from rlg.pairs import Checkpoint, PairError, PairSpec, check_compatible, load_diffusers_lora, load_peft_lora


@pytest.mark.parametrize("key", sorted(R.PUBLISHED), ids=lambda k: "/".join(k))
def test_meta_build_matches_the_published_parameter_count(key):
    model, component = key
    pub = R.PUBLISHED[key]
    module = R.build(model, component)
    assert all(p.device.type == "meta" for p in module.parameters())
    n = R.count(module, with_buffers=pub.with_buffers)
    assert abs(n - pub.count) <= pub.rel_tol * pub.count, f"{key}: {n:,} vs published {pub.count:,.0f} ({pub.source})"


def test_every_shipped_component_is_checked_and_builds_its_real_class():
    shipped = {(m, c) for m in R.MODELS for c in R.components(m) if c != "scheduler"}
    assert shipped == set(R.PUBLISHED)
    classes = {(m, c): type(R.build(m, c)).__name__ for m, c in [("sd35m", "text_encoder"), ("sd35m", "text_encoder_3"),
                                                                   ("sdxl", "text_encoder_2"), ("flux", "transformer")]}
    assert classes == {("sd35m", "text_encoder"): "CLIPTextModelWithProjection",
                       ("sd35m", "text_encoder_3"): "T5EncoderModel",
                       ("sdxl", "text_encoder_2"): "CLIPTextModelWithProjection",
                       ("flux", "transformer"): "FluxTransformer2DModel"}
    assert type(R.build("sd35m", "scheduler")).__name__ == "FlowMatchEulerDiscreteScheduler"


def test_sd35m_structure_dual_attention_qk_norm_and_position_table():
    t = R.build("sd35m", "transformer")
    dual = [i for i, b in enumerate(t.transformer_blocks) if getattr(b, "attn2", None) is not None]
    assert dual == list(range(13)) and len(t.transformer_blocks) == 24
    assert type(t.transformer_blocks[0].attn.norm_q).__name__ == "RMSNorm"
    # the 384 x 384 position table (a buffer): 147456 positions of width 24 x 64
    assert tuple(t.pos_embed.pos_embed.shape) == (1, 384 * 384, 1536)
    assert 2.24e9 < R.count(t) < 2.25e9  # parameters alone; the table adds 226M (test above: 2.5B with it)


def test_sdxl_micro_conditioning_and_flux_block_mix():
    u = R.build("sdxl", "unet")
    assert u.config.addition_embed_type == "text_time"
    # 6 time ids x 256 + the 1280-wide pooled text embedding of text_encoder_2
    assert u.add_embedding.linear_1.in_features == 6 * 256 + 1280 == u.config.projection_class_embeddings_input_dim
    f = R.build("flux", "transformer")
    assert (len(f.transformer_blocks), len(f.single_transformer_blocks)) == (19, 38)
    assert f.time_text_embed.guidance_embedder is not None  # FLUX.1-dev is guidance-distilled


def _transformer_blocks(unet) -> int:
    """Transformer blocks of a UNet2DConditionModel, counted from its config (each has attn1 and attn2)."""
    c = unet.config
    layers = c.transformer_layers_per_block
    layers = [layers] * len(c.block_out_channels) if isinstance(layers, int) else list(layers)
    down = sum(c.layers_per_block * t for b, t in zip(c.down_block_types, layers) if b.startswith("CrossAttn"))
    up = sum((c.layers_per_block + 1) * t for b, t in zip(c.up_block_types, reversed(layers))
             if b.startswith("CrossAttn"))
    return down + layers[-1] + up  # the mid block has the deepest level's transformer layers


def _load(adapter, denoiser_name, tmp_path):
    """Save a random adapter of kind ``adapter`` in its upstream layout, then load it into a fresh base through
    rlg.pairs' loader for the kind; returns (base, info)."""
    saver = R.empty_weights(R.build(adapter.model, denoiser_name, dtype=torch.bfloat16))
    R.save_upstream_adapter(adapter, saver, tmp_path)
    base = R.empty_weights(R.build(adapter.model, denoiser_name, dtype=torch.bfloat16))
    rl = Checkpoint(str(tmp_path), weight_name=adapter.weight_name)
    spec = PairSpec(name="real", base=Checkpoint("unused"), rl=rl, rl_kind=adapter.rl_kind, offline=True)
    if adapter.rl_kind == "peft_lora":
        return base, load_peft_lora(spec, base)
    import diffusers

    cls = getattr(diffusers, R.PIPELINES[adapter.model])
    pipe = cls.__new__(cls)  # only its class (the LoRA converter) and its denoiser are used
    pipe.unet = base
    return base, load_diffusers_lora(spec, pipe, "unet")


@pytest.mark.parametrize("key", ["sd15_spo_lora", "sdxl_spo_lora"])
def test_spo_lora_every_weight_finds_its_module(key, tmp_path):
    adapter = R.UPSTREAM_ADAPTERS[key]
    if key == "sdxl_spo_lora":  # key names and module count do not depend on the rank; r=64 (93M adapter
        # parameters) is loaded by benchmarks/real_shapes.py --preset hp_sdxl_spo through the same loader
        adapter = dataclasses.replace(adapter, r=4, lora_alpha=4)
    base, info = _load(adapter, "unet", tmp_path)
    expected = 2 * 4 * _transformer_blocks(base)  # attn1 and attn2 of every transformer block, 4 projections each
    assert expected == {"sd15_spo_lora": 128, "sdxl_spo_lora": 560}[key]
    assert info["lora_layers"] == expected and info["lora_scalings"] == [1.0]  # alpha = r
    from safetensors import safe_open

    with safe_open(str(tmp_path / adapter.weight_name), "pt") as f:  # diffusers' layout: unet.<module>.lora.down/up
        keys = list(f.keys())
    assert len(keys) == 2 * expected and all(k.startswith("unet.") and ".lora." in k for k in keys)
    assert _lora_ranks(tmp_path / adapter.weight_name) == {adapter.r}


def _lora_ranks(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        downs = [k for k in f.keys() if k.endswith(("lora.down.weight", "lora_A.weight"))]  # (r, in_features)
        return {f.get_slice(k).get_shape()[0] for k in downs}


def test_flow_grpo_adapter_every_weight_finds_its_module_and_attn2_is_not_a_target(tmp_path):
    adapter = R.UPSTREAM_ADAPTERS["sd35m_flowgrpo"]
    base, info = _load(adapter, "transformer", tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], sorted(cfg["target_modules"])) == (32, 64, sorted(adapter.target_modules))
    # 24 joint blocks: to_q/k/v/out.0 and add_q/k/v each; to_add_out in all but the last (context_pre_only)
    assert info["lora_layers"] == 24 * 4 + 24 * 3 + 23 == 191
    assert info["lora_scalings"] == [2.0]
    adapted = [n for n, m in base.named_modules() if hasattr(m, "lora_A") and "rl" in m.lora_A]
    # PEFT matches "attn.to_q" as a name suffix after a dot: the dual-attention "attn2" projections are not
    # targets of Flow-GRPO's training script, so its adapters leave those 13 blocks' second attention unchanged
    assert not [n for n in adapted if ".attn2." in n]
    assert _lora_ranks(tmp_path / "adapter_model.safetensors") == {32}


def test_a_lora_on_the_dual_attention_blocks_is_loaded_there(tmp_path):
    """A PEFT adapter whose targets reach attn2 (bare projection names) loads into all 13 dual-attention blocks."""
    adapter = dataclasses.replace(R.UPSTREAM_ADAPTERS["sd35m_flowgrpo"], r=4, lora_alpha=8,
                                  target_modules=("to_q", "to_k", "to_v", "to_out.0"))
    base, info = _load(adapter, "transformer", tmp_path)
    adapted = [n for n, m in base.named_modules() if hasattr(m, "lora_A") and "rl" in m.lora_A]
    assert info["lora_layers"] == len(adapted) == 24 * 4 + 13 * 4
    assert sum(".attn2." in n for n in adapted) == 13 * 4


def test_a_flow_grpo_adapter_does_not_load_into_sdxl(tmp_path):
    adapter = R.UPSTREAM_ADAPTERS["sd35m_flowgrpo"]
    R.save_upstream_adapter(dataclasses.replace(adapter, r=2, lora_alpha=4),
                            R.empty_weights(R.build("sd35m", "transformer", dtype=torch.bfloat16)), tmp_path)
    unet = R.empty_weights(R.build("sdxl", "unet", dtype=torch.bfloat16))
    spec = PairSpec(name="wrong", base=Checkpoint("unused"), rl=Checkpoint(str(tmp_path)), rl_kind="peft_lora")
    with pytest.raises(PairError, match="matches no module|match no module|found a module"):
        load_peft_lora(spec, unet)


@pytest.mark.parametrize("model", ["sd15", "sdxl", "flux"])
def test_full_rl_checkpoints_are_the_base_architecture(model):
    """Diffusion-DPO / DDPO / merged SPO (UNets) and DanceGRPO / MixGRPO (FLUX transformers) are whole denoisers of
    the base's config: rlg.pairs.check_compatible accepts them, and refuses a neighbouring model's config."""
    name = R.DENOISER[model]
    base, rl = R.build(model, name), R.build(model, name)
    check_compatible(base, rl, f"{model} full RL")
    assert base.state_dict().keys() == rl.state_dict().keys()
    cfg = R.real_config(model, name)
    other = {"sd15": {"cross_attention_dim": 1024}, "sdxl": {"addition_time_embed_dim": 128},
             "flux": {"guidance_embeds": False}}[model]  # SD2, a refiner-like UNet, FLUX.1-schnell
    import diffusers

    from accelerate import init_empty_weights

    with init_empty_weights():
        wrong = getattr(diffusers, cfg["_class_name"]).from_config({**cfg, **other})
    with pytest.raises(PairError, match="different config"):
        check_compatible(base, wrong, "a neighbouring model")


@pytest.mark.parametrize("pair,kind", [("sd15_spo_lora", "diffusers_lora"), ("sdxl_spo_merged", "full"),
                                       ("sd35m_flowgrpo_geneval", "peft_lora"), ("flux_mixgrpo", "full")])
def test_adapter_for_pair_names_the_upstream_kind(pair, kind):
    a = R.adapter_for_pair(pair, kind)
    assert a.rl_kind == kind and a.model == pair.split("_")[0]
    with pytest.raises(ValueError, match="loads none of the real models"):
        R.adapter_for_pair("tiny_sd_peft", "peft_lora")


def test_every_shipped_real_pair_has_an_upstream_kind():
    import yaml

    from rlg.conf import __file__ as conf_init
    from pathlib import Path

    pairs = {}
    for f in sorted((Path(conf_init).parent / "pair").glob("*.yaml")):
        node = yaml.safe_load(f.read_text())
        if node["name"].split("_")[0] in R.MODELS:
            pairs[node["name"]] = R.adapter_for_pair(node["name"], node["rl_kind"]).rl_kind == node["rl_kind"]
    assert len(pairs) >= 14 and all(pairs.values()), pairs


def test_preset_costs_use_the_counted_parameters():
    """benchmarks/preset_costs.py's table is computed from these counts; keep its constants equal to them."""
    from benchmarks.preset_costs import FAMILIES

    for model, (denoiser_b, other_b, _) in FAMILIES.items():
        name = R.DENOISER[model]
        got = R.count(R.build(model, name), with_buffers=True) / 1e9
        others = [c for c in R.components(model) if c not in (name, "scheduler", "vae_fp16_fix")]
        other = sum(R.count(R.build(model, c)) for c in others) / 1e9
        assert abs(got - denoiser_b) < 5e-4 and abs(other - other_b) < 5e-4, (model, got, other)
