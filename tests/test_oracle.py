"""Issue 30: the stock diffusers pipeline is the oracle. At w = 0 RLG equals the stock base pipeline and at w = 1
the stock RL pipeline, bit for bit on CPU, under every ``__call__`` keyword and every public pipeline change
declared ``stock`` in rlg.surface; ``refused`` ones are refused before any image is made, in one line. The
enumeration reads diffusers' own API and fails on an undeclared keyword or method.

References are independent of rlg: each pipeline class is loaded again from the tiny family's folders, and its
network is swapped between the base and the RL network loaded with diffusers' own ``from_pretrained``.
Cheap: 2 steps, 32 px, one prompt, one pair load and one stock pipeline per class (module cache)."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch
from PIL import Image

import diffusers as D
import rlg
from rlg import surface
from rlg.guidance import StepWindow
from rlg.pairs import PairError, load_pair, tiny_spec
from rlg.sampling import RLGSampler, SamplerError, SamplerSettings, WorkItem, noise_seed
from tests.test_core import OfficialOrder


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Bit-equality with the stock pipeline holds for one thread setting (docs/scale-out.md): other test modules on
    the same xdist worker may leave torch with more threads, which split reductions differently per batch size."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# No xdist group: each worker loads the classes it runs (about a second each), so 2 workers split the file

STEPS, CFG, SIZE, SEED, PROMPT = 2, 4.5, 32, 3, "a red cube"
# pipeline class -> tiny family whose folders it loads (the img2img classes load the text-to-image family)
CLASSES = {D.StableDiffusionPipeline: "sd", D.StableDiffusionImg2ImgPipeline: "sd",
           D.StableDiffusionInpaintPipeline: "sd_inpaint", D.StableDiffusionXLPipeline: "sdxl",
           D.StableDiffusionXLImg2ImgPipeline: "sdxl", D.StableDiffusionXLInpaintPipeline: "sdxl_inpaint",
           D.StableDiffusion3Pipeline: "sd3", D.FluxPipeline: "flux", D.DDIMPipeline: "ddim"}
# declared too (their families' img2img / inpaint variants); not run here
DECLARED_ONLY = (D.StableDiffusion3Img2ImgPipeline, D.StableDiffusion3InpaintPipeline, D.FluxImg2ImgPipeline,
                 D.FluxInpaintPipeline)
NETWORKS = (D.UNet2DConditionModel, D.SD3Transformer2DModel, D.FluxTransformer2DModel, D.UNet2DModel)

IMAGE = Image.fromarray((np.indices((SIZE, SIZE)).sum(0) * 4 % 256).astype(np.uint8)).convert("RGB")
MASK = Image.fromarray(np.tri(SIZE, dtype=np.uint8) * 255)

# keyword -> a non-default value (with the keywords it needs); kept beside the test as the issue asks
VALUES = {
    "guidance_scale": {"guidance_scale": 2.0}, "height": {"height": 48}, "width": {"width": 48},
    "negative_prompt": {"negative_prompt": "blurry"}, "negative_prompt_2": {"negative_prompt_2": "dark"},
    "negative_prompt_3": {"negative_prompt_3": "dark"}, "prompt_2": {"prompt_2": "a dog"},
    "prompt_3": {"prompt_3": "a dog"}, "eta": {"eta": 1.0}, "clip_skip": {"clip_skip": 1},
    "cross_attention_kwargs": {"cross_attention_kwargs": {"scale": 0.5}},
    "joint_attention_kwargs": {"joint_attention_kwargs": {"scale": 0.5}},
    "timesteps": {"timesteps": [999, 600, 200]}, "sigmas": {"sigmas": [1.0, 0.6, 0.3]}, "mu": {"mu": 0.7},
    "strength": {"strength": 0.5}, "denoising_start": {"denoising_start": 0.5},
    "denoising_end": {"denoising_end": 0.5}, "image": {"image": IMAGE.rotate(90)},
    "mask_image": {"mask_image": MASK.rotate(90)}, "padding_mask_crop": {"padding_mask_crop": 4},
    "original_size": {"original_size": (64, 64)}, "target_size": {"target_size": (16, 16)},
    "crops_coords_top_left": {"crops_coords_top_left": (4, 4)},
    "negative_original_size": {"negative_original_size": (64, 64)},
    "negative_target_size": {"negative_target_size": (16, 16)},
    "negative_crops_coords_top_left": {"negative_crops_coords_top_left": (4, 4)},
    "aesthetic_score": {"aesthetic_score": 3.0}, "negative_aesthetic_score": {"negative_aesthetic_score": 1.0},
    "max_sequence_length": {"max_sequence_length": 16}, "true_cfg_scale": {"true_cfg_scale": 2.0},
    "skip_guidance_layers": {"skip_guidance_layers": [0]},
    "skip_layer_guidance_scale": {"skip_guidance_layers": [0], "skip_layer_guidance_scale": 2.0},
    "skip_layer_guidance_start": {"skip_guidance_layers": [0], "skip_layer_guidance_start": 0.5},
    "skip_layer_guidance_stop": {"skip_guidance_layers": [0], "skip_layer_guidance_stop": 0.5},
    "use_clipped_model_output": {"use_clipped_model_output": True},
}
REFUSED_VALUES = {"num_images_per_prompt": 2, "output_type": "latent", "generator": None, "latents": None,
                  "prompt": "x", "batch_size": 2, "return_dict": False, "callback_on_step_end": None,
                  "callback_on_step_end_tensor_inputs": ["latents"], "prompt_embeds": None,
                  "negative_prompt_embeds": None, "pooled_prompt_embeds": None, "negative_pooled_prompt_embeds": None,
                  "guidance_rescale": 0.7, "num_inference_steps": 3, "masked_image_latents": None,
                  "ip_adapter_image": IMAGE, "ip_adapter_image_embeds": None, "negative_ip_adapter_image": IMAGE,
                  "negative_ip_adapter_image_embeds": None, "kwargs": None}


def params(cls) -> set[str]:
    return set(inspect.signature(cls.__call__).parameters) - {"self"}


def public_methods(cls) -> set[str]:
    return {n for n in dir(cls) if surface.PIPELINE_METHOD_PATTERN.match(n)}


def network_methods(cls) -> set[str]:
    plain = set(dir(torch.nn.Module))
    return {n for n in dir(cls) if callable(getattr(cls, n, None)) and n not in plain and not n.startswith("__")}


# -- the enumeration: every keyword and method of diffusers' API is declared ----------------------------------------
def test_every_call_keyword_of_every_pipeline_class_is_declared():
    undeclared = {c.__name__: sorted(params(c) - set(surface.CALL_KEYWORDS)) for c in (*CLASSES, *DECLARED_ONLY)}
    assert {k: v for k, v in undeclared.items() if v} == {}, "declare each in rlg.surface.CALL_KEYWORDS"
    every = set().union(*(params(c) for c in (*CLASSES, *DECLARED_ONLY)))
    assert sorted(set(surface.CALL_KEYWORDS) - every) == [], "CALL_KEYWORDS names a keyword no pipeline takes"
    assert {s for s, _ in surface.CALL_KEYWORDS.values()} <= {surface.STOCK, surface.REFUSED, surface.PLACEMENT}
    assert sorted(k for k, (s, _) in surface.CALL_KEYWORDS.items() if s == surface.STOCK) == sorted(VALUES)
    assert sorted(k for k, (s, _) in surface.CALL_KEYWORDS.items() if s == surface.REFUSED) == sorted(REFUSED_VALUES)


def test_every_public_pipeline_method_and_network_method_is_declared():
    undeclared = {c.__name__: sorted(public_methods(c) - set(surface.PIPELINE_METHODS))
                  for c in (*CLASSES, *DECLARED_ONLY)}
    assert {k: v for k, v in undeclared.items() if v} == {}, "declare each in rlg.surface.PIPELINE_METHODS"
    every = set().union(*(public_methods(c) for c in (*CLASSES, *DECLARED_ONLY)))
    assert sorted(set(surface.PIPELINE_METHODS) - every) == []
    undeclared = {c.__name__: sorted(network_methods(c) - set(surface.NETWORK_METHODS)) for c in NETWORKS}
    assert {k: v for k, v in undeclared.items() if v} == {}, "declare each in rlg.surface.NETWORK_METHODS"
    assert sorted(set(surface.NETWORK_METHODS) - set().union(*(network_methods(c) for c in NETWORKS))) == []


def test_docs_render_the_declaration_tables():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "guarantees.md").read_text()
    assert surface.table_markdown() in text, "regenerate: python -m rlg.surface > the tables of docs/guarantees.md"


# -- the oracle: stock keywords give the stock images at w = 0 and 1 --------------------------------------------------
@dataclasses.dataclass
class Ctx:
    cls: type
    pair: object
    stock: object  # the same class loaded again, independent of rlg
    name: str
    base: torch.nn.Module
    rl: torch.nn.Module
    inputs: dict


_CTX: dict[type, Ctx] = {}


def ctx_of(cls) -> Ctx:
    if cls not in _CTX:
        family = CLASSES[cls]
        spec = dataclasses.replace(tiny_spec(family, "full"), pipeline_class=cls.__name__)
        stock = cls.from_pretrained(spec.base.id)
        stock.set_progress_bar_config(disable=True)
        name = "unet" if hasattr(stock, "unet") else "transformer"
        base = getattr(stock, name).eval()
        rl = type(base).from_pretrained(spec.rl.id, subfolder=name).eval()
        inputs = {k: v for k, v in (("image", IMAGE), ("mask_image", MASK)) if k in params(cls)}
        _CTX[cls] = Ctx(cls, load_pair(spec), stock, name, base, rl, inputs)
    return _CTX[cls]


def u8(img) -> np.ndarray:
    return (np.asarray(img, dtype=np.float32).clip(0, 1) * 255).round().astype(np.uint8)


def stock_image(ctx: Ctx, net, kwargs: dict, steps: int = STEPS) -> np.ndarray:
    """The stock pipeline with ``net``, the way a user calls it, with the noise of (SEED, prompt 0, sample 0)."""
    setattr(ctx.stock, ctx.name, net)
    kw = dict(num_inference_steps=steps, output_type="np",
              generator=[torch.Generator().manual_seed(noise_seed(SEED, 0, 0))], **ctx.inputs)
    if ctx.cls is D.DDIMPipeline:
        kw["batch_size"] = 1
    else:
        kw.update(prompt=[PROMPT], negative_prompt=[""], guidance_scale=CFG, height=SIZE, width=SIZE)
    kw.update(kwargs)
    with torch.no_grad():
        return u8(ctx.stock(**kw).images[0])


def rlg_images(ctx: Ctx, kwargs: dict, scales=(0.0, 1.0), steps: int = STEPS, **settings) -> list[np.ndarray]:
    s = SamplerSettings(num_inference_steps=steps, guidance_scale=CFG, extra={**ctx.inputs, **kwargs}, **settings)
    if ctx.cls is not D.DDIMPipeline:
        s.height = s.width = SIZE
    return [g.image for g in RLGSampler(ctx.pair, s).generate([WorkItem(0, PROMPT, 0, SEED, w) for w in scales])]


def outcome(fn):
    try:
        return fn()
    except (ValueError, TypeError, RuntimeError, AttributeError) as exc:  # diffusers itself fails on the value
        return type(exc)


# Each keyword on the first class that takes it (one shared code path: diffusers' mixins), and on every class
# where it changes which steps run or what is encoded per class (strength, denoising_*, image, mask_image)
PER_CLASS = {"strength", "denoising_start", "denoising_end", "image", "mask_image", "timesteps", "sigmas"}
STOCK_CASES = [(c, k) for k in sorted(VALUES) for i, c in enumerate(c for c in CLASSES if set(VALUES[k]) <= params(c))
               if i == 0 or k in PER_CLASS]


# The cases held to within one 8-bit level instead of bit for bit, each with what was seen. SDXL img2img with
# denoising_start: bit-equal alone and as a whole file, 1 level off at w = 1 in the full suite (after other modules
# on the same xdist worker; one torch thread pinned); the same path was 1 level off at w = 0 in diffusers#5447's
# set-up (Heun). Cause not isolated: see docs/guarantees.md.
ONE_LEVEL = {("StableDiffusionXLImg2ImgPipeline", "denoising_start"): 1}


@pytest.mark.parametrize("cls,keyword", STOCK_CASES, ids=[f"{c.__name__}-{k}" for c, k in STOCK_CASES])
def test_a_stock_keyword_gives_the_stock_images_at_w_0_and_1(cls, keyword):
    ctx = ctx_of(cls)
    kwargs = VALUES[keyword]
    got = outcome(lambda: rlg_images(ctx, kwargs))
    want = [outcome(lambda: stock_image(ctx, net, kwargs)) for net in (ctx.base, ctx.rl)]
    if isinstance(got, type):  # RLG refused (eta where the scheduler ignores it), or the stock pipeline fails too
        assert (got is SamplerError and keyword == "eta") or all(w is got for w in want), (got, want)
        return
    assert not isinstance(want[0], type), f"stock refused {kwargs} ({want[0].__name__}) but RLG ran"
    slack = ONE_LEVEL.get((cls.__name__, keyword), 0)
    assert _levels(got[0], want[0]) <= slack, f"w = 0 differs from the stock base pipeline by {_levels(got[0], want[0])}"
    assert _levels(got[1], want[1]) <= slack, f"w = 1 differs from the stock RL pipeline by {_levels(got[1], want[1])}"


def _levels(a, b) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


REFUSED_CASES = [(c, k) for k in sorted(REFUSED_VALUES) for i, c in enumerate(c for c in CLASSES if k in params(c))
                 if i == 0 and k != "kwargs"]


@pytest.mark.parametrize("cls,keyword", REFUSED_CASES, ids=[f"{c.__name__}-{k}" for c, k in REFUSED_CASES])
def test_a_refused_keyword_is_refused_before_any_image_in_one_line(cls, keyword):
    ctx = ctx_of(cls)
    ctx.pair.denoiser.stats.reset()
    with pytest.raises(SamplerError) as err:
        rlg_images(ctx, {keyword: REFUSED_VALUES[keyword]})
    assert str(err.value) == surface.refusal("sampler.extra", keyword, surface.CALL_KEYWORDS[keyword][1])
    assert "\n" not in str(err.value) and ctx.pair.denoiser.stats.calls == 0


# -- every route into the pipeline goes through the same table ---------------------------------------------------------
def test_guidance_rescale_is_refused_on_every_route(compose):
    from rlg.grid import Grid, run_grid
    from rlg.harness import build
    from rlg.harness.config import ConfigError

    ctx = ctx_of(D.StableDiffusionPipeline)
    why = surface.CALL_KEYWORDS["guidance_rescale"][1]
    for overrides, route in ((("sampler.guidance_rescale=0.7",), "sampler"),
                             (("+sampler.extra.guidance_rescale=0.7",), "sampler.extra")):
        with pytest.raises(ConfigError) as err:
            build.build(compose("debug=fast", *overrides))
        assert str(err.value) == surface.refusal(route, "guidance_rescale", why)
    with pytest.raises(SamplerError, match="guidance_rescale is refused"):
        rlg.generate_grid(ctx.pair, [PROMPT], [0, 1], guidance_rescale=0.7)
    with pytest.raises(SamplerError, match="guidance_rescale is refused"):
        next(run_grid(ctx.pair, Grid((PROMPT,), (0.0,), settings=SamplerSettings(extra={"guidance_rescale": 0.7}))))


@pytest.mark.parametrize("overrides,named", [
    (("+sampler.extra.num_images_per_prompt=2",), "prompts.samples_per_prompt"),
    (("+sampler.extra.output_type=latent", "+sampler.extra.denoising_end=0.5"), "output_type"),
])
def test_keywords_that_crashed_after_the_work_are_refused_at_start_up(compose, overrides, named):
    from rlg.harness import build
    from rlg.harness.config import ConfigError

    with pytest.raises(ConfigError, match=named) as err:
        build.build(compose("debug=fast", *overrides))
    assert "\n" not in str(err.value)


# -- the window is over the steps that run ------------------------------------------------------------------------------
class StepMix(OfficialOrder):
    """The hand loop of a windowed RLG step: step k (k-th distinct timestep of the call) mixes base and RL at
    ``scales[k]``, inside CFG (the official order: CFG per model, then the mix)."""

    def __init__(self, base, rl, scales, cfg):
        super().__init__(base, rl, None, cfg)
        self.scales, self.seen = scales, []

    def forward(self, *args, **kwargs):
        t = float(kwargs.get("timestep", args[1] if len(args) > 1 else 0).flatten()[0])
        if t not in self.seen:
            self.seen.append(t)
        w = self.scales[len(self.seen) - 1]
        kwargs["return_dict"] = False
        b, r = self.base(*args, **kwargs)[0], self.rl(*args, **kwargs)[0]
        (bu, bc), (ru, rc) = b.chunk(2), r.chunk(2)
        pb, pr = bu + self.cfg * (bc - bu), ru + self.cfg * (rc - ru)
        p = pb + w * (pr - pb)
        return (torch.cat([p, p]),)


@pytest.mark.parametrize("cls,kwargs", [(D.StableDiffusionImg2ImgPipeline, {"strength": 0.5}),
                                        (D.StableDiffusionInpaintPipeline, {"strength": 0.5}),
                                        (D.StableDiffusionXLPipeline, {"denoising_end": 0.5}),
                                        (D.StableDiffusionXLImg2ImgPipeline, {"denoising_start": 0.5})])
def test_the_window_is_over_the_steps_that_run(cls, kwargs):
    ctx = ctx_of(cls)
    half, whole = (rlg_images(ctx, kwargs, scales=(1.5,), steps=4, window=StepWindow(0.0, stop))[0]
                   for stop in (0.5, 1.0))
    assert not np.array_equal(half, whole), "window [0, 0.5) gave the images of [0, 1)"
    # 2 of the 4 steps run: [0, 0.5) mixes at the first of them, the RL model alone takes the second
    setattr(ctx.stock, ctx.name, StepMix(ctx.base, ctx.rl, [1.5, 1.0], CFG))
    assert _levels(half, stock_image(ctx, getattr(ctx.stock, ctx.name), kwargs, steps=4)) <= 1
    assert len(getattr(ctx.stock, ctx.name).seen) == 2
    with pytest.raises(ValueError, match="holds none of the 2 steps this call runs"):
        rlg_images(ctx, kwargs, scales=(1.5,), steps=4, window=StepWindow(0.7, 0.8))  # holds step 3 of 4 only


# -- in-place pipeline changes reach both networks, or are refused --------------------------------------------------
def _both(ctx, change, undo, must_change: bool = True):
    """RLG after ``change(pipe)`` equals the stock pipelines after the same change (on each network)."""
    change(ctx.pair.pipe)
    try:
        got = rlg_images(ctx, {})
        want = []
        for net in (ctx.base, ctx.rl):
            setattr(ctx.stock, ctx.name, net)
            change(ctx.stock)
            try:
                want.append(stock_image(ctx, net, {}))
            finally:
                undo(ctx.stock)
    finally:
        undo(ctx.pair.pipe)
    if must_change:
        assert not np.array_equal(want[1], stock_image(ctx, ctx.rl, {})), "the change does nothing here"
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), (_levels(got[0], want[0]),
                                                                                 _levels(got[1], want[1]))


FREEU = dict(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
SLICED = D.models.attention_processor.AttnProcessor
DEFAULT = D.models.attention_processor.AttnProcessor2_0


@pytest.mark.parametrize("change,undo,must_change", [
    (lambda p: p.enable_freeu(**FREEU), lambda p: p.disable_freeu(), True),
    (lambda p: p.unet.set_attn_processor(SLICED()), lambda p: p.unet.set_attn_processor(DEFAULT()), False),
    (lambda p: p.enable_attention_slicing(1), lambda p: p.unet.set_attn_processor(DEFAULT()), False),
    (lambda p: p.fuse_qkv_projections(vae=False),
     lambda p: (p.unfuse_qkv_projections(vae=False), p.unet.set_attn_processor(DEFAULT())), False),
], ids=["freeu", "attn_processor", "attention_slicing", "fuse_qkv"])
def test_an_in_place_change_after_wrapping_reaches_both_networks(change, undo, must_change):
    # processors, slicing and fusing compute the same attention; the check is that both networks get them
    # (pipe.unet.attn_processors is the base's) and that the images are the stock pipeline's with the change
    ctx = ctx_of(D.StableDiffusionPipeline)
    _both(ctx, change, undo, must_change)
    change(ctx.pair.pipe)
    try:
        kinds = [sorted({type(p).__name__ for p in net.attn_processors.values()}) for net in (ctx.pair.denoiser.base,
                                                                                             ctx.pair.denoiser.rl)]
        assert kinds[0] == kinds[1]
        from rlg.pairs import in_place_changes

        assert in_place_changes(ctx.pair.denoiser.base) == in_place_changes(ctx.pair.denoiser.rl)
    finally:
        undo(ctx.pair.pipe)


def test_freeu_made_before_wrapping_is_refused_and_after_wrapping_reaches_both(fixture_root):
    spec = tiny_spec("sd", "full", root=fixture_root)
    pipe = D.StableDiffusionPipeline.from_pretrained(spec.base.id)
    rl = D.UNet2DConditionModel.from_pretrained(spec.rl.id, subfolder="unet")
    pipe.enable_freeu(**FREEU)
    with pytest.raises(PairError, match=r"differ in FreeU \(enable_freeu\).*make it after wrapping"):
        rlg.from_pipeline(pipe, rl=rl)
    pipe.disable_freeu()
    pair = rlg.from_pipeline(pipe, rl=rl)
    pipe.enable_freeu(**FREEU)
    assert all(getattr(b, "s1", None) == 0.9 for b in rl.up_blocks[:2])  # the RL network got it too


def test_pipeline_methods_that_would_miss_the_denoiser_are_refused_and_unwrap_restores_them():
    ctx = ctx_of(D.StableDiffusionXLPipeline)
    pipe = ctx.pair.pipe
    for method, (state, why) in surface.PIPELINE_METHODS.items():
        if state == surface.REFUSED and hasattr(type(pipe), method):
            with pytest.raises(PairError) as err:
                getattr(pipe, method)("anything")
            assert str(err.value) == f"pipe.{method}() is refused: {why}"


def test_an_undeclared_network_method_raises_instead_of_reaching_one_network():
    ctx = ctx_of(D.StableDiffusionPipeline)
    net = ctx.pair.denoiser.base
    net.enable_new_feature = lambda: None  # what a diffusers release could add
    try:
        with pytest.raises(RuntimeError, match="enable_new_feature .*not declared in rlg.surface.NETWORK_METHODS"):
            ctx.pair.pipe.unet.enable_new_feature()
    finally:
        del net.enable_new_feature


@pytest.mark.parametrize("family", ["sd", "sd3"])
def test_every_compatible_scheduler_swap_gives_the_stock_images(family):
    cls = {"sd": D.StableDiffusionPipeline, "sd3": D.StableDiffusion3Pipeline}[family]
    ctx = ctx_of(cls)
    own, stock_own = ctx.pair.pipe.scheduler, ctx.stock.scheduler
    bad = {}
    try:
        for sched in own.compatibles:
            if sched.__name__ in ("DPMSolverSDEScheduler",) or not hasattr(D, sched.__name__):
                continue  # needs torchsde (not installed): diffusers itself refuses
            ctx.pair.pipe.scheduler = sched.from_config(own.config)
            ctx.stock.scheduler = sched.from_config(stock_own.config)
            got = outcome(lambda: rlg_images(ctx, {}))
            want = [outcome(lambda: stock_image(ctx, net, {})) for net in (ctx.base, ctx.rl)]
            if isinstance(got, type) or isinstance(want[0], type):
                if got is not want[0]:
                    bad[sched.__name__] = (got, want[0])
                continue
            if not (np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])):
                bad[sched.__name__] = (_levels(got[0], want[0]), _levels(got[1], want[1]))
    finally:
        ctx.pair.pipe.scheduler, ctx.stock.scheduler = own, stock_own
    assert bad == {}


# -- the user's own LoRA is part of the base (the personalisation row) -------------------------------------------------
@pytest.fixture(scope="module")
def style_lora(tmp_path_factory, fixture_root):
    """A second diffusers-format LoRA for the tiny sd family: the user's style adapter."""
    from peft import get_peft_model_state_dict

    from rlg.tiny_pairs import random_lora

    spec = tiny_spec("sd", "diffusers_lora", root=fixture_root)
    unet = D.UNet2DConditionModel.from_pretrained(spec.base.id, subfolder="unet")
    lora, config = random_lora(unet, "sd", seed=11)
    out = tmp_path_factory.mktemp("style")
    D.StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=get_peft_model_state_dict(lora, adapter_name="default"),
        unet_lora_adapter_metadata={"r": config.r, "lora_alpha": config.lora_alpha,
                                    "target_modules": sorted(config.target_modules)})
    return out / "pytorch_lora_weights.safetensors", spec


def _user_pipe(spec, style, *adapters):
    pipe = D.StableDiffusionPipeline.from_pretrained(spec.base.id)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(style.parent), weight_name=style.name, adapter_name="style")
    if "rl" in adapters:
        pipe.load_lora_weights(spec.rl.id, weight_name=spec.rl.weight_name, adapter_name="rl")
        pipe.set_adapters(list(adapters))
    return pipe


def _call(pipe, **kw):
    with torch.no_grad():
        return u8(pipe(prompt=[PROMPT], negative_prompt=[""], guidance_scale=CFG, height=SIZE, width=SIZE,
                       num_inference_steps=STEPS, output_type="np",
                       generator=[torch.Generator().manual_seed(noise_seed(SEED, 0, 0))], **kw).images[0])


def test_the_users_active_adapter_stays_in_the_base_and_unwrap_restores_the_pipeline(style_lora):
    style, spec = style_lora
    pipe = _user_pipe(spec, style)
    users = _call(pipe)  # the user's pipeline with its adapter, before wrapping
    pair = rlg.from_pipeline(pipe, rl=f"{spec.rl.id}/{spec.rl.weight_name}")
    grid = rlg.generate_grid(pair, [PROMPT], [0, 1], seed=SEED, num_inference_steps=STEPS, guidance_scale=CFG,
                             height=SIZE, width=SIZE, output="np")[0][0]
    assert np.array_equal(grid[0], users), f"w = 0 is {_levels(grid[0], users)} levels from the user's pipeline"
    with_rl = _call(_user_pipe(spec, style, "style", "rl"))  # diffusers' own two-adapter pipeline
    assert _levels(grid[1], with_rl) == 0
    plain = _call(D.StableDiffusionPipeline.from_pretrained(spec.base.id))
    assert _levels(users, plain) > 0  # the style adapter does something
    # unwrap gives the user's pipeline back, and wrapping again works (no "Adapter name rl already in use")
    pair.unwrap()
    assert np.array_equal(_call(pipe), users)
    again = rlg.from_pipeline(pipe, rl=f"{spec.rl.id}/{spec.rl.weight_name}")
    assert np.array_equal(rlg.generate_grid(again, [PROMPT], [0, 1], seed=SEED, num_inference_steps=STEPS,
                                            guidance_scale=CFG, height=SIZE, width=SIZE, output="np")[0][0][1],
                          grid[1])


def test_a_full_rl_network_without_the_users_adapter_is_refused(style_lora):
    style, spec = style_lora
    pipe = _user_pipe(spec, style)
    rl = D.UNet2DConditionModel.from_pretrained(tiny_spec("sd", "full").rl.id, subfolder="unet")
    with pytest.raises(PairError, match=r"differ in LoRA adapters"):
        rlg.from_pipeline(pipe, rl=rl)


# -- accepted and ignored, and values that would not reach the run as written: refused at start-up ---------------------
@pytest.mark.parametrize("overrides,message", [
    (("method.rlg.model=base",), "method rlg: model='base' has no effect (rlg runs both networks); remove method.rlg.model"),
    (("method.rlg.pick=jpeg_compressibility",), "method rlg: pick='jpeg_compressibility' has no effect"),
    (("evaluators.selected=[ocr]", "prompts=tiny", "+evaluators.options.ocr.dtype=float16"),
     "evaluators.options.ocr.dtype has no effect (EasyOCR and PaddleOCR pick their own precision); remove it"),
    (("+evaluators.options.jpeg.dtype=float16",), "evaluators.options.jpeg.dtype has no effect"),
    (("sampler.negative_prompt=1e3",), "sampler.negative_prompt=1e3 would reach the run as the text '1000.0'"),
    (("name=1_1_1",), "name=1_1_1 would reach the run as the text '111'"),
    (("sampler.negative_prompt=true",), "would reach the run as the text 'True'"),
    (("name=${now:%H-%M}",), "uses Hydra's ${now:...} resolver, which each process of a run"),
])
def test_accepted_and_ignored_or_retyped_settings_are_refused_in_one_line(overrides, message):
    from rlg.harness.api import job
    from rlg.harness.config import ConfigError

    with pytest.raises(ConfigError) as err:
        job("debug=fast", *overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
    job("debug=fast", "sampler.negative_prompt='1e3'", "name='1_1_1'")  # quoted: kept as written
    assert job("debug=fast", "sampler.negative_prompt='1e3'").sampler.negative_prompt == "1e3"
