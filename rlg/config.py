"""Typed schemas for the Hydra config: a misspelt key or a wrong type fails at start-up with its name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


@dataclass
class CheckpointConf:
    id: str = MISSING
    revision: Optional[str] = None
    subfolder: Optional[str] = None
    weight_name: Optional[str] = None
    variant: Optional[str] = None


@dataclass
class PairConf:
    name: str = MISSING
    tiny: Optional[str] = None  # a tiny offline family (rlg.fixtures.FAMILIES); fills base and rl
    base: Optional[CheckpointConf] = None
    rl: Optional[CheckpointConf] = None
    rl_kind: str = "full"  # full | diffusers_lora | peft_lora
    pipeline_class: Optional[str] = None
    vae: Optional[CheckpointConf] = None
    dtype: str = "float32"
    allow_pickle: bool = False
    offline: bool = False


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
    batch_size: int = 8  # images per pipeline call (all scales of a (prompt, sample) stay together)
    micro_batch: Optional[int] = 8  # rows per network forward; fixed -> images independent of batching
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class GridConf:
    name: str = MISSING
    scales: List[Any] = MISSING  # validated by rlg.guidance.check_scales (so strings get a clear error)


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


@dataclass
class ShardConf:
    index: int = 0
    count: int = 1


@dataclass
class ReportConf:
    n_resamples: int = 1000
    grid_prompts: int = 8


@dataclass
class RunConf:
    name: str = "quickstart"
    stage: str = "all"
    seed: int = 42
    device: str = "auto"
    pair: PairConf = field(default_factory=PairConf)
    sampler: SamplerConf = field(default_factory=SamplerConf)
    grid: GridConf = field(default_factory=GridConf)
    prompts: PromptsConf = field(default_factory=PromptsConf)
    evaluators: EvaluatorsConf = field(default_factory=EvaluatorsConf)
    tracker: TrackerConf = field(default_factory=TrackerConf)
    paths: PathsConf = field(default_factory=PathsConf)
    shard: ShardConf = field(default_factory=ShardConf)
    report: ReportConf = field(default_factory=ReportConf)


STAGES = ("generate", "evaluate", "report", "all")


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
        sub = [t for t in typing.get_args(hints[key]) or (hints[key],) if dataclasses.is_dataclass(t)]
        child = node._get_node(key)
        if sub and isinstance(child, DictConfig) and not child._is_none():
            out += _unknown_keys(child, sub[0], f"{prefix}{key}.")
    return out


def register_schema() -> None:
    """Make the schema the first entry of conf/config.yaml's defaults list, so Hydra itself rejects a
    misspelt key or a wrong type at composition, and every schema key can be overridden without '+'."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="rlg_schema", node=RunConf)


register_schema()


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
                          "Check the spelling against README.md ('Config groups') or `python run.py --cfg job`") from exc
    unknown = _unknown_keys(cfg, RunConf)
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}; check the spelling against README.md ('Config groups') "
                          "or `python run.py --cfg job`")
    if merged.stage not in STAGES:
        raise ConfigError(f"stage={merged.stage!r}; use one of {', '.join(STAGES)}")
    return merged
