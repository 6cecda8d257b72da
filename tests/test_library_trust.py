"""Issue 12 items 1, 2, 7 and 9 on the tiny pairs: every random draw from the image's own generator,
weight identities that see the files, adapters the per-row mix cannot serve, and no stale
per-call state. Expected values come from stock diffusers pipelines / PEFT models run here, or from
a second run of the same thing.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
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
from rlg.guidance import StepWindow
from rlg.pairs import load_pair, tiny_spec
from rlg.sampling import RLGSampler, SamplerSettings, WorkItem, make_scheduler, noise_seed

SIZE, STEPS, CFG = 32, 3, 4.5
PROMPT, SEED = "a red cube on a table", 11
SAMPLER_DIR = Path(__file__).resolve().parents[1] / "rlg" / "conf" / "sampler"
# every sampler preset on the tiny family of the pipeline it is meant for
PRESET_FAMILIES = {"ddim": ["sd", "ddim"], "flowgrpo_eval": ["sd3"], "flowgrpo_sde": ["sd3", "flux"],
                   "flux": ["flux"], "rlg_sd3": ["sd3"], "sd15": ["sd_inpaint"], "sdxl": ["sdxl"], "tiny": ["sd"],
                   "zoo_digits": ["sd"], "zoo_text_ode": ["sd3"], "zoo_text_sde": ["sd3"]}


@functools.lru_cache(maxsize=None)
def preset(name: str) -> SamplerSettings:
    """The SamplerSettings the builder makes of sampler preset ``name`` (rlg.harness.build.sampler_settings)."""
    from rlg.harness.api import compose
    from rlg.harness.build import sampler_settings

    return sampler_settings(compose(f"sampler={name}").sampler)


def test_every_sampler_preset_is_covered():
    assert sorted(p.stem for p in SAMPLER_DIR.glob("*.yaml")) == sorted(PRESET_FAMILIES)


def settings_for(name: str, family: str, steps: int = STEPS) -> SamplerSettings:
    # the preset's scheduler, shift, noise level, eta and extra; this test's steps, CFG, size and micro-batch
    size = None if family == "ddim" else SIZE
    s = dataclasses.replace(preset(name), num_inference_steps=steps, guidance_scale=CFG, micro_batch=2, height=size,
                            width=size, extra=dict(preset(name).extra))
    if family.endswith("inpaint"):
        from PIL import Image

        s.extra = {"image": Image.new("RGB", (SIZE, SIZE), (150, 40, 40)),
                   "mask_image": Image.fromarray(np.tri(SIZE, dtype=np.uint8) * 255), "strength": 0.8}
    return s


def image(sampler, item, global_seed: int = 0):
    torch.manual_seed(global_seed)
    return sampler.generate([item])[0].image


CASES = [(name, fam) for name, fams in PRESET_FAMILIES.items() for fam in fams]


@pytest.mark.parametrize("preset_name,family", CASES)
def test_every_draw_comes_from_the_image_generator(preset_name, family, fixture_root):
    pair = load_pair(tiny_spec(family, "full", root=fixture_root))
    sampler = RLGSampler(pair, settings_for(preset_name, family))
    target = WorkItem(0, PROMPT, 0, SEED, 1.5)
    alone = image(sampler, target, global_seed=1)
    others = [WorkItem(i, f"prompt number {i}", i % 2, SEED + i, 0.5 * i) for i in (1, 2, 3)]
    torch.manual_seed(2)
    in_batch = sampler.generate(others[:2] + [target] + others[2:])[2].image
    again = image(sampler, target, global_seed=3)  # a second call, another global seed
    assert np.array_equal(alone, in_batch)
    assert np.array_equal(alone, again)
    # all scales of a (prompt, sample) share the noise: w = 0 and w = 1 inside a grid are the images
    # made alone at those scales
    grid = sampler.generate([WorkItem(0, PROMPT, 0, SEED, w) for w in (0.0, 1.0, 1.5)])
    assert np.array_equal(grid[2].image, alone)
    for g in grid[:2]:
        assert np.array_equal(g.image, image(sampler, g.item, global_seed=4))


def _stock_sd3_sde(spec, prompt: str, generator_seed: int, steps: int, noise_level: float, shift: float):
    """The stock SD3 pipeline with the base transformer and Flow-GRPO's SDE scheduler, its step noise
    drawn from the image's generator (set_noise_generator): the official w = 0 image."""
    from rlg.schedulers import FlowGRPOSDEScheduler

    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(spec.base.id)
    pipe.scheduler = FlowGRPOSDEScheduler.from_config(pipe.scheduler.config, noise_level=noise_level, shift=shift)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(generator_seed)
    pipe.scheduler.set_noise_generator([g])
    with torch.no_grad():
        out = pipe(prompt=[prompt], negative_prompt=[""], guidance_scale=CFG, num_inference_steps=steps,
                   height=SIZE, width=SIZE, generator=[g], output_type="np").images[0]
    return (np.asarray(out).clip(0, 1) * 255).round().astype(np.uint8)


def test_issue_example_tiny_sd3_flow_grpo_sde(fixture_root):
    """tiny_sd3_full, flow_grpo_sde, 4 steps, scales [0, 1, 2]: byte-identical across runs and global
    seeds, two copies of one item in one call agree, and w = 0 is the stock pipeline's SDE image."""
    spec = tiny_spec("sd3", "full", root=fixture_root)
    pair = load_pair(spec)
    s = SamplerSettings(num_inference_steps=4, guidance_scale=CFG, height=SIZE, width=SIZE,
                        scheduler="flow_grpo_sde", shift=3.0, noise_level=0.7, micro_batch=2)
    sampler = RLGSampler(pair, s)
    items = [WorkItem(0, "a cat", 0, 0, w) for w in (0.0, 1.0, 2.0)]
    torch.manual_seed(1)
    a = [g.image for g in sampler.generate(items)]
    torch.manual_seed(2)
    b = [g.image for g in sampler.generate(items + items[2:])]  # run "b", with a copy of one item
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert np.array_equal(b[2], b[3])
    stock = _stock_sd3_sde(spec, "a cat", noise_seed(0, 0, 0), 4, 0.7, 3.0)
    # the stock pipeline runs base CFG rows in one forward of 2 rows, as micro_batch=2 does here
    assert np.abs(a[0].astype(int) - stock.astype(int)).max() <= 1
    # the SDE noise is really drawn: the deterministic Euler sampler gives another image
    ode = RLGSampler(pair, SamplerSettings(num_inference_steps=4, guidance_scale=CFG, height=SIZE, width=SIZE,
                                           scheduler="euler_ode", shift=3.0, micro_batch=2))
    assert np.abs(ode.generate(items[:1])[0].image.astype(int) - a[0].astype(int)).max() > 10


def test_ancestral_default_scheduler_uses_the_image_generator(fixture_root):
    """A pipeline loaded with an ancestral scheduler (noise at every step) as its own default."""
    pair = load_pair(tiny_spec("sd", "full", root=fixture_root))
    pipe = pair.pipe
    pipe.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    sampler = RLGSampler(pair, SamplerSettings(num_inference_steps=STEPS, guidance_scale=CFG, height=SIZE,
                                               width=SIZE, micro_batch=2))
    item = WorkItem(0, PROMPT, 0, SEED, 0.5)
    first = image(sampler, item, 1)
    assert np.array_equal(first, image(sampler, item, 2))
    torch.manual_seed(5)
    assert np.array_equal(first, sampler.generate([WorkItem(3, "x", 1, 4, 2.0), item])[1].image)


# --- item 9 and issue 11: per-call state ------------------------------------------------------
def _pipe_kwargs(n: int, steps: int = STEPS):
    return dict(prompt=["a cat"] * n, num_inference_steps=steps, guidance_scale=CFG, height=SIZE, width=SIZE,
                output_type="np", generator=[torch.Generator().manual_seed(i) for i in range(n)])


def test_scales_are_consumed_by_one_pipeline_call(fixture_root):
    """The issue's misuse: begin([0, .5, 1, 2], n), one call, then a call with two prompts."""
    pair = load_pair(tiny_spec("sd", "full", root=fixture_root))
    pipe, den = pair.pipe, pair.denoiser
    den.begin([0, 0.5, 1, 2], STEPS)
    with torch.no_grad():
        pipe(**_pipe_kwargs(4))
        with pytest.raises(RuntimeError, match=r"begin\(\)"):
            pipe(**_pipe_kwargs(2))
        # the state is gone after the error too: the next call without begin() raises as well
        with pytest.raises(RuntimeError, match=r"begin\(scales, num_steps\)"):
            pipe(**_pipe_kwargs(2))
        # a call right after the sampler's call has no scales either
        RLGSampler(pair, SamplerSettings(num_inference_steps=STEPS, height=SIZE, width=SIZE)).generate(
            [WorkItem(0, "a cat", 0, 0, 1.0)])
        with pytest.raises(RuntimeError, match=r"begin\(scales, num_steps\)"):
            pipe(**_pipe_kwargs(2))
        # with the context manager the scales end with the block
        with den.call([0.0, 1.0], STEPS):
            pipe(**_pipe_kwargs(2))
        assert not den.in_call
        with pytest.raises(RuntimeError, match=r"begin\(scales, num_steps\)"):
            pipe(**_pipe_kwargs(2))
        # a call with more steps than begin() was told is refused, not run with a shifted window
        den.begin([1.0, 1.0], STEPS)
        with pytest.raises(RuntimeError, match="one pipeline call of 3 steps"):
            pipe(**_pipe_kwargs(2, steps=STEPS + 2))


def test_window_micro_batch_and_scheduler_are_per_call(fixture_root):
    """One loaded pair serves samplers with different windows, micro-batches and schedulers; each gives
    the image of a pair loaded with that setting, and leaves nothing behind."""
    spec = tiny_spec("sd", "peft_lora", root=fixture_root)
    pair = load_pair(spec)
    default_scheduler = pair.pipe.scheduler
    item = WorkItem(0, PROMPT, 0, SEED, 2.0)
    base = dict(num_inference_steps=4, guidance_scale=CFG, height=SIZE, width=SIZE)
    plain = RLGSampler(pair, SamplerSettings(**base))
    before = plain.generate([item])[0].image
    window = StepWindow(start=0.5, stop=1.0, outside="rl")
    windowed = RLGSampler(pair, SamplerSettings(**base, window=window, micro_batch=2))
    ddim_eta = RLGSampler(pair, SamplerSettings(**base, scheduler="ddim", eta=1.0))
    pair.denoiser.stats.reset()
    w_img = windowed.generate([item])[0].image
    # steps 0, 1 outside (RL only), 2, 3 inside; micro_batch=2 -> one forward per CFG pair
    assert (pair.denoiser.stats.base_rows, pair.denoiser.stats.rl_rows) == (4, 8)
    assert pair.denoiser.stats.forwards == 6
    e_img = ddim_eta.generate([item])[0].image
    assert pair.pipe.scheduler is default_scheduler
    assert (pair.denoiser.window, pair.denoiser.micro_batch) == (StepWindow(), None)
    assert np.array_equal(plain.generate([item])[0].image, before)
    # independent: the same settings through a pair loaded with them (old keywords) / the pipeline's eta
    fresh = load_pair(spec, window=window, micro_batch=2)
    assert np.array_equal(RLGSampler(fresh, SamplerSettings(**base)).generate([item])[0].image, w_img)
    assert not np.array_equal(w_img, before) and not np.array_equal(e_img, before)
    with pytest.raises(ValueError, match="flow-matching"):
        make_scheduler(pair.pipe, "flow_grpo_sde")


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
    pair_dir = SAMPLER_DIR.parent / "pair"
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
