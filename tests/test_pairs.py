"""rlg.pairs on the tiny pairs (issue 12 items 2 and 7, issue 15): weight identities that see the files,
adapters the per-row mix cannot serve, and the loading options diffusers users rely on. Expected values come
from stock diffusers pipelines / PEFT models run here, or from a second run of the same thing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import diffusers
from rlg.pairs import load_pair, tiny_spec
from rlg.sampling import RLGSampler, SamplerSettings, WorkItem, noise_seed

SIZE, CFG = 32, 4.5
PROMPT, SEED = "a red cube on a table", 11
CONF_DIR = Path(__file__).resolve().parents[1] / "rlg" / "conf"


# --- item 2: weight identities ----------------------------------------------------------------
def test_weights_identity_sees_weights_rewritten_in_place(fixture_root, tmp_path, monkeypatch):
    """A local pair, run, overwrite the RL weights in place: the identity (and the image) change; the
    identity is computed before loading and a rerun reads no weights (cache by path, size, mtime)."""
    from rlg.pairs import Checkpoint, PairSpec, fingerprint_cache_path, weights_identity
    from rlg.tiny_pairs import build_pair, perturbed_copy

    monkeypatch.setenv("RLG_FINGERPRINT_CACHE", str(tmp_path / "fp.json"))
    src = build_pair("sd", fixture_root)
    shutil.copytree(src / "base", tmp_path / "base")
    shutil.copytree(src / "rl-full", tmp_path / "rl")
    spec = PairSpec(name="local", base=Checkpoint(str(tmp_path / "base")), rl=Checkpoint(str(tmp_path / "rl")),
                    vae=Checkpoint(str(tmp_path / "base"), subfolder="vae"), offline=True)
    first = weights_identity(spec)
    assert first["rl"]["source"] == "local" and first["rl"]["files"] >= 2 and first["vae"]["files"] == 2
    cached = json.loads(fingerprint_cache_path().read_text())
    weight = tmp_path / "rl" / "unet" / "diffusion_pytorch_model.safetensors"
    assert cached[str(weight.resolve())][2] == hashlib.sha256(weight.read_bytes()).hexdigest()
    item = WorkItem(0, PROMPT, 0, SEED, 1.0)
    s = SamplerSettings(num_inference_steps=2, guidance_scale=CFG, height=SIZE, width=SIZE)
    pair = load_pair(spec)
    assert pair.info["weights"] == first
    old_image = RLGSampler(pair, s).generate([item])[0].image

    unet = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "rl", subfolder="unet")
    perturbed_copy(unet, seed=5, strength=0.2).save_pretrained(tmp_path / "rl" / "unet")  # in place
    second = weights_identity(spec)
    assert second["rl"]["sha256"] != first["rl"]["sha256"]
    assert (second["base"], second["vae"]) == (first["base"], first["vae"])
    new_image = RLGSampler(load_pair(spec), s).generate([item])[0].image
    assert not np.array_equal(old_image, new_image)
    # same bytes, new mtime: hashed again, same identity; the VAE override is part of it
    os.utime(weight, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert weights_identity(spec) == second
    vae_file = tmp_path / "base" / "vae" / "diffusion_pytorch_model.safetensors"
    vae_file.write_bytes(vae_file.read_bytes() + b"\0")
    assert weights_identity(spec)["vae"] != second["vae"]


def test_hub_identity_from_pin_cache_or_unresolved(tmp_path):
    from rlg.pairs import Checkpoint, PairSpec, weights_identity

    commit, other = "0123456789abcdef0123456789abcdef01234567", "89abcdef0123456789abcdef0123456789abcdef"
    refs = tmp_path / "models--someone--base-model" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(commit)
    (refs / "v2").write_text(other)
    spec = PairSpec(name="hub", base=Checkpoint("someone/base-model"),
                    rl=Checkpoint("someone/rl-adapter", revision=other), rl_kind="peft_lora",
                    vae=Checkpoint("someone/base-model", revision="v2", subfolder="vae"), offline=True)
    ident = weights_identity(spec, cache_dir=tmp_path)
    assert (ident["base"]["commit"], ident["base"]["resolved_by"]) == (commit, "cache")
    assert (ident["rl"]["commit"], ident["rl"]["resolved_by"]) == (other, "pinned")
    assert (ident["vae"]["commit"], ident["vae"]["subfolder"]) == (other, "vae")
    spec.base = Checkpoint("someone/not-downloaded")
    assert weights_identity(spec, cache_dir=tmp_path)["base"]["resolved_by"] == "unresolved"


def test_real_pair_presets_pin_what_they_can():
    """Every real hub preset either pins a full commit or is listed as unpinned (load warns); fp16 presets
    of repos with fp16 files load that variant."""
    pair_dir = CONF_DIR / "pair"
    for path in sorted(pair_dir.glob("*.yaml")):
        p = yaml.safe_load(path.read_text())
        if p.get("tiny") or p.get("analytic"):
            continue
        for role in ("base", "rl", "vae"):
            ck = p.get(role)
            if ck and ck.get("revision") is not None:
                assert len(ck["revision"]) == 40, f"{path.name} {role}: pin a full commit hash"
        fp16_repos = ("stable-diffusion-v1-5/stable-diffusion-v1-5", "stabilityai/stable-diffusion-xl-base-1.0")
        if p["base"]["id"] in fp16_repos:
            assert p["base"].get("variant") == "fp16" and p["dtype"] == "float16", path.name


# --- item 7: adapters the per-row mix cannot serve ------------------------------------------------
def _saved_adapter(base_unet, out_dir: Path, **lora):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_v"], init_lora_weights=False, **lora)
    model = get_peft_model(copy.deepcopy(base_unet), cfg)
    if lora.get("modules_to_save"):
        with torch.no_grad():
            model.base_model.model.conv_in.modules_to_save["default"].weight.add_(0.05)
    model.save_pretrained(out_dir)


@pytest.mark.parametrize("lora", [{"modules_to_save": ["conv_in"]}, {"use_dora": True},
                                  {"use_dora": True, "modules_to_save": ["conv_in"]}], ids=["conv_in", "dora", "both"])
def test_adapters_with_modules_to_save_or_dora_match_peft(lora, fixture_root, tmp_path):
    from peft import PeftModel

    from rlg.pairs import Checkpoint, PairSpec
    from rlg.tiny_pairs import build_pair

    base_dir = build_pair("sd", fixture_root) / "base"
    unet = diffusers.UNet2DConditionModel.from_pretrained(base_dir, subfolder="unet").eval()
    _saved_adapter(unet, tmp_path / "adapter", **lora)
    pair = load_pair(PairSpec(name="peft", base=Checkpoint(str(base_dir)), rl=Checkpoint(str(tmp_path / "adapter")),
                              rl_kind="peft_lora", offline=True))
    assert not pair.denoiser.mixed_adapter_batch
    assert pair.info["dora"] == bool(lora.get("use_dora")) and pair.info.get("modules_to_save") == lora.get(
        "modules_to_save")
    reference = PeftModel.from_pretrained(copy.deepcopy(unet), tmp_path / "adapter").eval()
    torch.manual_seed(0)
    x, e, t = torch.randn(3, 4, 16, 16), torch.randn(3, 77, 32), torch.tensor(500)
    with torch.no_grad():
        rl = reference(x, t, encoder_hidden_states=e).sample
        with reference.disable_adapter():
            base = reference(x, t, encoder_hidden_states=e).sample
        with pair.denoiser.call([0.0, 1.0, 0.5], 1):
            pair.denoiser.stats.reset()
            out = pair.denoiser(x, t, encoder_hidden_states=e).sample
    assert (rl - base).abs().max() > 1e-3
    torch.testing.assert_close(out[0], base[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], rl[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[2], base[2] + 0.5 * (rl[2] - base[2]), atol=1e-5, rtol=1e-5)
    assert pair.denoiser.stats.forwards == 2  # base and RL as separate forwards
    # adapters are on again after the call: the network alone is the RL model
    with torch.no_grad():
        torch.testing.assert_close(pair.denoiser.base(x, t, encoder_hidden_states=e).sample, rl, atol=1e-5, rtol=1e-5)


def test_non_lora_peft_adapters_are_refused_by_name(fixture_root, tmp_path):
    from peft import LoHaConfig, get_peft_model

    from rlg.pairs import Checkpoint, PairError, PairSpec
    from rlg.tiny_pairs import build_pair

    base_dir = build_pair("sd", fixture_root) / "base"
    unet = diffusers.UNet2DConditionModel.from_pretrained(base_dir, subfolder="unet")
    get_peft_model(unet, LoHaConfig(r=4, target_modules=["to_q"])).save_pretrained(tmp_path / "loha")
    spec = PairSpec(name="loha", base=Checkpoint(str(base_dir)), rl=Checkpoint(str(tmp_path / "loha")),
                    rl_kind="peft_lora", offline=True)
    with pytest.raises(PairError, match="LOHA adapter; RLG loads LoRA adapters"):
        load_pair(spec)


# --- issue 15: loading options diffusers users rely on ---------------------------------------------
def test_sd3_without_t5_through_the_pair_config(fixture_root, tmp_path):
    """components: {text_encoder_3: null, tokenizer_3: null} loads the tiny SD3 pair without T5, and its
    images equal the stock pipeline loaded the same way; a pipeline saved without T5 loads as it is; a
    missing component folder is named, with the option that fixes it."""
    from rlg.pairs import Checkpoint, PairError, PairSpec

    d = tiny_spec("sd3", "full", root=fixture_root).base.id
    spec = tiny_spec("sd3", "full", root=fixture_root)
    spec.components = {"text_encoder_3": None, "tokenizer_3": None}
    pair = load_pair(spec)
    assert pair.pipe.text_encoder_3 is None and pair.pipe.tokenizer_3 is None
    assert spec.identity()["components"] == {"text_encoder_3": None, "tokenizer_3": None}
    s = SamplerSettings(num_inference_steps=2, guidance_scale=CFG, height=SIZE, width=SIZE)
    ours = RLGSampler(pair, s).generate([WorkItem(0, PROMPT, 0, SEED, 0.0)])[0].image
    stock = diffusers.StableDiffusion3Pipeline.from_pretrained(d, text_encoder_3=None, tokenizer_3=None)
    stock.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = stock(prompt=[PROMPT], negative_prompt=[""], guidance_scale=CFG, num_inference_steps=2, height=SIZE,
                    width=SIZE, output_type="np", generator=[torch.Generator().manual_seed(noise_seed(SEED, 0, 0))])
    assert np.array_equal(ours, (np.asarray(ref.images[0]).clip(0, 1) * 255).round().astype(np.uint8))
    with_t5 = RLGSampler(load_pair(tiny_spec("sd3", "full", root=fixture_root)), s)
    assert not np.array_equal(ours, with_t5.generate([WorkItem(0, PROMPT, 0, SEED, 0.0)])[0].image)

    stock.save_pretrained(tmp_path / "saved-without-t5")
    saved = PairSpec("saved", Checkpoint(str(tmp_path / "saved-without-t5")), spec.rl, offline=True)
    assert load_pair(saved).pipe.text_encoder_3 is None

    shutil.copytree(d, tmp_path / "no-t5-folder")
    shutil.rmtree(tmp_path / "no-t5-folder" / "text_encoder_3")
    broken = PairSpec("broken", Checkpoint(str(tmp_path / "no-t5-folder")), spec.rl, offline=True)
    with pytest.raises(PairError, match=r"component 'text_encoder_3'.*\n.*components: \{text_encoder_3: null, "
                                        r"tokenizer_3: null\}"):
        load_pair(broken)
    broken.components = {"text_encoder_3": None, "tokenizer_3": None}
    assert load_pair(broken).pipe.text_encoder_3 is None


def test_a_broken_component_file_is_named(fixture_root, tmp_path):
    from rlg.pairs import Checkpoint, PairError, PairSpec

    spec = tiny_spec("sd", "full", root=fixture_root)
    shutil.copytree(spec.base.id, tmp_path / "base")
    (tmp_path / "base" / "text_encoder" / "config.json").write_text("{not json")
    with pytest.raises(PairError, match="component 'text_encoder'"):
        load_pair(PairSpec("bad", Checkpoint(str(tmp_path / "base")), spec.rl, offline=True))
