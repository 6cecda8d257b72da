"""The effect audit (issue 21, kind 1): every key of the pair, sampler, grid and evaluators schema either
changes the image bits (or scores) on a tiny family, or is refused at start-up, or is declared placement-only
and stays out of the content key. A key added to the schema without a declaration in
``rlg.harness.config.KEY_EFFECTS`` fails here. Tiny families, 2 steps, 32 px, one prompt, one scale."""

from __future__ import annotations

import dataclasses
import typing
from functools import lru_cache

import numpy as np
import pytest

import rlg
from rlg.harness import build
from rlg.harness.config import KEY_EFFECTS, ConfigError, EvaluatorsConf, GridConf, PairConf, SamplerConf
from rlg.store import content_key
from rlg.sampling import RLGSampler, SamplerError, WorkItem

# Module fixtures build shared runs once per process: under pytest-xdist this file stays on one worker.
pytestmark = pytest.mark.xdist_group("test_effects")

BASE = ("experiment=tiny", "debug=fast", "prompts.max_prompts=1", "grid.scales=[1.5]", "evaluators.selected=[jpeg]")
SD3 = ("pair=tiny_sd3_full",)
SDE = (*SD3, "sampler.scheduler=flow_grpo_sde")
ODE = (*SD3, "sampler.scheduler=euler_ode")
LATE = ("sampler.window.start=0.5",)
FKC3 = ("sampler.correctors=fkc", "sampler.fkc.particles=3")  # Feynman-Kac correctors, 3 particles per image

# key -> (overrides of the reference run, overrides that change the key); the images must differ
IMAGE_CASES = {
    "pair.tiny": ((), ("pair.tiny=sd3",)),
    "pair.rl_kind": ((), ("pair.rl_kind=full",)),
    "pair.dtype": ((), ("pair.dtype=bfloat16",)),
    "sampler.scheduler": (SD3, SDE),
    "sampler.num_inference_steps": ((), ("sampler.num_inference_steps=3",)),
    "sampler.guidance_scale": ((), ("sampler.guidance_scale=2",)),
    "sampler.height": ((), ("sampler.height=40",)),
    "sampler.width": ((), ("sampler.width=40",)),
    "sampler.negative_prompt": ((), ("sampler.negative_prompt=blurry",)),
    "sampler.eta": ((), ("sampler.eta=1.0",)),  # tiny sd's own scheduler is DDIM, whose step takes eta
    "sampler.shift": (ODE, (*ODE, "sampler.shift=1.0")),
    "sampler.noise_level": (SDE, (*SDE, "sampler.noise_level=0.3")),
    "sampler.window.start": ((), LATE),
    "sampler.window.stop": ((), ("sampler.window.stop=0.5",)),
    "sampler.window.outside": (LATE, (*LATE, "sampler.window.outside=base")),
    "sampler.extra": ((), ("+sampler.extra.eta=1.0",)),  # passed to the pipeline as is
    "grid.scales": ((), ("grid.scales=[2]",)),
    "sampler.correctors": ((), ("sampler.correctors=fkc",)),
    "sampler.fkc.particles": (FKC3, ("sampler.correctors=fkc", "sampler.fkc.particles=2")),
    "sampler.fkc.resample": (FKC3, (*FKC3, "sampler.fkc.resample=every_step")),
    "sampler.fkc.ess_threshold": (FKC3, (*FKC3, "sampler.fkc.ess_threshold=1.0")),
}
IMAGE_NODES = {"sampler.window": "sampler.window.start", "sampler.fkc": "sampler.fkc.particles"}  # a node takes effect through its leaves
# checkpoint fields: a local copy of the tiny family stands in for a hub pair (no tiny preset sets them)
CHECKPOINT_FIELDS = ("id", "revision", "subfolder", "weight_name", "variant")
REFUSED = {"sampler.guidance_rescale": "sampler.guidance_rescale=0.5"}
SCORE_CASES = {"evaluators.selected": ("evaluators.selected=[jpeg]", "evaluators.selected=[jpeg,digit_prob]"),
               "evaluators.options": ("evaluators.selected=[jpeg]", "+evaluators.options.jpeg.quality=50")}
PLACEMENT_CHANGES = {"sampler.name": "sampler.name=other", "sampler.batch_size": "sampler.batch_size=3",
                     "grid.name": "grid.name=other", "grid.allow_large_scales": "grid.allow_large_scales=true",
                     "pair.allow_pickle": "pair.allow_pickle=true", "pair.offline": "pair.offline=false",
                     "evaluators.batch_size": "evaluators.batch_size=3", "pair.name": "pair.name=other"}
GPU_CHANGES = {"sampler.offload": "sampler.offload=model", "sampler.compile": "sampler.compile=true",
               "sampler.vae_tiling": "sampler.vae_tiling=true", "sampler.micro_batch": "sampler.micro_batch=1",
               "evaluators.device": "evaluators.device=cuda"}


def schema_keys(schema: type, prefix: str) -> list[str]:
    """Every field of a schema dataclass, nested nodes and their leaves, as dotted config keys."""
    out = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}.{f.name}"
        out.append(key)
        nested = [t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if dataclasses.is_dataclass(t)]
        if nested:
            out += schema_keys(nested[0], key)
    return out


ALL_KEYS = [k for schema, prefix in ((PairConf, "pair"), (SamplerConf, "sampler"), (GridConf, "grid"),
                                      (EvaluatorsConf, "evaluators")) for k in schema_keys(schema, prefix)]


def test_every_schema_key_has_a_declared_effect_and_a_check_here():
    assert sorted(set(ALL_KEYS) - set(KEY_EFFECTS)) == [], "declare the new key's effect in KEY_EFFECTS"
    assert sorted(set(KEY_EFFECTS) - set(ALL_KEYS)) == [], "KEY_EFFECTS names a key the schema no longer has"
    checkpoint = {f"pair.{c}.{f}" for c in ("base", "rl", "vae") for f in CHECKPOINT_FIELDS} | \
        {"pair.base", "pair.rl", "pair.vae", "pair.pipeline_class", "pair.components"}
    checked = {**{k: "image" for k in (*IMAGE_CASES, *IMAGE_NODES, *checkpoint)}, **{k: "refused" for k in REFUSED},
               **{k: "score" for k in SCORE_CASES}, **{k: "gpu" for k in GPU_CHANGES},
               **{k: KEY_EFFECTS[k] for k in PLACEMENT_CHANGES}, **{k: "job" for k in ALL_KEYS if "analytic" in k}}
    assert {k: checked.get(k) for k in ALL_KEYS} == {k: KEY_EFFECTS[k] for k in ALL_KEYS}


@lru_cache(maxsize=None)
def _job(overrides: tuple[str, ...]):
    from hydra import compose, initialize_config_dir
    from pathlib import Path

    conf = Path(__file__).resolve().parent.parent / "rlg" / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return build.build(compose("config", overrides=[*BASE, *overrides]))


@lru_cache(maxsize=None)  # the reference runs are shared between the checks
def images(overrides: tuple[str, ...]) -> tuple[bytes, str]:
    """(the image bits of every scale of prompt 0, the content key of the first) for a run with ``overrides``."""
    import json

    job = _job(tuple(overrides))
    pair = _loaded(job.pair)
    items = [WorkItem(0, job.prompts[0].text, 0, job.seed, w) for w in job.scales]
    made = RLGSampler(pair, job.sampler).generate(items)
    key = content_key({**job.identity, "prompt": job.prompts[0].text, "scale": job.scales[0]})
    return b"".join(np.ascontiguousarray(g.image).tobytes() + bytes(str(g.image.shape), "ascii") for g in made), key


_PAIRS: dict[str, object] = {}


def _loaded(spec):
    key = repr(spec.identity())
    if key not in _PAIRS:
        _PAIRS[key] = rlg.load_pair(spec)
    return _PAIRS[key]


@pytest.mark.parametrize("key", sorted(IMAGE_CASES))
def test_an_image_key_changes_the_image_bits(key):
    reference, changed = IMAGE_CASES[key]
    bits_a, key_a = images(tuple(reference))
    bits_b, key_b = images(tuple(changed))
    assert bits_a != bits_b, f"{key}: same images under another setting"
    assert key_a != key_b


def test_checkpoint_fields_are_part_of_the_content_key_and_a_local_copy_gives_the_tiny_images(fixture_root):
    from rlg.tiny_pairs import build_pair

    d = build_pair("sd", fixture_root)  # the tiny family pair.tiny=sd loads (built here if this worker has not yet)
    # the real SD1.5 + Diffusion-DPO preset pointed at the tiny family's folders (its hub pins do not apply)
    local = ("pair=sd15_dpo", "pair.dtype=float32", "pair.offline=true", "pair.base.revision=null",
             "pair.base.variant=null", "pair.rl.revision=null", f"pair.base.id={d / 'base'}")
    full = (*local, f"pair.rl.id={d / 'rl-full'}")
    assert images(full)[0] == images(("pair.rl_kind=full",))[0]  # the same checkpoints by another route
    assert images(full)[0] != images((*local, f"pair.rl.id={d / 'base'}"))[0]  # another RL checkpoint
    ref = content_key(_job(full).identity)
    for change in ("pair.rl.revision=abc", "pair.rl.subfolder=other", "pair.rl.weight_name=w.safetensors",
                   "pair.rl.variant=fp16", "pair.pipeline_class=X", "+pair.components.safety_checker=null"):
        assert content_key(_job((*full, change)).identity) != ref, change
    spec = _job(full).pair  # a vae override (OmegaConf cannot merge a node into the preset's null from the CLI)
    for field in CHECKPOINT_FIELDS:
        vae = rlg.Checkpoint(**{"id": str(d / "base"), field: "x"} if field != "id" else {"id": str(d)})
        assert dataclasses.replace(spec, vae=vae).identity() != spec.identity(), field
    for change, key in (("pair.pipeline_class=StableDiffusionPipeline", "pipeline_class"),
                        ("+pair.components.safety_checker=null", "components")):
        with pytest.raises(ConfigError, match=rf"pair.tiny=sd brings its own checkpoints, so pair.{key} would have"):
            _job((change,))


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_a_refused_key_is_refused_at_start_up(key):
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        _job((REFUSED[key],))


@pytest.mark.parametrize("key", sorted(PLACEMENT_CHANGES))
def test_a_placement_key_changes_neither_the_bits_nor_the_content_key_unless_it_is_a_label(key):
    bits_a, key_a = images(())
    bits_b, key_b = images((PLACEMENT_CHANGES[key],))
    assert bits_a == bits_b
    assert (key_a != key_b) == (KEY_EFFECTS[key] == "label")


@pytest.mark.parametrize("key", sorted(GPU_CHANGES))
def test_a_gpu_key_is_part_of_the_content_key_or_the_evaluator_plan(key):
    if key.startswith("evaluators."):
        pytest.skip("no CUDA device here") if not __import__("torch").cuda.is_available() else None
    ref, changed = _job(()), _job((GPU_CHANGES[key],))
    assert content_key(ref.identity) != content_key(changed.identity)


@pytest.mark.parametrize("key", sorted(SCORE_CASES))
def test_a_score_key_changes_the_evaluator_plan_and_its_version(key):
    from rlg.evaluators.base import get_evaluator

    a, b = (_job((o,)).evaluators for o in SCORE_CASES[key])
    versions = [{p.name: get_evaluator(p.name, **p.options).version for p in plan} for plan in (a, b)]
    assert versions[0] != versions[1]


# -- the same knobs by the library routes: sampler.extra / generate_grid(**kwargs), a pipeline changed in place ---
def test_pass_through_keywords_take_effect_or_are_refused(fixture_root):
    import diffusers

    pair = rlg.load_pair(rlg.tiny_spec("sd", "full", root=fixture_root))
    kw = dict(scales=[1.5], seed=0, num_inference_steps=2, height=32, width=32, output="np")
    plain = rlg.generate_grid(pair, ["a cat"], **kw)[0][0][0]
    assert not np.array_equal(rlg.generate_grid(pair, ["a cat"], eta=1.0, **kw)[0][0][0], plain)  # DDIM: eta acts
    with pytest.raises(SamplerError, match="does not accept"):
        rlg.generate_grid(pair, ["a cat"], not_a_pipeline_argument=1, **kw)
    # the user swaps the pipeline's scheduler between calls: the next call uses it, and eta is now refused
    own = pair.pipe.scheduler
    pair.pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(own.config)
    euler = rlg.generate_grid(pair, ["a cat"], **kw)[0][0][0]
    assert not np.array_equal(euler, plain)
    with pytest.raises(SamplerError, match=r"EulerDiscreteScheduler.step\(\) takes no eta"):
        rlg.generate_grid(pair, ["a cat"], eta=1.0, **kw)
    pair.pipe.scheduler = own
    assert np.array_equal(rlg.generate_grid(pair, ["a cat"], **kw)[0][0][0], plain)


def test_settings_without_effect_are_refused_with_one_line(fixture_root):
    for overrides, message in [(("pair=tiny_sd3_full", "sampler.eta=1.0"), "StableDiffusion3Pipeline takes no eta"),
                               (("pair=tiny_sdxl_full", "sampler.eta=1.0"),
                                r"EulerDiscreteScheduler.step\(\) takes no eta"),
                               (("sampler.window.start=0.5", "sampler.window.stop=0.5"), "contains no step"),
                               (("sampler.window.start=0.3", "sampler.window.stop=0.4"), "contains no step"),
                               (("sampler.window.stop=0.9",), "contains every step, the same images as the default")]:
        with pytest.raises(ConfigError, match=message) as err:
            _job(overrides)
        assert "\n" not in str(err.value)


# -- the method group: every field of every method entry (issue 30, "accepted and ignored") ---------------------------
BON = ("method=[best_of_n]", "method.best_of_n.knobs=[1]")
CFG = ("method=[cfg_rl]", "method.cfg_rl.knobs=[2]")
FKC = ("method=[rlg_fkc]", "method.rlg_fkc.knobs=[3]")
# FK steering: 4 steps with DDIM noise (eta 1), so resampled copies part and two resamplings see different particles
FKS = ("method=[fk_steering]", "method.fk_steering.knobs=[4]", "method.fk_steering.options.lam=30",
       "sampler.num_inference_steps=4", "sampler.eta=1.0")
# key -> (overrides of the reference run, overrides that change the key); the work list's images must differ
METHOD_IMAGE_CASES = {
    "method.rlg.knobs": (("method=[rlg]",), ("method=[rlg]", "method.rlg.knobs=[2]")),
    "method.weight_mix.knobs": (("method=[weight_mix]",), ("method=[weight_mix]", "method.weight_mix.knobs=[2]")),
    "method.cfg_rl.knobs": (CFG, ("method=[cfg_rl]", "method.cfg_rl.knobs=[3]")),
    "method.cfg_rl.model": (CFG, (*CFG, "method.cfg_rl.model=base")),
    "method.best_of_n.knobs": (BON, ("method=[best_of_n]", "method.best_of_n.knobs=[2]")),
    "method.best_of_n.model": (BON, (*BON, "method.best_of_n.model=base")),
    "method.rlg_fkc.knobs": (FKC, ("method=[rlg_fkc]", "method.rlg_fkc.knobs=[2]")),
    "method.rlg_fkc.options": (FKC, (*FKC, "method.rlg_fkc.options.particles=2")),
    "method.fk_steering.knobs": (FKS, (*FKS, "method.fk_steering.knobs=[2]")),
    "method.fk_steering.model": (FKS, (*FKS, "method.fk_steering.model=base")),
    "method.fk_steering.pick": (FKS, (*FKS, "method.fk_steering.pick=jpeg_incompressibility")),
    "method.fk_steering.options": (FKS, (*FKS, "method.fk_steering.options.potential=max")),
}
# each option of the particle methods (one MethodConf field, method.<name>.options), checked like a key
METHOD_OPTION_CASES = {
    "rlg_fkc.resample": (FKC, (*FKC, "method.rlg_fkc.options.resample=every_step")),
    "rlg_fkc.ess_threshold": (FKC, (*FKC, "method.rlg_fkc.options.ess_threshold=1.0")),
    "fk_steering.potential=sum": (FKS, (*FKS, "method.fk_steering.options.potential=sum")),
    "fk_steering.interval": (FKS, (*FKS, "method.fk_steering.options.interval=2")),
    "fk_steering.lam": (FKS, (*FKS, "method.fk_steering.options.lam=-30")),
}
# key -> (the override refused at start-up, the one-line message it gets)
METHOD_REFUSED = {
    **{f"method.{m}.name": (f"method.{m}.name=other", f"method.{m}.name='other'; an entry's name must be its key")
       for m in ("rlg", "weight_mix", "cfg_rl", "best_of_n", "rlg_fkc", "fk_steering")},
    **{f"method.{m}.options": (f"+method.{m}.options.particles=2",
                               f"method {m}: options ['particles'] have no effect (it takes none); remove them")
       for m in ("rlg", "weight_mix", "cfg_rl", "best_of_n")},
    "method.rlg_fkc.model": ("method.rlg_fkc.model=base", "method rlg_fkc: model='base' has no effect"),
    "method.rlg_fkc.pick": ("method.rlg_fkc.pick=jpeg_compressibility",
                            "method rlg_fkc: pick='jpeg_compressibility' has no effect"),
    **{f"method.{m}.model": (f"method.{m}.model=base", f"method {m}: model='base' has no effect")
       for m in ("rlg", "weight_mix")},
    **{f"method.{m}.pick": (f"method.{m}.pick=jpeg_compressibility",
                            f"method {m}: pick='jpeg_compressibility' has no effect") for m in ("rlg", "weight_mix")},
    "method.cfg_rl.pick": ("method.cfg_rl.pick=jpeg_compressibility",
                           "method cfg_rl: pick='jpeg_compressibility' has no effect"),
}
METHOD_SELECTION = {"method.rlg": "rlg", "method.weight_mix": "weight_mix", "method.cfg_rl": "cfg_rl",
                    "method.best_of_n": "best_of_n", "method.rlg_fkc": "rlg_fkc", "method.fk_steering": "fk_steering"}


def method_keys() -> list[str]:
    """Every (method, field) key: the methods of rlg.methods.METHODS (each with its conf/method file) by the
    fields of the MethodConf schema."""
    from rlg.harness.config import CONF_DIR, MethodConf
    from rlg.methods import METHODS

    assert sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml")) == sorted(METHODS)
    return [f"method.{m}.{f.name}" for m in sorted(METHODS) for f in dataclasses.fields(MethodConf)]


def test_every_method_key_has_a_declared_effect_and_a_check_here():
    from rlg.harness.config import METHOD_KEY_EFFECTS

    keys = method_keys()
    assert sorted(set(keys) - set(METHOD_KEY_EFFECTS)) == [], "declare the new key's effect in METHOD_KEY_EFFECTS"
    assert sorted(set(METHOD_KEY_EFFECTS) - set(keys)) == [], "METHOD_KEY_EFFECTS names a key no method has"
    checked = {**{k: "image" for k in METHOD_IMAGE_CASES}, **{k: "refused" for k in METHOD_REFUSED},
               "method.best_of_n.pick": "report"}
    assert {k: checked.get(k) for k in keys} == METHOD_KEY_EFFECTS


@lru_cache(maxsize=None)
def method_images(overrides: tuple[str, ...]) -> tuple[tuple[str, ...], bytes]:
    """(the content keys, the image bits) of every image of a run's work list, made as the generate stage makes
    them: one rlg.grid.run_grid per method grid inside the method's model state."""
    from rlg.grid import run_grid
    from rlg.harness.stages import image_keys, method_grids

    job = _job(overrides)
    pair = _loaded(job.pair)
    made = []
    for method, arms, grid in method_grids(job):
        with method.applied(pair.denoiser, next(iter(arms.values()))):
            made += [(k, res.image) for batch in run_grid(pair, grid, key=image_keys(job, arms)) for k, res in batch]
    return tuple(k for k, _ in made), b"".join(np.ascontiguousarray(im).tobytes() for _, im in made)


@pytest.mark.parametrize("key", sorted(METHOD_IMAGE_CASES) + sorted(METHOD_OPTION_CASES))
def test_a_method_image_key_changes_the_images_and_their_content_keys(key):
    reference, changed = {**METHOD_IMAGE_CASES, **METHOD_OPTION_CASES}[key]
    keys_a, bits_a = method_images(reference)
    keys_b, bits_b = method_images(changed)
    assert bits_a != bits_b, f"{key}: same images under another setting"
    assert set(keys_a) != set(keys_b)


@pytest.mark.parametrize("key", sorted(METHOD_REFUSED))
def test_a_refused_method_key_is_refused_at_start_up_in_one_line(key):
    override, message = METHOD_REFUSED[key]
    select = f"method=[{key.split('.')[1]}]"
    knobs = ("method.cfg_rl.knobs=[2]",) if "cfg_rl" in key else ()  # cfg_rl has no default knobs
    _job((select, *knobs))  # the entry alone starts
    with pytest.raises(ConfigError) as err:
        _job((select, *knobs, override))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_picking_metric_changes_no_image_and_reaches_the_arms_the_report_reads():
    # that the report then picks by it, also on a rerun over stored candidates: tests/test_methods.py
    # test_a_rerun_with_another_picking_metric_is_reported_by_that_metric
    other = (*BON, "method.best_of_n.pick=jpeg_incompressibility")
    assert method_images(BON) == method_images(other)  # picking needs no image: same bits, same content keys
    picks = [{arm.pick for m in _job(o).methods for arm in m.arms()} for o in (BON, other)]
    assert picks == [{"jpeg_compressibility"}, {"jpeg_incompressibility"}]


# -- evaluator options: every constructor keyword of every registered evaluator ------------------------------------
BUILT_CHEAPLY = ("jpeg", "ocr", "digit_prob", "digit_fd", "geneval")  # no weights loaded, or the tiny digits CNN
# the others load large weights before they have a version: their options are checked by declaration only
CLIP_B32 = {"clip_model": "ViT-B-32", "clip_pretrained": "/w/laion.bin", "clip_quick_gelu": False}
MMDET = {"detector": "mmdet"}
# (evaluator, option) -> (the reference build's options, the changed build's options)
OPTION_CHANGES = {
    ("jpeg", "convention"): ({}, {"convention": "flow_grpo_500"}), ("jpeg", "quality"): ({}, {"quality": 50}),
    ("jpeg", "direction"): ({}, {"direction": "compressibility"}),
    ("ocr", "engine"): ({}, {"engine": "paddleocr"}), ("ocr", "model_dir"): ({}, {"model_dir": "/w/easyocr"}),
    ("ocr", "on_engine_error"): ({}, {"on_engine_error": "zero"}),
    ("ocr", "input_convention"): ({}, {"input_convention": "flow_grpo_rgb"}),
    ("digit_fd", "ridge"): ({}, {"ridge": 1e-2}),
    ("digit_prob", "batch_size"): ({}, {"batch_size": 3}), ("digit_fd", "batch_size"): ({}, {"batch_size": 3}),
    ("geneval", "detector"): ({}, MMDET), ("geneval", "detector_path"): ({}, {"detector_path": "other/detector"}),
    ("geneval", "detector_revision"): ({}, {"detector_revision": "abc1234"}),
    ("geneval", "detector_checkpoint"): (MMDET, {**MMDET, "detector_checkpoint": "/w/other.pth"}),
    ("geneval", "detector_config"): (MMDET, {**MMDET, "detector_config": "/w/other_config.py"}),
    ("geneval", "clip_model"): ({}, {"clip_model": "ViT-L-14-336"}),
    ("geneval", "clip_pretrained"): ({}, {"clip_pretrained": "/w/openai.bin", "clip_quick_gelu": True}),
    ("geneval", "clip_quick_gelu"): (CLIP_B32, {**CLIP_B32, "clip_quick_gelu": True}),
    ("geneval", "threshold"): ({}, {"threshold": 0.5}), ("geneval", "counting_threshold"): ({}, {"counting_threshold": 0.5}),
    ("geneval", "max_objects"): ({}, {"max_objects": 4}), ("geneval", "max_overlap"): ({}, {"max_overlap": 0.5}),
    ("geneval", "position_threshold"): ({}, {"position_threshold": 0.2}), ("geneval", "bgcolor"): ({}, {"bgcolor": "#000"}),
    ("geneval", "crop"): ({}, {"crop": False}), ("geneval", "dtype"): ({}, {"dtype": "bfloat16"}),
    ("geneval", "batch_size"): ({}, {"batch_size": 1}), ("geneval", "offline"): ({}, {"offline": True}),
    ("geneval", "cache_dir"): ({}, {"cache_dir": "/w/cache"}),
    # on CUDA the colour classifier runs under fp16 autocast (clip_amp): the device reaches the version there
    ("geneval", "device"): ({"device": "cpu"}, {"device": "cuda"}),
    ("geneval", "clip_amp"): ({"device": "cuda"}, {"device": "cuda", "clip_amp": False}),
}
# options whose check needs files: a changed copy of the digits classifier (made by digits_copy below)
WEIGHTS_OPTIONS = {("digit_prob", "weights"), ("digit_fd", "weights")}
GPU_PASSED = {("ocr", "device"): "cuda"}  # easyocr's gpu= flag: the value must reach the evaluator


def evaluator_options() -> list[tuple[str, str]]:
    """(evaluator, option) for every registered evaluator and every keyword its constructor takes."""
    from rlg.evaluators.base import REGISTRY, constructor_options, evaluator_class

    out = []
    for name in sorted(REGISTRY):
        options, takes_any = constructor_options(evaluator_class(name))
        assert not takes_any, f"{name}'s constructor takes any keyword: its options cannot be enumerated"
        out += [(name, o) for o in sorted(options)]
    return out


def option_effects(name: str) -> dict[str, str]:
    """{option: effect} of the evaluator ``name``: its class's ``option_effects``, "refused" for its ``ignored_options``
    (rlg.evaluators.base.Evaluator)."""
    from rlg.evaluators.base import evaluator_class

    cls = evaluator_class(name)
    return {**cls.option_effects, **dict.fromkeys(getattr(cls, "ignored_options", {}), "refused")}


def test_every_evaluator_option_has_a_declared_effect_and_a_check_here():
    from rlg.evaluators.base import REGISTRY, evaluator_class

    every = evaluator_options()
    declared = [(n, o) for n in sorted(REGISTRY) for o in option_effects(n)]
    assert sorted(set(every) - set(declared)) == [], "declare the new option's effect in its class's option_effects"
    assert sorted(set(declared) - set(every)) == [], "option_effects / ignored_options name an option not taken"
    for name in sorted(REGISTRY):  # each option declared once: with its effect, or refused (ignored_options)
        cls = evaluator_class(name)
        assert not set(cls.option_effects) & set(getattr(cls, "ignored_options", {})), name
        assert set(cls.option_effects.values()) <= {"score", "placement", "gpu"}, name
    cheap = {(n, o) for n, o in every if n in BUILT_CHEAPLY}
    checked = {*OPTION_CHANGES, *WEIGHTS_OPTIONS, *GPU_PASSED,
               *((n, o) for n, o in cheap if option_effects(n)[o] == "refused")}
    assert sorted(cheap - checked) == [], "give the option of a cheaply built evaluator a check here"


def _version(name: str, options: dict) -> str:
    from rlg.evaluators.base import get_evaluator

    return get_evaluator(name, **options).version


@pytest.mark.parametrize("name,option", sorted(OPTION_CHANGES))
def test_an_evaluator_option_changes_the_version_exactly_when_it_changes_the_scores(name, option):
    state = option_effects(name)[option]
    reference, changed = OPTION_CHANGES[(name, option)]
    a, b = _version(name, reference), _version(name, changed)
    if state == "score" or (state == "gpu" and "cuda" in changed.values()):
        assert a != b, f"{name}.{option} changes the scores but not the version that keys them"
    else:
        assert state == "placement" and a == b, f"{name}.{option} is {state} yet changes the version"


@pytest.mark.parametrize("name", ["digit_prob", "digit_fd"])
def test_other_digits_weights_change_the_version(name, tmp_path):
    import shutil
    from pathlib import Path

    import safetensors.torch as st

    from rlg.model_ids import resolve_zoo_id

    own = Path(resolve_zoo_id("zoo:digits_classifier"))
    shutil.copytree(own, tmp_path / "digits")
    weights = st.load_file(own / "model.safetensors")
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1e-3  # another classifier of the same shape
    st.save_file(weights, tmp_path / "digits" / "model.safetensors")
    assert _version(name, {}) != _version(name, {"weights": str(tmp_path / "digits")})


@pytest.mark.parametrize("name,option", sorted(GPU_PASSED))
def test_a_gpu_option_reaches_the_evaluator(name, option):
    from rlg.evaluators.base import get_evaluator

    assert getattr(get_evaluator(name, **{option: GPU_PASSED[(name, option)]}), option) == GPU_PASSED[(name, option)]


def test_a_refused_evaluator_option_is_refused_at_start_up_in_one_line():
    from rlg.evaluators.base import REGISTRY, evaluator_class, get_evaluator

    refused = [(n, o, why) for n in sorted(REGISTRY) for o, why in getattr(evaluator_class(n), "ignored_options",
                                                                           {}).items()]
    assert {n for n, _, _ in refused} == {"jpeg", "ocr", "digit_prob", "digit_fd"}  # each is checked below
    for name, option, why in refused:
        select = (f"evaluators.selected=[{name},jpeg]" if name != "jpeg" else "evaluators.selected=[jpeg]",
                  *(("prompts=tiny",) if name == "ocr" else ()))  # ocr needs prompts that name a text
        _job(select)  # starts without it
        with pytest.raises(ConfigError) as err:
            _job((*select, f"+evaluators.options.{name}.{option}=float16"))
        assert str(err.value) == f"evaluators.options.{name}.{option} has no effect ({why}); remove it"
        with pytest.raises(ValueError) as err:  # the library route (rlg.score_images, get_evaluator) refuses it too
            get_evaluator(name, **{option: "float16"})
        assert str(err.value) == f"evaluator {name}: option {option} has no effect ({why}); remove it"


def test_an_option_forwarded_through_kw_is_enumerated_and_a_misspelt_one_refused_at_start_up():
    from rlg.evaluators.base import constructor_options
    from rlg.evaluators.digits import DigitFD

    assert sorted(constructor_options(DigitFD)[0]) == ["batch_size", "device", "dtype", "ridge", "weights"]
    with pytest.raises(ConfigError) as err:  # DigitFD(**kw) used to take any name, then fail after the images
        _job(("evaluators.selected=[jpeg,digit_fd]", "+evaluators.options.digit_fd.wieghts=zoo:digits_classifier"))
    assert str(err.value) == ("evaluators.options.digit_fd has unknown option(s) ['wieghts']; digit_fd accepts: "
                              "batch_size, device, dtype, ridge, weights")


def test_geneval_refuses_the_mmdet_files_with_the_hf_detector():
    from rlg.evaluators.base import get_evaluator

    for option in ("detector_checkpoint", "detector_config"):  # the hf detector would load detector_path instead
        with pytest.raises(ValueError) as err:
            get_evaluator("geneval", **{option: "/w/mask2former.pth"})
        assert str(err.value) == (f"{option} applies to detector='mmdet' only (the hf detector loads detector_path); "
                                  "remove it or set detector=mmdet")
