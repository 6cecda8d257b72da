"""Typed schemas for the Hydra config: a misspelt key or a wrong type fails at start-up with its name."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlg.choices import RL_KINDS, SCHEDULERS
from rlg.kind_spec import KLClaimSettings, LearnedTruthConfig
from rlg.runtime import DTYPE_NAMES
from rlg.sampler_spec import resolve_micro_batch


@dataclass
class CheckpointConf:
    id: str = MISSING
    revision: Optional[str] = None
    subfolder: Optional[str] = None
    weight_name: Optional[str] = None
    variant: Optional[str] = None


@dataclass
class AnalyticConf:
    # rlg.analytic.PAIR_PRESETS: gaussian_linear | mixture_linear | mixture_quadratic | mixture_tanh
    preset: str = MISSING
    d: int = 2
    beta: float = 1.0


@dataclass
class PairConf:
    name: str = MISSING
    tiny: Optional[str] = None  # a tiny offline family (rlg.tiny_pairs.FAMILIES); fills base and rl
    base: Optional[CheckpointConf] = None
    rl: Optional[CheckpointConf] = None
    rl_kind: str = "full"  # full | diffusers_lora | peft_lora
    pipeline_class: Optional[str] = None
    vae: Optional[CheckpointConf] = None
    dtype: str = "float32"
    allow_pickle: bool = False
    offline: bool = False
    analytic: Optional[AnalyticConf] = None  # a closed-form Gaussian-mixture pair (ground truth), not a pipeline
    # pipeline components passed to from_pretrained as given,
    # e.g. {text_encoder_3: null, tokenizer_3: null} (SD3 w/o T5)
    components: Dict[str, Any] = field(default_factory=dict)


@dataclass
class WindowConf:
    start: float = 0.0
    stop: float = 1.0
    outside: str = "rl"  # rl (official zero_init_step) | base


@dataclass
class SamplerConf:
    name: str = MISSING
    scheduler: str = "default"  # default | ddim | euler_ode | flow_grpo_sde
    num_inference_steps: int = 20
    guidance_scale: float = 4.5
    height: Optional[int] = None
    width: Optional[int] = None
    negative_prompt: Optional[str] = ""
    eta: Optional[float] = None
    shift: Optional[float] = None
    noise_level: float = 0.7
    guidance_rescale: float = 0.0
    window: WindowConf = field(default_factory=WindowConf)
    batch_size: int = 64  # images per pipeline call (whole (prompt, sample) groups; many fill the micro-batches)
    offload: str = "none"  # none | model | sequential (CPU offload for pairs that do not fit)
    compile: bool = False  # torch.compile the denoiser(s)
    vae_tiling: bool = False  # decode large images tile by tile
    micro_batch: Any = "auto"  # rows per forward: int, "auto" (fixed per device type) or null (batch-dependent)
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class GridConf:
    name: str = MISSING
    scales: List[Any] = MISSING  # validated by grid_scale_values at start-up (so strings get a clear error)
    allow_large_scales: bool = False  # lift the |w| <= MAX_ABS_SCALE bound (refusal only: no effect on an image)


@dataclass
class MethodConf:
    """One way to set alignment strength at inference (rlg.methods); a run holds one or several."""

    # rlg | weight_mix | cfg_rl | best_of_n (the entry's key); set by the group's file, so an entry that only a
    # preset's body sets (not selected with method=[...]) has none and is left out, with a warning
    name: Optional[str] = None
    knobs: Optional[List[Any]] = None  # the swept values; null: grid.scales (rlg, weight_mix)
    model: str = "rl"  # cfg_rl, best_of_n: the model that runs alone (rl | base)
    pick: Optional[str] = None  # best_of_n: the metric that picks the best candidate (never the judge)


@dataclass
class PromptsConf:
    name: str = MISSING
    source: str = MISSING  # inline | file | geneval | flow_grpo_ocr | flow_grpo_pickscore | hpsv2 | drawbench | parti
    path: Optional[str] = None  # a local copy (skips the download)
    items: List[str] = field(default_factory=list)
    samples_per_prompt: int = 1
    max_prompts: Optional[int] = None
    sfw: bool = False


@dataclass
class EvaluatorsConf:
    selected: List[str] = field(default_factory=list)
    batch_size: int = 16
    device: str = "cpu"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class WandbConf:
    mode: str = "offline"  # offline | online | disabled
    project: str = "rlg-bench"
    entity: Optional[str] = None
    group: Optional[str] = None
    log_images: int = 64


@dataclass
class TrackerConf:
    wandb: WandbConf = field(default_factory=WandbConf)


@dataclass
class PathsConf:
    root: str = "outputs"
    cache: str = "~/.cache/rlg-bench"
    fixtures: Optional[str] = None
    min_free_gb: float = 1.0  # refuse to start (or go on) with less free disk than this under the run directory


@dataclass
class ShardConf:
    index: int = 0
    count: int = 1


@dataclass
class ReportConf:
    n_resamples: int = 1000
    grid_prompts: int = 8
    grid_samples: int = 2  # image-grid rows per prompt (samples, each labelled with its own noise seed)
    reward: Optional[str] = None  # what the RL model optimises (every section, W&B); None: rlg.metrics.pick_reward


@dataclass
class GroundTruthConf:
    """Settings of the analytic ground-truth experiment (rlg.ground_truth.GroundTruthConfig)."""

    samplers: List[str] = field(default_factory=lambda: ["flow_euler_ode", "flow_grpo_sde", "ddim_eta0", "ddim_eta1"])
    num_inference_steps: int = 100
    n_per_batch: int = 500
    n_batches: int = 8
    noise_level: float = 0.7
    flow_shift: float = 3.0
    init: str = "marginal"
    rl_control: bool = True


@dataclass
class RunConf:
    name: str = "quickstart"
    stage: str = "all"
    seed: int = 42
    device: str = "auto"
    pair: PairConf = field(default_factory=PairConf)
    sampler: SamplerConf = field(default_factory=SamplerConf)
    grid: GridConf = field(default_factory=GridConf)
    # the methods of the run, by name (conf/method/*.yaml; method=[rlg,weight_mix] selects several);
    # empty: rlg alone over grid.scales
    method: Dict[str, MethodConf] = field(default_factory=dict)
    prompts: PromptsConf = field(default_factory=PromptsConf)
    evaluators: EvaluatorsConf = field(default_factory=EvaluatorsConf)
    tracker: TrackerConf = field(default_factory=TrackerConf)
    paths: PathsConf = field(default_factory=PathsConf)
    shard: ShardConf = field(default_factory=ShardConf)
    report: ReportConf = field(default_factory=ReportConf)
    ground_truth: GroundTruthConf = field(default_factory=GroundTruthConf)
    barrier_timeout_min: float = 720.0  # ranks launched together wait this long for each other between stages
    low_memory: bool = False  # free the generator before loading evaluators (both never resident at once)
    verbose: bool = False  # third-party loading bars and warnings (silenced by default)
    # the run kind (the config group kind=, rlg.harness.kinds.KINDS) and the settings of the measurement kinds
    # (rlg.kind_spec: the library's own dataclasses, set by the kl_claim_* / kl_ground_truth_learned presets)
    kind: str = "images"
    kl_claim: Optional[KLClaimSettings] = None
    kl_learned: Optional[LearnedTruthConfig] = None


# How every key of the pair, sampler, grid and evaluators schema takes effect; tests/test_effects.py (the effect
# audit) fails for a key missing here and checks each declaration on a tiny family:
#   image      changes the image bits (part of the content key)
#   score      changes the scores (part of the evaluator version or selection)
#   refused    any non-default value is refused at start-up (it could not take effect)
#   placement  never changes an image or a score; stays out of the content key
#   label      a name: no effect on the bits, yet part of the content key (re-keying would orphan every stored
#              image; known cost: renaming a preset regenerates)
#   gpu        changes bits only where the tiny CPU audit cannot reach (GPU kernels, tiled VAE above its tile
#              size, offload hooks); kept in the content key
#   job        selects another kind of job (closed-form ground truth), no image
KEY_EFFECTS: Dict[str, str] = {
    "pair.name": "label", "pair.tiny": "image", "pair.base": "image", "pair.base.id": "image",
    "pair.base.revision": "image", "pair.base.subfolder": "image", "pair.base.weight_name": "image",
    "pair.base.variant": "image", "pair.rl": "image", "pair.rl.id": "image", "pair.rl.revision": "image",
    "pair.rl.subfolder": "image", "pair.rl.weight_name": "image", "pair.rl.variant": "image", "pair.rl_kind": "image",
    "pair.pipeline_class": "image", "pair.vae": "image", "pair.vae.id": "image", "pair.vae.revision": "image",
    "pair.vae.subfolder": "image", "pair.vae.weight_name": "image", "pair.vae.variant": "image", "pair.dtype": "image",
    "pair.allow_pickle": "placement", "pair.offline": "placement", "pair.analytic": "job",
    "pair.analytic.preset": "job", "pair.analytic.d": "job", "pair.analytic.beta": "job", "pair.components": "image",
    "sampler.name": "placement", "sampler.scheduler": "image", "sampler.num_inference_steps": "image",
    "sampler.guidance_scale": "image", "sampler.height": "image", "sampler.width": "image",
    "sampler.negative_prompt": "image", "sampler.eta": "image", "sampler.shift": "image",
    "sampler.noise_level": "image", "sampler.guidance_rescale": "refused", "sampler.window": "image",
    "sampler.window.start": "image", "sampler.window.stop": "image", "sampler.window.outside": "image",
    "sampler.batch_size": "placement", "sampler.offload": "gpu", "sampler.compile": "gpu",
    "sampler.vae_tiling": "gpu", "sampler.micro_batch": "gpu", "sampler.extra": "image",
    "grid.name": "placement", "grid.scales": "image", "grid.allow_large_scales": "placement",
    "evaluators.selected": "score", "evaluators.batch_size": "placement", "evaluators.device": "gpu",
    "evaluators.options": "score",
}

STAGES = ("generate", "evaluate", "report", "all")
MAX_ABS_SCALE = 10.0  # |w| beyond this is refused unless grid.allow_large_scales=true (the paper's range is [1, 3])
SCALE_DECIMALS = 6  # the report's scale resolution (rlg.report.stats): finer scales are refused at start-up
WANDB_MODES = ("offline", "online", "disabled")
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _unknown_keys(node: Any, schema: type, prefix: str = "") -> list[str]:
    """Keys present in ``node`` that the dataclass ``schema`` does not declare (even if forced with '+')."""
    import dataclasses
    import typing

    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    out = []
    for key in node.keys() if isinstance(node, DictConfig) else []:
        if key not in fields:
            out.append(prefix + str(key))
            continue
        sub = [t for t in typing.get_args(hints[key]) or (hints[key],) if dataclasses.is_dataclass(t)
               and typing.get_origin(hints[key]) is not dict]
        child = node._get_node(key)
        if sub and isinstance(child, DictConfig) and not child._is_none():
            out += _unknown_keys(child, sub[0], f"{prefix}{key}.")
        values = typing.get_args(hints[key])  # Dict[str, <dataclass>]: every entry against the dataclass
        if typing.get_origin(hints[key]) is dict and dataclasses.is_dataclass(values[-1]) \
                and isinstance(child, DictConfig):
            for k in child.keys():
                out += _unknown_keys(child._get_node(k), values[-1], f"{prefix}{key}.{k}.")
    return out


def register_schema() -> None:
    """Make the schema the first entry of conf/config.yaml's defaults list, so Hydra itself rejects a
    misspelt key or a wrong type at composition, and every schema key can be overridden without '+'."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="rlg_schema", node=RunConf)


def misspelt_override(overrides: list[str]) -> str | None:
    """One line naming a command-line key the schema does not have, with the closest known key, or None.

    Checked before Hydra composes (whose own message is several lines and suggests '+', the wrong fix).
    Keys under free-form nodes (``evaluators.options``, ``sampler.extra``, ``pair.components``,
    ``kl_claim.trainer_kwargs``) and Hydra's own keys are left to the later checks."""
    import dataclasses
    import difflib
    import typing

    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or key.startswith(("+", "~", "hydra.", "hydra/")) or "." not in key:
            continue
        schema, path, entry = RunConf, [], False
        for part in key.split("."):
            if entry:  # the name of an entry of a Dict[str, <dataclass>] (method.<name>.knobs): any name
                path.append(part)
                entry = False
                continue
            fields = {f.name for f in dataclasses.fields(schema)}
            if part not in fields:
                close = difflib.get_close_matches(part, sorted(fields), n=1)
                hint = f"; did you mean '{'.'.join(path + close)}'?" if close else "."
                return (f"unknown config key '{key}'{hint} Check the spelling against README.md ('Config groups') or "
                        "`rlg-bench --cfg job`")
            path.append(part)
            hint = typing.get_type_hints(schema)[part]
            nested = [t for t in typing.get_args(hint) or (hint,) if dataclasses.is_dataclass(t)]
            if not nested:
                break  # a leaf or a free-form dict: the value checks come later
            entry = typing.get_origin(hint) is dict  # a dict of dataclasses by name: skip the name, check the rest
            schema = nested[-1]
    return None


def job_dir_name(override_dirname: str, limit: int = 80) -> str:
    """A valid, unique, readable directory name for a multirun job's overrides: unsafe characters
    (``/``, quotes, spaces, ...) become ``_``; a name that had to change or is longer than ``limit``
    gets a hash of the full overrides, so two jobs never share a directory and rerunning the same sweep
    finds its jobs again (resume)."""
    import hashlib

    safe = re.sub(r"[^A-Za-z0-9._=,+@-]+", "_", override_dirname).strip("._") or "default"
    if safe == override_dirname and len(safe) <= limit:
        return safe
    digest = hashlib.sha256(override_dirname.encode()).hexdigest()[:10]
    return f"{safe[: limit - 11]}-{digest}"


register_schema()
if not OmegaConf.has_resolver("rlg_job_dir"):
    OmegaConf.register_new_resolver("rlg_job_dir", job_dir_name)


class ConfigError(ValueError):
    pass


def validate(cfg: DictConfig) -> DictConfig:
    """Merge into the typed schema; raise ConfigError naming the offending key."""
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConf), cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        raise ConfigError(f"bad config key {key!r}: {exc.msg if hasattr(exc, 'msg') else exc}. "
                          "Check the spelling against README.md ('Config groups') or `rlg-bench --cfg job`") from exc
    unknown = _unknown_keys(cfg, RunConf)
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}; check the spelling against README.md ('Config groups') "
                          "or `rlg-bench --cfg job`")
    check_values(merged)
    return merged


def check_complete(cfg: DictConfig) -> None:
    """Every ??? of the presets (e.g. an inpainting preset's image) filled in before a run starts."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} has no value (it is ??? in its preset); set it on the command line, "
                          f"e.g. {missing[0]}=...")


def _one_of(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not valid; use one of: {', '.join(map(str, allowed))}")


def _at_least(key: str, value: Any, low: float, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value < low:
        raise ConfigError(f"{key}={value!r} is not valid; it must be {'null or ' if optional else ''}>= {low:g}")


def grid_scale_values(scales: list[Any], allow_large: bool = False) -> list[float]:
    """The grid's RLG scales as floats, or ConfigError naming the fix: not a finite number, none, a duplicate,
    two scales the report cannot tell apart (they differ only beyond SCALE_DECIMALS decimals, so the report
    would pool them under one label), or |w| > MAX_ABS_SCALE without ``grid.allow_large_scales=true``.
    Pure Python: runs before torch is imported."""
    import math

    out = []
    for i, w in enumerate(scales):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ConfigError(f"RLG scale #{i} is {w!r} ({type(w).__name__}); scales must be finite numbers, "
                              "e.g. grid.scales=[0,1,1.5]")
        out.append(float(w))
    if not out:
        raise ConfigError("grid.scales is empty; give at least one scale, e.g. grid.scales=[0,1,2]")
    dup = sorted({w for w in out if out.count(w) > 1})
    if dup:
        raise ConfigError(f"grid.scales has duplicates {dup}; each scale once")
    fine = [w for w in out if abs(w - round(w, SCALE_DECIMALS)) > 1e-9]  # 1e-9: float noise such as 0.1 + 0.2
    if fine:
        raise ConfigError(f"grid.scales {fine} differ from {[round(w, SCALE_DECIMALS) for w in fine]} only beyond "
                          f"{SCALE_DECIMALS} decimals, which the report cannot tell apart; round them")
    merged = sorted({round(w, SCALE_DECIMALS) for w in out if [round(v, SCALE_DECIMALS) for v in out].count(
        round(w, SCALE_DECIMALS)) > 1})
    if merged:
        raise ConfigError(f"grid.scales has scales the report would pool as {merged}; each scale once")
    large = [w for w in out if abs(w) > MAX_ABS_SCALE]
    if large and not allow_large:
        raise ConfigError(f"grid.scales {large} are beyond |w| <= {MAX_ABS_SCALE:g} (the paper uses 1 to 3; larger "
                          "scales give noise); if you mean it, add grid.allow_large_scales=true")
    return out


def check_window(start: float, stop: float, outside: str, num_steps: int) -> None:
    """Refuse an RLG window that changes nothing or makes every scale the same image: one holding no step of
    the ``num_steps`` schedule (every scale = the RL or base model), or one narrower than [0, 1] that still
    holds every step (the default's images under another content key). rlg.guidance.StepWindow's rule."""
    from rlg.guidance import StepWindow

    inside = StepWindow(start, stop, outside).steps_inside(num_steps)
    where = f"sampler.window start={start:g} stop={stop:g} on the {num_steps}-step schedule (step i is inside " \
            "when start <= i/steps < stop)"
    if not inside:
        model = "RL" if outside == "rl" else "base"
        raise ConfigError(f"{where} contains no step, so every scale would give the {model} model's image; widen "
                          "the window or raise sampler.num_inference_steps")
    if len(inside) == num_steps and (start, stop) != (0.0, 1.0):
        raise ConfigError(f"{where} contains every step, the same images as the default window; drop the override")
    if len(inside) == num_steps and outside != "rl":
        raise ConfigError("sampler.window.outside has no effect when the window covers every step (start=0, stop=1); "
                          "narrow the window or drop the override")


def check_values(cfg: DictConfig) -> None:
    """Values the schema's types cannot express, checked at start-up (not hours later when used)."""
    from pathlib import Path

    from rlg.evaluators.base import REGISTRY
    from rlg.harness.prompts import SOURCES

    _one_of("stage", cfg.stage, STAGES)
    if cfg.kind in ("images", "ground_truth"):  # the kinds whose scales are the grid's
        grid_scale_values(list(cfg.grid.scales), cfg.grid.allow_large_scales)
    for key in ("device", "evaluators.device"):
        value = OmegaConf.select(cfg, key)
        if not DEVICE.match(str(value)):
            raise ConfigError(f"{key}={value!r} is not valid; use auto, cpu, cuda, cuda:N or mps")
    _one_of("pair.rl_kind", cfg.pair.rl_kind, RL_KINDS)
    _one_of("sampler.offload", cfg.sampler.offload, ("none", "model", "sequential"))
    _one_of("pair.dtype", cfg.pair.dtype, DTYPE_NAMES)
    s = cfg.sampler
    _one_of("sampler.scheduler", s.scheduler, SCHEDULERS)
    _one_of("sampler.window.outside", s.window.outside, ("rl", "base"))
    if not 0.0 <= s.window.start <= s.window.stop <= 1.0:
        raise ConfigError(f"sampler.window needs 0 <= start <= stop <= 1 (fractions of the schedule), got "
                          f"start={s.window.start}, stop={s.window.stop}")
    _at_least("sampler.num_inference_steps", s.num_inference_steps, 1)
    check_window(s.window.start, s.window.stop, s.window.outside, s.num_inference_steps)
    _at_least("sampler.batch_size", s.batch_size, 1)
    try:
        resolve_micro_batch(s.micro_batch, "cpu")  # the denoiser's own rule (rlg.sampler_spec: no torch)
    except ValueError as exc:
        raise ConfigError(f"sampler.{exc}") from None
    _at_least("sampler.height", s.height, 8, optional=True)
    _at_least("sampler.width", s.width, 8, optional=True)
    if s.guidance_rescale:
        raise ConfigError("sampler.guidance_rescale > 0 makes classifier-free guidance nonlinear, so mixing raw "
                          "predictions no longer equals the official order; set sampler.guidance_rescale=0")
    _one_of("prompts.source", cfg.prompts.source, ("inline", "file", *SOURCES))
    path = cfg.prompts.path
    if path and not Path(path).expanduser().is_file():  # the loader reads it later; refuse before any import
        raise ConfigError(f"prompt file {Path(path).expanduser()} does not exist; fix prompts.path")
    _at_least("prompts.samples_per_prompt", cfg.prompts.samples_per_prompt, 1)
    _at_least("prompts.max_prompts", cfg.prompts.max_prompts, 1, optional=True)
    unknown = [e for e in cfg.evaluators.selected if e not in REGISTRY]
    if unknown:
        raise ConfigError(f"unknown evaluator(s) {unknown} in evaluators.selected; known evaluators: "
                          f"{', '.join(sorted(REGISTRY))}")
    dup = sorted({e for e in cfg.evaluators.selected if list(cfg.evaluators.selected).count(e) > 1})
    if dup:
        raise ConfigError(f"evaluators.selected lists {dup} more than once; list each evaluator once")
    _at_least("evaluators.batch_size", cfg.evaluators.batch_size, 1)
    _one_of("tracker.wandb.mode", cfg.tracker.wandb.mode, WANDB_MODES)
    _at_least("shard.count", cfg.shard.count, 1)
    if not 0 <= cfg.shard.index < cfg.shard.count:
        raise ConfigError(f"shard.index={cfg.shard.index} is outside 0..shard.count-1 ({cfg.shard.count - 1})")
    if not cfg.barrier_timeout_min > 0:
        raise ConfigError(f"barrier_timeout_min={cfg.barrier_timeout_min} is not valid; it must be > 0 (minutes a rank "
                          "waits for the others between stages, e.g. the longest stage)")
    _at_least("report.n_resamples", cfg.report.n_resamples, 0)
    _at_least("report.grid_prompts", cfg.report.grid_prompts, 0)
    _at_least("report.grid_samples", cfg.report.grid_samples, 1)
    _at_least("paths.min_free_gb", cfg.paths.min_free_gb, 0)
