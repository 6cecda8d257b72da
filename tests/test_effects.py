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
}
IMAGE_NODES = {"sampler.window": "sampler.window.start"}  # a node takes effect through its leaves
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
    d = fixture_root / "sd-s0-v1"
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
