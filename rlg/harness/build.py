"""The one border between the Hydra config and the harness: ``build(cfg) -> Job``.

This module (with the schema in ``rlg.harness.config``) is the only reader of the composed
``DictConfig``. Everything a run can refuse is checked here, before any work: the schema and values,
the grid, evaluator option names and values, settings that would silently have no effect, the
shard/rank layout and the device; prompts a selected evaluator cannot score are found here and
refused by generation before it makes an image. What comes out is a frozen :class:`Job` of plain
objects; the stages (``rlg.harness.stages``) never see the config. Raises the errors in
``rlg.harness.runner.USER_ERRORS``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from omegaconf import DictConfig, OmegaConf

from rlg.harness.config import ConfigError, RunConf, ShardConf, check_complete, grid_scale_values, run_dir, validate
from rlg.harness.kinds import KINDS, KindError, Settings, kind_nodes
from rlg.harness.provenance import redact
from rlg.harness.prompts import Prompt, load_prompts
from rlg.metrics import Metric, settle_reward
from rlg.registry import resolve
from rlg.store import content_key

if TYPE_CHECKING:  # torch-free modules, imported where used so that `import rlg.harness` stays light
    from rlg.methods.base import Method
    from rlg.pairs import PairSpec
    from rlg.sampler_spec import SamplerSettings

log = logging.getLogger("rlg")


@dataclass(frozen=True)
class EvaluatorPlan:
    """One selected evaluator: its registry name and constructor options, checked at start-up."""

    name: str
    options: dict[str, Any]


def use_devices(evaluators) -> bool:
    """Whether any of the ``EvaluatorPlan``s runs a model on a device (was given a ``device`` option)."""
    return any("device" in e.options for e in evaluators)


@dataclass(frozen=True)
class Placement:
    """Where and how the pair runs (does not change an image's bits, except the device type)."""

    device: str  # a torch device string, e.g. "cpu", "cuda:1" (this rank's)
    offload: str = "none"
    compile: bool = False
    vae_tiling: bool = False


@dataclass(frozen=True)
class Job:
    """A checked run plan. Built once by :func:`build`; the stages read nothing else."""

    name: str  # the run name: directory <paths.root>/<name>, column ``run_name`` of every image row
    run_dir: Path  # <paths.root>/<name>, ~ expanded and checked (rlg.harness.config.run_dir): the CLI's folder
    verbose: bool  # third-party loading bars and warnings too
    kind: str  # a name of rlg.harness.kinds.KINDS (the config group kind=)
    stages: tuple[str, ...]  # what this invocation runs; a measurement's ("report",): the report from stored rows
    rank: int
    world: int
    distributed: bool  # ranks launched together (torchrun / accelerate / submitit tasks): they share barriers
    seed: int
    scales: tuple[float, ...]
    config: RunConf  # the typed, validated config (a dataclass tree: no DictConfig)
    resolved_config: dict[str, Any]  # redacted, for meta.json and trackers
    prompts: tuple[Prompt, ...] = ()
    prompt_info: dict[str, Any] = field(default_factory=dict)
    pair: PairSpec | None = None  # images jobs
    placement: Placement | None = None  # None: the job makes no image (stage evaluate or report)
    sampler: SamplerSettings | None = None  # images jobs
    # content-key fields besides prompt/sample/seed/scale; empty (and config_id "") when the job makes no image
    identity: dict[str, Any] = field(default_factory=dict)
    config_id: str = ""  # short hash of ``identity``: one series per (run, config_id) in every report
    evaluators: tuple[EvaluatorPlan, ...] = ()
    metrics: tuple[Metric, ...] = ()  # what the selected evaluators write (each declared by its evaluator)
    reward: str | None = None  # the run's reward, decided once here (run_reward); every report section reads it
    reward_note: str | None = None  # why the reward is not the one report.reward named
    evaluator_device: str = "cpu"
    prompt_problem: str | None = None  # a selected evaluator cannot score these prompts: generate refuses to start
    tracker_mode: str | None = None  # None: the user's W&B setup decides (WANDB_MODE, `wandb offline`, login)
    methods: tuple[Method, ...] = ()  # images jobs: plain RLG over ``scales`` by default
    settings: Settings | None = None  # a measurement kind's settings (made by its Kind's builder)
    launch_rank: int = 0  # this process among the ranks launched with it (0 for manual shards): rank 0 reports


def submitit_ranks(env: dict[str, str] | None = None) -> bool:
    """Map the tasks of a submitit job (SLURM ``tasks_per_node`` > 1, or submitit's local executor)
    to torch.distributed ranks, the way submitit documents it: ``TorchDistributedEnvironment().export()``
    sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT from the job's
    environment. Keeps CUDA_VISIBLE_DEVICES as it is (each rank then takes ``cuda:LOCAL_RANK``).
    Returns whether it exported; nothing happens outside a submitit job, with one task, or when a
    launcher (torchrun, accelerate) already set WORLD_SIZE."""
    env = os.environ if env is None else env
    if not env.get("SUBMITIT_EXECUTOR") or "WORLD_SIZE" in env:
        return False
    import submitit

    job = submitit.JobEnvironment()
    if job.num_tasks <= 1:
        return False
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


def resolve_rank(shard: ShardConf, env: dict[str, str] | None = None) -> tuple[int, int, bool]:
    """(rank, world size, distributed) of this process in the whole work list.

    Ranks launched together (torchrun / accelerate launch / the tasks of a submitit job: WORLD_SIZE > 1)
    share barriers; manual shards (``shard.index`` of ``shard.count`` separate launches, e.g. a SLURM
    array) never wait for each other. Both compose: shard i of n, each launched with W ranks, is
    ranks i*W .. i*W+W-1 of n*W, so every (prompt, sample) group falls to exactly one process."""
    env = os.environ if env is None else env
    if not 0 <= shard.index < shard.count:
        raise ConfigError(f"shard.index={shard.index} is outside 0..shard.count-1 ({shard.count - 1})")
    ranks = int(env.get("WORLD_SIZE", "1"))
    if ranks > 1:
        return shard.index * ranks + int(env.get("RANK", "0")), shard.count * ranks, True
    return shard.index, shard.count, False


def resolve_device(name: str, local_rank: int = 0, cuda_count: int | None = None) -> str:
    """The torch device string for ``device`` = auto | cpu | mps | cuda | cuda:N on this rank.

    ``auto`` and a bare ``cuda`` mean this rank's own GPU, ``cuda:LOCAL_RANK`` (torchrun and
    accelerate put one process per GPU); several ranks never share GPU 0 by accident."""
    if cuda_count is None:
        import torch

        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == "auto":
        name = "cuda" if cuda_count else "cpu"
    if name == "cuda":
        if not cuda_count:
            raise ConfigError("device=cuda but no CUDA device is visible; use device=cpu (or auto)")
        if local_rank >= cuda_count:
            raise ConfigError(f"rank with LOCAL_RANK={local_rank} has no GPU of its own ({cuda_count} visible); "
                              "launch at most one process per GPU")
        return f"cuda:{local_rank}"
    return name


def grid_scales(scales: list[Any], allow_large: bool = False) -> tuple[float, ...]:
    """The checked scales (rlg.harness.config.grid_scale_values); warns about negative ones."""
    out = grid_scale_values(list(scales), allow_large)
    if any(w < 0 for w in out):
        log.warning("negative RLG scales %s move away from the RL model (allowed, but unusual)",
                    [w for w in out if w < 0])
    return tuple(out)


def pair_spec(conf) -> PairSpec:
    """rlg.pairs.PairSpec from the typed ``pair`` node."""
    from rlg.pairs import Checkpoint, PairSpec, tiny_spec

    p = conf.pair
    if p.tiny:
        ignored = [k for k in ("base", "rl", "vae", "pipeline_class") if getattr(p, k) is not None] + \
            (["components"] if p.components else [])
        if ignored:  # the tiny family fills these; a value here would be dropped without a word
            raise ConfigError(f"pair.tiny={p.tiny} brings its own checkpoints, so pair.{ignored[0]} would have no "
                              f"effect; drop it, or set pair.tiny=null to use pair.base / pair.rl")
        spec = tiny_spec(p.tiny, p.rl_kind, root=conf.paths.fixtures)
        spec.name, spec.dtype = p.name, p.dtype  # the dtype applies to tiny pairs as to any other
        return spec
    if p.base is None or p.rl is None:
        raise ConfigError(f"pair {p.name!r} needs pair.base.id and pair.rl.id (or pair.tiny=<family>)")
    def ck(c):
        if c is None:
            return None
        fields = dataclasses.asdict(c)
        if fields["id"].startswith("zoo:"):  # a model of the offline zoo shipped inside the package
            from rlg.model_ids import resolve_zoo_id

            try:
                fields["id"] = resolve_zoo_id(fields["id"])
            except FileNotFoundError as exc:
                raise ConfigError(str(exc)) from exc
        return Checkpoint(**fields)

    return PairSpec(name=p.name, base=ck(p.base), rl=ck(p.rl), rl_kind=p.rl_kind, pipeline_class=p.pipeline_class,
                    vae=ck(p.vae), dtype=p.dtype, allow_pickle=p.allow_pickle, offline=p.offline,
                    components=dict(p.components))


def sampler_settings(s) -> SamplerSettings:
    """rlg.sampling.SamplerSettings from the typed ``sampler`` node (inpainting inputs opened here)."""
    from PIL import Image

    from rlg.guidance import StepWindow
    from rlg.sampler_spec import FKCConfig, SamplerSettings

    extra = dict(s.extra)
    for k in ("image", "mask_image"):  # inpainting inputs are given as paths
        if isinstance(extra.get(k), str):
            path = Path(extra[k]).expanduser()
            if not path.is_file():
                raise ConfigError(f"sampler.extra.{k}={path} does not exist; fix the path")
            extra[k] = Image.open(path).convert("L" if k == "mask_image" else "RGB")
    return SamplerSettings(num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                           height=s.height, width=s.width, negative_prompt=s.negative_prompt, eta=s.eta,
                           guidance_rescale=s.guidance_rescale, extra=extra, scheduler=s.scheduler, shift=s.shift,
                           noise_level=s.noise_level, micro_batch=s.micro_batch,
                           window=StepWindow(start=s.window.start, stop=s.window.stop, outside=s.window.outside),
                           correctors=None if s.correctors == "none" else FKCConfig(s.fkc.particles, s.fkc.resample,
                                                                                    s.fkc.ess_threshold))


def method_plans(conf: RunConf, scales: tuple[float, ...], evaluators: tuple[EvaluatorPlan, ...]) -> tuple[Method, ...]:
    """The run's methods (rlg.methods) from the ``method`` node: rlg over ``scales`` when it is empty.
    rlg and weight_mix without knobs take grid.scales. Raises ConfigError naming the fix: an unknown
    method, bad knobs, or a best_of_n whose picking metric no selected evaluator writes or that leaves
    no other metric to judge with (picking and judging with one metric is circular)."""
    from rlg.evaluators.base import evaluator_class
    from rlg.methods import MethodError, get_method

    entries = conf.method or {"rlg": None}
    out = []
    for key, m in entries.items():
        if m is not None and m.name is None:  # configured by a preset's body, not selected in the method group
            log.warning("method.%s is configured but not selected; it does not run (select it with "
                        "method=[...,%s])", key, key)
            continue
        name = key if m is None else m.name
        if m is not None and name != key:
            raise ConfigError(f"method.{key}.name={name!r}; an entry's name must be its key (method.{name}=...)")
        knobs = None if m is None else m.knobs
        if knobs is None:
            if name not in ("rlg", "weight_mix", "rlg_fkc"):
                raise ConfigError(f"method.{name}.knobs is not set; give the swept values, e.g. "
                                  f"method.{name}.knobs=[1,2,4]")
            knobs = list(scales)
        try:
            method = get_method(name, list(knobs), **({} if m is None else {"model": m.model, "pick": m.pick,
                                                                            "options": dict(m.options)}))
        except MethodError as exc:
            raise ConfigError(str(exc)) from exc
        if method.needs_pick:
            metrics = sorted({k for e in evaluators for k in getattr(evaluator_class(e.name), "metrics", None) or {}})
            if method.pick not in metrics:
                raise ConfigError(f"method.{name}.pick={method.pick!r} is not a metric of the selected evaluators "
                                  f"({', '.join(metrics)}); pick one of them")
            if not set(metrics) - {method.pick}:
                raise ConfigError(f"method.{name} picks with {method.pick}, the only metric selected: its report "
                                  "would judge with the metric that picked (circular). Select a held-out evaluator "
                                  "too (evaluators.selected)")
        if conf.sampler.correctors != "none" and method.name != "rlg":
            raise ConfigError(f"sampler.correctors={conf.sampler.correctors} corrects RLG's mix of two networks; "
                              f"method {name} does not mix them: run it without sampler.correctors")
        out.append(method)
    if not out:
        raise ConfigError("no method is selected; select one or more, e.g. method=[rlg,weight_mix]")
    labels = [m.label for m in out]
    if len(set(labels)) < len(labels):
        raise ConfigError(f"methods {labels} store two series under one name; give each method once")
    return tuple(out)


def image_identity(conf: RunConf, spec, device: str) -> dict[str, Any]:
    """Everything besides (prompt, sample, seed, scale) that determines an image's bits: the pair with
    the resolved identity of every weight file (a local checkpoint by its content fingerprint, not its path), the
    sampler, the device type."""
    from rlg.denoiser import resolve_micro_batch
    from rlg.pairs import weights_identity

    s = dataclasses.asdict(conf.sampler)
    s.pop("name")
    s.pop("batch_size")  # the batch layout does not change an image (micro_batch does, so it stays)
    if s["correctors"] == "none":  # plain RLG: the keys of runs made before FKC existed stay valid
        s.pop("correctors")
        s.pop("fkc")
    s["micro_batch"] = resolve_micro_batch(s["micro_batch"], device)  # the number ("auto" is per device type)
    pair, weights = spec.identity(), weights_identity(spec)
    for role, w in weights.items():
        if w is not None and w["source"] == "local":  # its content fingerprint names it, not the folder it lies in:
            del w["path"]  # the same weights in a moved clone, or on a node that mounts them elsewhere, keep their keys
            pair[role]["id"] = "local"
    return {"pair": pair, "weights": weights, "sampler": s, "device": device.split(":")[0]}


def _check_no_effect(conf: RunConf, default) -> None:
    """Refuse sampler settings that the chosen scheduler ignores: the image would not change, yet the
    content key and the report would call it another setting."""
    s, d = conf.sampler, default.sampler
    if s.scheduler in ("euler_ode", "flow_grpo_sde") and s.eta is not None:
        raise ConfigError(f"sampler.eta={s.eta} has no effect with sampler.scheduler={s.scheduler} (eta is DDIM's); "
                          "remove it (sampler.eta=null)")
    if s.scheduler != "flow_grpo_sde" and s.noise_level != d.noise_level:
        raise ConfigError(f"sampler.noise_level={s.noise_level} has no effect with sampler.scheduler={s.scheduler}; "
                          "use sampler.scheduler=flow_grpo_sde or drop the override")
    if s.scheduler in ("default", "ddim") and s.shift is not None:
        raise ConfigError(f"sampler.shift={s.shift} has no effect with sampler.scheduler={s.scheduler} (shift is for "
                          "flow-matching schedulers); use euler_ode / flow_grpo_sde or sampler.shift=null")


def _pipeline_file(ck, name: str) -> dict[str, Any] | None:
    """JSON file ``name`` of a checkpoint when it is on disk (a local folder or the hub cache), else None."""
    import json

    from huggingface_hub import try_to_load_from_cache

    folder = Path(ck.id).expanduser()
    if folder.is_dir():
        path = folder / name
    else:
        hit = try_to_load_from_cache(ck.id, name, revision=ck.revision)
        path = Path(hit) if isinstance(hit, str) else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def _check_eta(conf: RunConf, spec) -> None:
    """Refuse sampler.eta when the pair's pipeline or scheduler would drop it, read from the checkpoint's
    model_index.json / scheduler_config.json (no model loaded). A checkpoint not yet downloaded is checked
    by rlg.sampling.RLGSampler before the first image."""
    s = conf.sampler
    if s.eta is None or s.scheduler in ("euler_ode", "flow_grpo_sde"):
        return
    import diffusers

    from rlg.sampling import eta_ignored

    index = _pipeline_file(spec.base, "model_index.json")
    scheduler = _pipeline_file(spec.base, "scheduler/scheduler_config.json")
    if index is None or scheduler is None:
        return
    pipeline_cls = getattr(diffusers, spec.pipeline_class or index.get("_class_name", ""), None)
    scheduler_cls = diffusers.DDIMScheduler if s.scheduler == "ddim" else getattr(
        diffusers, scheduler.get("_class_name", ""), None)
    if pipeline_cls is None or scheduler_cls is None:
        return
    why = eta_ignored(pipeline_cls.__call__, scheduler_cls)
    if why:
        raise ConfigError(f"sampler.eta={s.eta} has no effect with pair {spec.name} and sampler.scheduler="
                          f"{s.scheduler}: {why}; remove it (sampler.eta=null) or use sampler.scheduler=ddim")


def _check_particle_scheduler(conf: RunConf, spec) -> None:
    """Refuse sampler.correctors=fkc (or method rlg_fkc / fk_steering) with scheduler=default when the checkpoint's
    own scheduler (scheduler_config.json, no model loaded) is one the particle weights are not derived for
    (rlg.fkc.unsupported_scheduler: DDIM epsilon or FlowMatch). A checkpoint not yet downloaded is checked by
    rlg.sampling.RLGSampler before the first image."""
    particles = conf.sampler.correctors != "none" or any(k in ("rlg_fkc", "fk_steering") for k in conf.method)
    if not particles or conf.sampler.scheduler != "default":
        return
    scheduler = _pipeline_file(spec.base, "scheduler/scheduler_config.json")
    name = (scheduler or {}).get("_class_name", "")
    kind = (scheduler or {}).get("prediction_type", "epsilon")
    if not name or name.startswith("FlowMatch") or (name == "DDIMScheduler" and kind == "epsilon"):
        return
    what = "sampler.correctors=fkc" if conf.sampler.correctors != "none" else "method rlg_fkc / fk_steering"
    raise ConfigError(f"{what}: pair {spec.name}'s scheduler is {name}"
                      f"{'' if name != 'DDIMScheduler' else f' (prediction_type={kind})'}, for which the particle "
                      "weights are not derived; use sampler.scheduler=ddim (noise-prediction pipelines) or "
                      "euler_ode / flow_grpo_sde (flow pipelines)")


def evaluator_plans(conf: RunConf, prompts: list[Prompt], device: Callable[[], str]) -> tuple[EvaluatorPlan, ...]:
    """Check each selected evaluator's options against its constructor (names, then values through
    the evaluator's own ``check_options`` when it has one) and its prompt needs; merge batch size and
    device (``device()``, called only for an evaluator that takes one: resolving ``auto`` imports torch).
    Raises ConfigError naming the fix."""
    from rlg.evaluators._models import ModelNotAvailableError
    from rlg.evaluators.base import REGISTRY, check_ready, constructor_options, evaluator_class
    from rlg.extras import MissingExtraError

    plans = []
    given = conf.evaluators.options or {}
    unknown = sorted(set(given) - set(REGISTRY))
    if unknown:  # options of an unselected evaluator (e.g. from an evaluator preset) are fine; a misspelt name is not
        raise ConfigError(f"evaluators.options names {unknown}, which is not an evaluator; known evaluators: "
                          f"{', '.join(sorted(REGISTRY))}")
    for name in conf.evaluators.selected:
        try:
            cls = evaluator_class(name)
        except MissingExtraError as exc:  # the evaluator's module imports a package that is not installed
            raise ConfigError(f"{exc}; or drop {name} from evaluators.selected") from None
        params = inspect.signature(cls.__init__).parameters  # its own: the harness fills batch_size/device here
        options, accepts_any = constructor_options(cls)  # with what a **kw forwards (DigitProb -> _DigitsBase)
        opts = dict(given.get(name) or {})
        known = sorted(options)
        bad = sorted(k for k in opts if k not in options) if not accepts_any else []
        if bad:
            raise ConfigError(f"evaluators.options.{name} has unknown option(s) {bad}; {name} accepts: "
                              f"{', '.join(known)}")
        ignored = getattr(cls, "ignored_options", {})  # accepted for a uniform config, without effect: refused
        hit = sorted(k for k in opts if k in ignored and opts[k] is not None)
        if hit:
            raise ConfigError(f"evaluators.options.{name}.{hit[0]} has no effect ({ignored[hit[0]]}); remove it")
        uses_device = getattr(cls, "uses_device", True)
        for k, v in (("batch_size", lambda: conf.evaluators.batch_size), ("device", device)):
            if k in params and k not in opts and (k != "device" or uses_device):
                opts[k] = v()
        check = getattr(cls, "check_options", None)
        if check is not None:
            try:
                check(**opts)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"evaluators.options.{name}: {exc}") from exc
        if conf.stage in ("all", "evaluate"):  # its packages and weights, before any image is made
            try:
                check_ready(name, opts)
            except (MissingExtraError, ModelNotAvailableError) as exc:
                raise ConfigError(str(exc)) from None
        plans.append(EvaluatorPlan(name, opts))
    return tuple(plans)


def prompt_problem(conf: RunConf, prompts: list[Prompt]) -> str | None:
    """Why a selected evaluator cannot score these prompts (an OCR prompt without a quoted target, a
    GenEval prompt without metadata), through each evaluator's ``check_prompts`` hook; None if all can.
    Generation refuses to make images for such prompts before it starts; images already stored are
    scored anyway, with the failure recorded per image."""
    from rlg.evaluators.base import evaluator_class

    for name in conf.evaluators.selected:
        check_prompts = getattr(evaluator_class(name), "check_prompts", None)
        if check_prompts is not None and prompts:
            try:
                check_prompts([p.text for p in prompts], [p.metadata for p in prompts])
            except ValueError as exc:
                return (f"evaluator {name!r} cannot score this prompt set ({conf.prompts.name}): {exc}\n"
                        f"Fix: correct those prompts, or drop {name} from evaluators.selected")
    return None


def run_reward(preferred: str | None, metrics: tuple[Metric, ...]) -> tuple[str | None, str | None]:
    """(reward, note): the run's reward, decided once. ``report.reward`` when a selected evaluator writes it,
    else ``rlg.metrics.pick_reward``'s default order over the selected evaluators' metrics; the note (also
    logged) says why a named reward was not taken."""
    reward, note = settle_reward([m.id for m in metrics], preferred, "written by the selected evaluators",
                                 "select its evaluator in evaluators.selected")
    if note:
        log.warning(note)
    return reward, note


def tracker_mode(mode: str, overrides: list[str]) -> str | None:
    """The W&B mode to force, or None to let the user's W&B setup decide. The default preset's
    "offline" defers to WANDB_MODE / `wandb online`; a mode chosen on purpose (another preset, e.g.
    tracker=none or debug=fast, or a tracker override on the command line) is kept."""
    chosen = any(o.lstrip("+~").split("=")[0] in ("tracker", "tracker.wandb.mode") for o in overrides)
    return mode if chosen or mode != "offline" else None


def build(cfg: DictConfig, overrides: list[str] | None = None) -> Job:
    """Validate the composed config and turn it into a :class:`Job`. Raises the errors in
    ``rlg.harness.runner.USER_ERRORS`` (each names the fix); touches no file of the run directory."""
    cfg = validate(cfg)
    check_complete(cfg)
    try:
        kind = KINDS.get(cfg.kind)
        conf: RunConf = OmegaConf.to_object(cfg)  # the dataclass tree (kind settings checked): no DictConfig after
    except (KindError, ValueError) as exc:  # a kind's settings refuse a value in their __post_init__
        raise ConfigError(f"{cfg.kind}: {exc}" if not isinstance(exc, KindError) else f"kind: {exc}") from None
    check_kind(conf, kind)
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    scales = grid_scales(conf.grid.scales, conf.grid.allow_large_scales)
    submitit_ranks()
    rank, world, distributed = resolve_rank(conf.shard)
    local_rank = 0
    if distributed:  # accelerate's view of torchrun / accelerate launch / submitit tasks; it selects this rank's GPU
        import datetime

        import torch
        from accelerate import PartialState

        # cpu=True: without it accelerate ignores torchrun's ranks on a machine without a GPU. timeout: how long
        # a rank waits for the others at a barrier (torch's default, 10 min for NCCL, is shorter than a stage)
        state = PartialState(cpu=conf.device == "cpu" or not torch.cuda.is_available(),
                             timeout=datetime.timedelta(minutes=conf.barrier_timeout_min))
        rank = conf.shard.index * state.num_processes + state.process_index
        world, local_rank = conf.shard.count * state.num_processes, state.local_process_index
    launch_rank = rank - conf.shard.index * (world // conf.shard.count)
    stages = ("generate", "evaluate", "report") if conf.stage == "all" else (conf.stage,)
    common = dict(name=conf.name, run_dir=Path(run_dir(conf.paths.root, conf.name)), verbose=conf.verbose, stages=stages,
                  rank=rank, world=world, distributed=distributed, seed=conf.seed, scales=scales, config=conf,
                  resolved_config=resolved, launch_rank=launch_rank)
    if conf.kind != "images":  # a measurement of its own: no image grid, one process
        if world > 1:
            raise ConfigError(f"kind={conf.kind} runs in one process; launch it without torchrun/accelerate or "
                              "shard.count")
        if conf.stage not in kind.stages:
            raise ConfigError(f"stage={conf.stage}: kind={conf.kind} has no separate {conf.stage} stage; stage=all "
                              "measures and writes the report, stage=report rewrites the report from the stored rows")
        try:
            settings = resolve(kind.settings)(conf, scales, list(overrides or [])) if kind.settings \
                else getattr(conf, kind.node)
        except ValueError as exc:  # a builder below the harness (rlg.kind_spec) names the key in a ValueError
            if type(exc) is not ValueError:  # the harness's own errors (ConfigError, PromptError) as they are
                raise
            raise ConfigError(str(exc)) from None
        if kind.samples:  # it samples images with the shared prompts and sampler groups
            prompts, prompt_info = load_prompts(conf.prompts, conf.paths.cache)
            try:
                settings.check_images(len(prompts) * conf.prompts.samples_per_prompt)
            except ValueError as exc:
                raise ConfigError(f"{conf.kind}: {exc}") from None
            common.update(prompts=tuple(prompts), prompt_info=prompt_info, sampler=sampler_settings(conf.sampler))
        return Job(kind=conf.kind, **common, settings=settings)
    _check_no_effect(conf, RunConf())
    prompts, prompt_info = load_prompts(conf.prompts, conf.paths.cache)
    spec = pair_spec(conf)
    # a stage that makes no image (evaluate, report) works on every image of the run directory: it has no image
    # identity of its own, and needs no device for the pair, so report-only and evaluate-only runs import no torch
    generates = "generate" in stages
    placement, ident = None, {}
    if generates:
        _check_eta(conf, spec)
        _check_particle_scheduler(conf, spec)
        device = resolve_device(conf.device, local_rank)
        placement = Placement(device, conf.sampler.offload, conf.sampler.compile, conf.sampler.vae_tiling)
        ident = image_identity(conf, spec, device)
    eval_device = functools.cache(lambda: resolve_device(conf.evaluators.device, local_rank))
    evaluators = evaluator_plans(conf, prompts, eval_device)
    from rlg.evaluators.base import metrics_of

    metrics = tuple(m for e in evaluators for m in metrics_of(e.name, e.options))
    reward, reward_note = run_reward(conf.report.reward, metrics)
    s = conf.sampler
    return Job(kind="images", **common, prompts=tuple(prompts), prompt_info=prompt_info, pair=spec,
               placement=placement, sampler=sampler_settings(s), identity=ident,
               config_id=content_key(ident)[:16] if generates else "", evaluators=evaluators, metrics=metrics,
               reward=reward, reward_note=reward_note,
               evaluator_device=eval_device() if use_devices(evaluators) else "cpu",
               tracker_mode=tracker_mode(conf.tracker.wandb.mode, list(overrides or [])),
               prompt_problem=prompt_problem(conf, prompts), methods=method_plans(conf, scales, evaluators))


def check_kind(conf: RunConf, kind) -> None:
    """Refuse settings that belong to another kind than the run's (they would have no effect), and a
    measurement kind without its settings. Raises ConfigError naming the fix."""
    for name in kind_nodes():
        if getattr(conf, name) is not None and kind.node != name:
            raise ConfigError(f"{name} settings are given but kind={conf.kind}; they would have no effect: select "
                              f"kind={name} (its presets do) or drop them")
    if kind.node is not None and getattr(conf, kind.node) is None:
        raise ConfigError(f"kind={conf.kind} needs its {kind.node} settings; start from its preset (rlg-bench "
                          f"--help lists them)")
    if (conf.pair.analytic is not None) != (conf.kind == "ground_truth"):
        raise ConfigError("pair.analytic (a closed-form pair) is the ground truth's, and the ground truth needs one: "
                          "use experiment=ground_truth [pair=analytic_...]" if conf.kind in ("images", "ground_truth")
                          else f"pair.analytic has no effect with kind={conf.kind}; drop it")


__all__ = ["Job", "EvaluatorPlan", "Placement", "build", "resolve_device", "resolve_rank"]
