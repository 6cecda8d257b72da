"""Typed schemas for the Hydra config: a misspelt key or a wrong type fails at start-up with its name."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlg.choices import RL_KINDS, SCHEDULERS
from rlg.harness.kinds import KINDS, kind_nodes
from rlg.kind_spec import GroundTruthSampling
from rlg.registry import resolve
from rlg.runtime import DTYPE_NAMES
from rlg.sampler_spec import resolve_micro_batch
from rlg.surface import CALL_KEYWORDS, PARTIAL_SCHEDULE, check_call_keywords, fkc_refusal, refusal


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
class FKCConf:
    """sampler.fkc: the Feynman-Kac correctors' settings (rlg.sampler_spec.FKCConfig), read when
    sampler.correctors=fkc."""

    particles: int = 4  # K particles per image (2 K network rows per image and step)
    resample: str = "ess"  # ess (when ESS < ess_threshold K) | every_step
    ess_threshold: float = 0.5


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
    correctors: str = "none"  # none | fkc: Feynman-Kac correctors, K particles per image (rlg.fkc, docs/fkc.md)
    fkc: FKCConf = field(default_factory=FKCConf)


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
    pick: Optional[str] = None  # best_of_n: the metric that picks the best candidate (never the judge); fk_steering:
    # the reward that steers
    options: Dict[str, Any] = field(default_factory=dict)  # rlg_fkc, fk_steering: their own settings (rlg.methods)


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
class SharedConf:
    """What every run kind's config has; RunConf adds the measurement kinds' own nodes (run_schema)."""

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
    ground_truth: GroundTruthSampling = field(default_factory=GroundTruthSampling)
    barrier_timeout_min: float = 720.0  # ranks launched together wait this long for each other between stages
    low_memory: bool = False  # free the generator before loading evaluators (both never resident at once)
    verbose: bool = False  # third-party loading bars and warnings (silenced by default)
    # the run kind (the config group kind=, rlg.harness.kinds.KINDS); the measurement kinds' own nodes (kl_claim,
    # kl_learned, findings, ...) follow in run_schema()
    kind: str = "images"


def run_schema() -> type:
    """The typed schema of a run: SharedConf and, per kind of rlg.harness.kinds.KINDS with a ``node``, the field
    ``<node>: Optional[<its schema>] = None`` (in registration order), so a kind's settings dataclass is its config
    node and a kind registered later (a plug-in, a test) is in the next call's schema."""
    nodes = tuple((node, resolve(KINDS[kind].schema)) for node, kind in kind_nodes().items())
    return _schema(nodes)


@functools.cache  # one class per set of kinds: every call (Hydra, OmegaConf, the checks) sees the same type
def _schema(nodes: tuple[tuple[str, type], ...]) -> type:
    return dataclasses.make_dataclass("RunConf", [(n, Optional[t], None) for n, t in nodes], bases=(SharedConf,),
                                      namespace={"__module__": __name__})


RunConf = run_schema()  # the built-in kinds' schema (importable and picklable by this name)


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
    "pair.name": "label", "pair.tiny": "image", "pair.rl_kind": "image",
    **{f"pair.{role}{key}": "image" for role in ("base", "rl", "vae")
       for key in ("", ".id", ".revision", ".subfolder", ".weight_name", ".variant")},
    "pair.pipeline_class": "image", "pair.dtype": "image",
    "pair.allow_pickle": "placement", "pair.offline": "placement", "pair.analytic": "job",
    "pair.analytic.preset": "job", "pair.analytic.d": "job", "pair.analytic.beta": "job", "pair.components": "image",
    "sampler.name": "placement", "sampler.scheduler": "image", "sampler.num_inference_steps": "image",
    "sampler.guidance_scale": "image", "sampler.height": "image", "sampler.width": "image",
    "sampler.negative_prompt": "image", "sampler.eta": "image", "sampler.shift": "image",
    "sampler.noise_level": "image", "sampler.guidance_rescale": "refused", "sampler.window": "image",
    "sampler.window.start": "image", "sampler.window.stop": "image", "sampler.window.outside": "image",
    "sampler.batch_size": "placement", "sampler.offload": "gpu", "sampler.compile": "gpu",
    "sampler.vae_tiling": "gpu", "sampler.micro_batch": "gpu", "sampler.extra": "image",
    "sampler.correctors": "image", "sampler.fkc": "image", "sampler.fkc.particles": "image",
    "sampler.fkc.resample": "image", "sampler.fkc.ess_threshold": "image",
    "grid.name": "placement", "grid.scales": "image", "grid.allow_large_scales": "placement",
    "evaluators.selected": "score", "evaluators.batch_size": "placement", "evaluators.device": "gpu",
    "evaluators.options": "score",
}

# How every key of every method entry (conf/method/<name>.yaml, the fields of MethodConf) takes effect, per
# method; tests/test_effects.py fails for a (method, field) missing here and checks each declaration:
#   image      changes the images the method makes (the work list's content keys and the bits)
#   report     changes what the report computes from stored images and scores (best_of_n's picking metric);
#              no image or score changes, so it stays out of the content key
#   refused    any value other than the default (name: other than the entry's own key) is refused at start-up
METHOD_KEY_EFFECTS: Dict[str, str] = {
    "method.rlg.name": "refused", "method.rlg.knobs": "image", "method.rlg.model": "refused",
    "method.rlg.pick": "refused",
    "method.weight_mix.name": "refused", "method.weight_mix.knobs": "image", "method.weight_mix.model": "refused",
    "method.weight_mix.pick": "refused",
    "method.cfg_rl.name": "refused", "method.cfg_rl.knobs": "image", "method.cfg_rl.model": "image",
    "method.cfg_rl.pick": "refused",
    "method.best_of_n.name": "refused", "method.best_of_n.knobs": "image", "method.best_of_n.model": "image",
    "method.best_of_n.pick": "report",
    "method.rlg_fkc.name": "refused", "method.rlg_fkc.knobs": "image", "method.rlg_fkc.model": "refused",
    "method.rlg_fkc.pick": "refused", "method.rlg_fkc.options": "image",
    "method.fk_steering.name": "refused", "method.fk_steering.knobs": "image", "method.fk_steering.model": "image",
    "method.fk_steering.pick": "image", "method.fk_steering.options": "image",
    **{f"method.{m}.options": "refused" for m in ("rlg", "weight_mix", "cfg_rl", "best_of_n")},
}

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the Hydra tree: conf/config.yaml and a folder per group
STAGES = ("generate", "evaluate", "report", "all")
MAX_ABS_SCALE = 10.0  # |w| beyond this is refused unless grid.allow_large_scales=true (the paper's range is [1, 3])
SCALE_DECIMALS = 6  # the report's scale resolution (rlg.report.stats): finer scales are refused at start-up
WANDB_MODES = ("offline", "online", "disabled")
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _unknown_keys(node: Any, schema: type, prefix: str = "") -> list[str]:
    """Keys present in ``node`` that the dataclass ``schema`` does not declare (even if forced with '+')."""
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
    """Make the schema (:func:`run_schema`) the first entry of conf/config.yaml's defaults list, so Hydra itself
    rejects a misspelt key or a wrong type at composition, and every schema key can be overridden without '+'.
    Called on import and by ``rlg.harness.api.compose`` (a kind registered since is then in it)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="rlg_schema", node=run_schema())


def misspelt_override(overrides: list[str]) -> str | None:
    """One line naming a command-line key the schema does not have, with the closest known key, or None.

    Checked before Hydra composes (whose own message is several lines and suggests '+', the wrong fix).
    Keys under free-form nodes (``evaluators.options``, ``sampler.extra``, ``pair.components``,
    ``kl_claim.trainer_kwargs``) and Hydra's own keys are left to the later checks."""
    import difflib
    import typing

    for item in overrides:
        key = item.split("=", 1)[0]
        retyped = retyped_override(item)
        if retyped:
            return retyped
        if "=" not in item or key.startswith(("+", "~", "hydra.", "hydra/")) or "." not in key:
            continue
        schema, path, entry = run_schema(), [], False
        for part in key.split("."):
            if entry:  # the name of an entry of a Dict[str, <dataclass>] (method.<name>.knobs): any name
                path.append(part)
                entry = False
                continue
            fields = {f.name for f in dataclasses.fields(schema)}
            if part not in fields:
                close = difflib.get_close_matches(part, sorted(fields), n=1)
                hint = f"; did you mean '{'.'.join(path + close)}'?" if close else "."
                return (f"unknown config key '{key}'{hint} Check the spelling against docs/configuration.md or "
                        "`rlg-bench --cfg job`")
            path.append(part)
            hint = typing.get_type_hints(schema)[part]
            nested = [t for t in typing.get_args(hint) or (hint,) if dataclasses.is_dataclass(t)]
            if not nested:
                break  # a leaf or a free-form dict: the value checks come later
            entry = typing.get_origin(hint) is dict  # a dict of dataclasses by name: skip the name, check the rest
            schema = nested[-1]
    return None


def _leaf_types(key: str) -> tuple[Any, ...]:
    """The types the schema allows for the dotted ``key`` (empty for a free-form node or an unknown key)."""
    import typing

    schema: Any = run_schema()
    for part in key.split("."):
        if not dataclasses.is_dataclass(schema) or part not in {f.name for f in dataclasses.fields(schema)}:
            return ()
        hint = typing.get_type_hints(schema)[part]
        types = typing.get_args(hint) or (hint,)
        nested = [t for t in types if dataclasses.is_dataclass(t)]
        schema = nested[-1] if nested else types
    return schema if isinstance(schema, tuple) else ()


def retyped_override(item: str) -> str | None:
    """One line when a command-line value for a text field would not reach the run as written, or None:
    Hydra's override grammar reads ``true`` / ``false`` as booleans and ``1e3``, ``1_000``, ``inf`` as numbers,
    which the text field then holds as 'True', '1000.0', ... Quoting keeps the text."""
    key, _, text = item.partition("=")
    key = key.lstrip("+~")
    if not _ or str not in _leaf_types(key):
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        value = OverridesParser.create().parse_override(item).value()
    except Exception:  # Hydra's own parse error comes later, with its message
        return None
    if isinstance(value, (bool, int, float)) and str(value) != text:
        return (f"{key}={text} would reach the run as the text {str(value)!r} (Hydra reads {text} as a "
                f"{type(value).__name__}); quote it to keep it as written: {key}='\"{text}\"'")
    return None


def job_dir_name(override_dirname: str, limit: int = 80) -> str:
    """A valid, unique, readable directory name for a multirun job's overrides: unsafe characters
    (``/``, quotes, spaces, ...) become ``_``; a name that had to change or is longer than ``limit``
    gets a hash of the full overrides, so two jobs never share a directory and rerunning the same sweep
    finds its jobs again (resume)."""
    from rlg.files import sha256_bytes

    safe = re.sub(r"[^A-Za-z0-9._=,+@-]+", "_", override_dirname).strip("._") or "default"
    if safe == override_dirname and len(safe) <= limit:
        return safe
    digest = sha256_bytes(override_dirname.encode())[:10]
    return f"{safe[: limit - 11]}-{digest}"


# A run name is one folder inside paths.root. 64 characters: W&B's limit on a tag (wandb_settings: 1 to 64; the
# tracker tags a run with its name), far inside a filesystem's 255-byte limit on one file name (NAME_MAX on ext4, xfs,
# btrfs, APFS) with the "-sweep" a multirun adds; characters that need no quoting in a shell or in Hydra's override
# syntax, and a first one that makes neither a hidden folder ('.', '..') nor a command-line option ('-').
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RUN_NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
# Paths a user gives: a leading ~ is expanded as a shell would, for every reader after validate()
USER_PATHS = ("paths.root", "paths.cache", "paths.fixtures", "prompts.path", "pair.base.id", "pair.rl.id",
              "pair.vae.id")


def user_path(key: str, value: str) -> str:
    """``value`` with a leading ``~`` or ``~user`` expanded as a shell would (os.path.expanduser); other
    values unchanged. Raises ConfigError (one line naming ``key`` and the fix) for a ``~user`` with no home."""
    expanded = os.path.expanduser(value)
    if expanded.startswith("~"):
        user = expanded[1:].split("/", 1)[0]
        raise ConfigError(f"{key}={value}: '~{user}' is no user's home folder on this machine; give the full path")
    return expanded


def run_dir(root: str, name: str) -> str:
    """The run directory ``<root>/<name>``: ``root`` (paths.root) expanded as a shell would (``user_path``),
    ``name`` one folder inside it (``RUN_NAME``), so a run never writes outside paths.root, into it, or into
    another run. Raises ConfigError with one line that states the rule. The CLI's run and sweep folders
    (conf/config.yaml, resolver ``rlg_run_dir``), its start-up check (rlg.harness.callbacks.StartChecks),
    ``validate`` and ``rlg.run`` all come through here."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise ConfigError(f"name={name!r} is not a run name: the run is the folder <paths.root>/<name>, so a name is "
                          f"{RUN_NAME_RULE} (no '/', not '.' or '..'), e.g. name=my-run_2")
    if not str(root).strip():
        raise ConfigError("paths.root is empty; give the folder that holds the runs, e.g. paths.root=outputs")
    return os.path.join(user_path("paths.root", str(root)), name)


def unknown_option(overrides: Sequence[str], config_dirs: Sequence[str | Path] = ()) -> str | None:
    """One line naming a config group option that has no file (``experiment=quikstart``, ``sampler=ddimm``,
    ``method=[rlg,weigth_mix]``, a sweep ``grid=zoo,paperr``), with the closest one, or None.

    Checked before Hydra composes (whose own message is some 30 lines with no suggestion) against
    ``rlg/conf/<group>/*.yaml`` and the ``config_dirs`` of ``--config-dir``; Hydra's own groups, interpolations,
    sweep functions (``choice(...)``) and a ``hydra.searchpath`` override are left to Hydra."""
    import difflib

    if any(item.lstrip("+").startswith("hydra.searchpath") for item in overrides):
        return None  # more config folders, named in Hydra's own syntax: Hydra checks
    dirs = [CONF_DIR, *map(Path, config_dirs)]
    for item in overrides:
        key, eq, value = item.partition("=")
        group = key.lstrip("+").split("@", 1)[0]
        if not eq or not group or group.startswith(("hydra", "~", "-")) or "." in group or "$" in value \
                or "(" in value:
            continue
        options = {f.relative_to(d / group).with_suffix("").as_posix() for d in dirs if (d / group).is_dir()
                   for f in (d / group).rglob("*.yaml")}
        if not options:  # not a group: a plain key (name=..., seed=...)
            continue
        for option in value.strip().strip("[]").split(","):
            option = option.strip().strip("'\"")
            if option and option != "null" and option not in options:
                close = difflib.get_close_matches(option, sorted(options), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else "."
                return f"unknown {group} '{option}'{hint} `rlg-bench --help` lists every {group} ('Config groups')"
    return None


def unquoted_tilde(overrides: Sequence[str]) -> str | None:
    """One line for a value with an unquoted ``~`` (``paths.root=~/runs``), which Hydra's override syntax
    cannot read (its lexer stops with a multi-line message), naming the two fixes; else None."""
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or key.startswith(("~", "-")) or "~" not in re.sub(r"'[^']*'|\"[^\"]*\"", "", value):
            continue  # no ~ outside quoted strings (Hydra reads '~/x' and ["a ~ b"])
        home = f"{key}=$HOME{value[1:]} from a shell, or " if value == "~" or value.startswith("~/") else ""
        return (f"{item}: Hydra's override syntax does not take an unquoted '~'; write {home}quote the value for "
                f"Hydra ('{key}=\"{value}\"', expanded as a shell would)")
    return None


def override_problem(overrides: Sequence[str], config_dirs: Sequence[str | Path] = ()) -> str | None:
    """The first command-line override Hydra would refuse with a multi-line message, as one line naming the
    fix (misspelt key, unknown group option, unquoted ``~``), or None. The CLI and ``rlg.harness.api.compose``
    (so ``rlg.run``) both check here first."""
    return (misspelt_override(list(overrides)) or unknown_option(overrides, config_dirs)
            or unquoted_tilde(overrides))


register_schema()
if not OmegaConf.has_resolver("rlg_job_dir"):
    OmegaConf.register_new_resolver("rlg_job_dir", job_dir_name)
if not OmegaConf.has_resolver("rlg_run_dir"):
    OmegaConf.register_new_resolver("rlg_run_dir", run_dir)


class ConfigError(ValueError):
    pass


def validate(cfg: DictConfig) -> DictConfig:
    """Merge into the typed schema and check every value; raise ConfigError naming the offending key. The
    user's paths (USER_PATHS) come back with a leading ~ expanded as a shell would."""
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    try:
        merged = OmegaConf.merge(OmegaConf.structured(run_schema()), cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        raise ConfigError(f"bad config key {key!r}: {exc.msg if hasattr(exc, 'msg') else exc}. "
                          "Check the spelling against docs/configuration.md or `rlg-bench --cfg job`") from exc
    problem = as_written_problem(cfg)
    if problem:
        raise ConfigError(problem)
    unknown = _unknown_keys(cfg, run_schema())
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}; check the spelling against docs/configuration.md "
                          "or `rlg-bench --cfg job`")
    for key in USER_PATHS:  # every later reader (store, prompt loader, pair loader) gets the real path
        value = OmegaConf.select(merged, key)
        if isinstance(value, str) and value.startswith("~"):
            OmegaConf.update(merged, key, user_path(key, value))
    check_values(merged)
    return merged


def as_written_problem(cfg: DictConfig) -> str | None:
    """Why a composed value would not reach every process of the run as written, or None: Hydra's
    ``${now:...}`` resolver, which each process of one run (ranks, a resumed run) resolves to another time.
    (Text the override grammar retypes is caught on the command line: :func:`retyped_override`.)"""
    raw = OmegaConf.to_container(cfg, resolve=False)

    def texts(node: Any, key: str):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from texts(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from texts(v, f"{key}[{i}]")
        elif isinstance(node, str):
            yield key, node

    for key, text in texts(raw, ""):
        if "${now:" in text:
            return (f"{key}={text!r} uses Hydra's ${{now:...}} resolver, which each process of a run (every rank, a "
                    "resumed run) resolves to another time; write the value out")

    return None


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


def check_correctors(s: Any) -> None:
    """sampler.correctors and sampler.fkc: a known corrector, FKC settings that are valid, none set without
    correctors=fkc (they would have no effect), and no RLG window or keyword FKC's weights are not derived for."""
    from rlg.sampler_spec import FKCConfig

    _one_of("sampler.correctors", s.correctors, ("none", "fkc"))
    if s.correctors == "none":
        changed = [f"{k}={s.fkc[k]}" for k, v in vars(FKCConf()).items() if s.fkc[k] != v]
        if changed:
            raise ConfigError(f"sampler.fkc.{changed[0]} has no effect without sampler.correctors=fkc; set "
                              "sampler.correctors=fkc or drop it")
        return
    try:
        FKCConfig(s.fkc.particles, s.fkc.resample, s.fkc.ess_threshold)
    except ValueError as exc:
        raise ConfigError(f"sampler.{exc}") from None
    why = fkc_refusal((s.window.start, s.window.stop), s.extra)
    if why:
        raise ConfigError(why)


def check_values(cfg: DictConfig) -> None:
    """Values the schema's types cannot express, checked at start-up (not hours later when used)."""
    from rlg.evaluators.base import REGISTRY
    from rlg.harness.prompts import PACKAGE_SOURCES, SOURCES

    _one_of("stage", cfg.stage, STAGES)
    run_dir(cfg.paths.root, cfg.name)
    grid_scale_values(list(cfg.grid.scales), cfg.grid.allow_large_scales)  # build reads them for every kind
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
    if not PARTIAL_SCHEDULE & set(s.extra):  # else the steps that run are known at the call (rlg.denoiser)
        check_window(s.window.start, s.window.stop, s.window.outside, s.num_inference_steps)
    _at_least("sampler.batch_size", s.batch_size, 1)
    try:
        resolve_micro_batch(s.micro_batch, "cpu")  # the denoiser's own rule (rlg.sampler_spec: no torch)
    except ValueError as exc:
        raise ConfigError(f"sampler.{exc}") from None
    _at_least("sampler.height", s.height, 8, optional=True)
    _at_least("sampler.width", s.width, 8, optional=True)
    if s.guidance_rescale:
        raise ConfigError(refusal("sampler", "guidance_rescale", CALL_KEYWORDS["guidance_rescale"][1]))
    try:  # every keyword for the pipeline is declared in one table (rlg.surface); refused ones go here, by name
        check_call_keywords(s.extra, "sampler.extra")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    check_correctors(s)
    _one_of("prompts.source", cfg.prompts.source, ("inline", "file", *SOURCES, *PACKAGE_SOURCES))
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
