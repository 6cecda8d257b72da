"""Generating RLG images with a loaded pair: scheduler, paired noise, per-sample scales, batch invariance.

Scheduler: ``SamplerSettings.scheduler`` picks the pipeline's sampler for each call ("default" keeps
the one the pipeline was loaded with; "ddim", "euler_ode", "flow_grpo_sde"); ``RLGSampler`` swaps it
in for its calls and puts the pipeline's own back afterwards, so samplers with different settings can
share one loaded pair.

Paired noise: every image has its own torch.Generator seeded from (seed, prompt index, sample
index) only. Every random draw of the call comes from these generators, row by row: the initial
latents (the pipeline's ``generator=``), and every draw of ``scheduler.step`` (DDIM eta, ancestral /
DDPM noise, the Flow-GRPO SDE noise, FlowMatch stochastic sampling): pipelines such as
StableDiffusion3Pipeline and FluxPipeline call ``scheduler.step`` without a generator, so the sampler
hands the per-image generators to every step of its call. So every scale of a grid starts from the
same noise and takes the same noise at every step, and an image does not depend on the batch it was
generated in, on earlier calls, or on torch's global seed.

Batch invariance: kernels choose reduction orders by batch size, so the same row computed in a
batch of 3 or of 8 can differ in the last bits. Text encoders and the VAE therefore run one row at
a time (text encodings are also cached per prompt: computed once for base, RL and every scale), and
the denoiser runs fixed-size micro-batches (``SamplerSettings.micro_batch``).

Particles (``SamplerSettings.correctors``: RLG with Feynman-Kac correctors, ``rlg.fkc``; ``SamplerSettings.steering``:
FK steering by a reward, ``rlg.fk_steering``): every image runs as K rows of the call (particle 0 with the image's
own noise, so K = 1 is the plain sampler bit for bit), weighted and resampled in ``callback_on_step_end`` (the
pipeline takes the reordered latents back), one particle per image kept at the end; an image's network rows are
the sum over its particles. docs/fkc.md §6.

Errors: ``SamplerError`` (a ``ValueError``) for settings the pipeline cannot honour; the message names
the fix.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from rlg.choices import SCHEDULERS
from rlg.guidance import check_scales
from rlg.pairs import LoadedPair
from rlg.sampler_spec import (Generated, SamplerError, SamplerSettings, WorkItem,  # noqa: F401 (re-exports)
                              corrector_seed, noise_seed, particle_seed)
from rlg.surface import CALL_KEYWORDS, PARTIAL_SCHEDULE, check_call_keywords, fkc_refusal, refusal

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Row-wise text encoders and VAE
# ---------------------------------------------------------------------------------------------
def _cat(parts: list[Any]) -> Any:
    """Concatenate a list of model outputs (tensors, tuples, ModelOutputs) along the batch."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts) if first.ndim else first
    if first is None:
        return None
    if isinstance(first, dict):  # transformers ModelOutput / diffusers BaseOutput
        return type(first)(**{k: _cat([p[k] for p in parts]) for k in first.keys()})
    if isinstance(first, (tuple, list)):
        return type(first)(_cat(list(col)) for col in zip(*parts))
    if hasattr(first, "parameters") and hasattr(first, "sample"):  # DiagonalGaussianDistribution
        return type(first)(torch.cat([p.parameters for p in parts]))
    return first


def _row(obj: Any, i: int, n: int) -> Any:
    if isinstance(obj, torch.Tensor) and obj.ndim and obj.shape[0] == n:
        return obj[i : i + 1]
    return obj


def _row_key(args, kwargs, i: int, n: int) -> bytes:
    h = hashlib.sha256()
    for v in list(args) + [kwargs[k] for k in sorted(kwargs)]:
        if isinstance(v, torch.Tensor):
            r = _row(v, i, n)
            h.update(str((r.dtype, tuple(r.shape))).encode() + r.detach().cpu().numpy().tobytes())
        else:
            h.update(repr(v).encode())
    h.update(repr(sorted(kwargs)).encode())
    return h.digest()


def rowwise(module: torch.nn.Module, method: str = "forward", cache_size: int = 0) -> None:
    """Make ``module.<method>`` process its batch one row at a time (and optionally cache rows).

    Patched on the instance, so the pipeline's own code runs unchanged.
    """
    if getattr(module, f"_rlg_rowwise_{method}", False):
        return
    original = getattr(module, method)
    cache: OrderedDict[bytes, Any] = OrderedDict()

    def call(*args, **kwargs):
        first = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        n = first.shape[0]
        outs = []
        for i in range(n):
            key = _row_key(args, kwargs, i, n) if cache_size else None
            if key is not None and key in cache:
                cache.move_to_end(key)
                outs.append(cache[key])
                continue
            out = original(*[_row(a, i, n) for a in args], **{k: _row(v, i, n) for k, v in kwargs.items()})
            if key is not None:
                cache[key] = out
                if len(cache) > cache_size:
                    cache.popitem(last=False)
            outs.append(out)
        return _cat(outs) if n > 1 else outs[0]

    call.cache = cache  # type: ignore[attr-defined]
    setattr(module, method, call)
    setattr(module, f"_rlg_rowwise_{method}", True)


def undo_batch_invariant(pipe) -> None:
    """Undo :func:`make_batch_invariant`: the text encoders and the VAE run their own methods again."""
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            for method in ("forward", "decode", "encode"):
                if comp.__dict__.pop(f"_rlg_rowwise_{method}", False):
                    comp.__dict__.pop(method, None)


def make_batch_invariant(pipe, text_cache_size: int = 64) -> None:
    """Text encoders (cached per prompt) and the VAE run row by row."""
    for name, comp in pipe.components.items():
        if name.startswith("text_encoder") and isinstance(comp, torch.nn.Module):
            rowwise(comp, "forward", cache_size=text_cache_size)
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        rowwise(vae, "decode")
        rowwise(vae, "encode")


# ---------------------------------------------------------------------------------------------
# Scheduler choice and per-image step noise
# ---------------------------------------------------------------------------------------------
def eta_ignored(pipeline_call, scheduler_class) -> str | None:
    """Why a pipeline with this ``__call__`` and scheduler class would ignore ``eta``, or None if it uses it.
    diffusers passes eta on only when the pipeline takes it and ``scheduler.step`` has an eta parameter
    (``prepare_extra_step_kwargs``), and drops it without a word otherwise."""
    if "eta" not in inspect.signature(pipeline_call).parameters:
        return f"{pipeline_call.__qualname__.split('.')[0]} takes no eta"
    if "eta" not in inspect.signature(scheduler_class.step).parameters:
        return f"{scheduler_class.__name__}.step() takes no eta (DDIM's does)"
    return None


def make_scheduler(pipe, name: str, shift: float | None = None, noise_level: float = 0.7):
    """A scheduler ``name`` (one of ``rlg.choices.SCHEDULERS``) built from the config of the pipeline's own
    scheduler. ``shift`` overrides the flow schedulers' shift (None: the pipeline's). Raises SamplerError."""
    return SCHEDULERS.get(name, error=SamplerError)(pipe, shift=shift, noise_level=noise_level)


def pipeline_scheduler(pipe, **_: Any):
    """scheduler=default: the pipeline's own scheduler as it stands between calls (a sampler's swap is undone after
    each call), so a notebook that sets ``pipe.scheduler`` gets that scheduler on the next call."""
    return pipe.scheduler


def ddim_scheduler(pipe, **_: Any):
    """scheduler=ddim: diffusers' DDIMScheduler from the pipeline's config (noise-prediction pipelines)."""
    import diffusers

    base = pipe.scheduler  # as it stands between calls (pipeline_scheduler)
    if isinstance(base, diffusers.FlowMatchEulerDiscreteScheduler):
        raise SamplerError(f"scheduler=ddim needs a noise-prediction pipeline; {type(pipe).__name__} is a "
                           "flow-matching pipeline: use euler_ode or flow_grpo_sde")
    return diffusers.DDIMScheduler.from_config(dict(base.config))


def _flow_config(pipe, name: str) -> dict[str, Any]:
    import diffusers

    base = pipe.scheduler
    config = dict(base.config)
    if not isinstance(base, diffusers.FlowMatchEulerDiscreteScheduler) and "shift" not in config:
        raise SamplerError(f"scheduler={name} is for flow-matching pipelines (SD3, FLUX); "
                           f"{type(pipe).__name__} predicts noise: use default or ddim")
    return config


def euler_ode_scheduler(pipe, shift: float | None = None, **_: Any):
    """scheduler=euler_ode: FlowMatchEulerDiscreteScheduler, deterministic Euler (flow-matching pipelines)."""
    import diffusers

    extra: dict[str, Any] = {"shift": shift} if shift is not None else {}
    return diffusers.FlowMatchEulerDiscreteScheduler.from_config(_flow_config(pipe, "euler_ode"),
                                                                 stochastic_sampling=False, **extra)


def flow_grpo_sde_scheduler(pipe, shift: float | None = None, noise_level: float = 0.7, **_: Any):
    """scheduler=flow_grpo_sde: rlg.schedulers.FlowGRPOSDEScheduler, Flow-GRPO's SDE step with ``noise_level``."""
    from rlg.schedulers import FlowGRPOSDEScheduler

    extra: dict[str, Any] = {"shift": shift} if shift is not None else {}
    return FlowGRPOSDEScheduler.from_config(_flow_config(pipe, "flow_grpo_sde"), noise_level=noise_level,
                                            stochastic_sampling=False, **extra)


@contextlib.contextmanager
def scheduler_for_call(pipe, scheduler, generators: list[torch.Generator]):
    """Within the block, ``pipe.scheduler`` is ``scheduler`` and every ``scheduler.step`` that gets no
    generator draws its noise from ``generators`` (one per image row, diffusers' ``randn_tensor`` list
    convention). Stock SD3/FLUX pipelines call ``step`` without one, which would use torch's global RNG.
    Afterwards the pipeline's own scheduler is back and the step is unpatched."""
    previous = pipe.scheduler
    pipe.scheduler = scheduler
    patched = "generator" in inspect.signature(scheduler.step).parameters
    if patched:
        step = type(scheduler).step.__get__(scheduler)

        @functools.wraps(step)  # pipelines inspect step's signature (eta, generator): keep it
        def step_with_generators(*args, **kwargs):
            if kwargs.get("generator") is None:
                kwargs["generator"] = generators
            return step(*args, **kwargs)

        scheduler.step = step_with_generators  # an instance attribute: the class is untouched
    try:
        yield scheduler
    finally:
        if patched:
            del scheduler.step
        pipe.scheduler = previous


# Pipeline inputs given once for all images. Inpainting pipelines VAE-encode a single image with the
# FIRST row's generator only (diffusers' _encode_vae_image loops over the image batch), which would
# shift that row's noise; given one copy per row, every row draws from its own generator.
PER_ROW_INPUTS = ("image", "mask_image")
# Text given once for the whole call; diffusers makes a one-element list of it, which does not match a call of
# several prompts (SDXL / SD3 concatenate the encoders' outputs row by row): one copy per image row.
PER_ROW_TEXTS = ("prompt_2", "prompt_3")


def _single_image(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.ndim == 3 or (value.ndim == 4 and value.shape[0] == 1)
    if isinstance(value, np.ndarray):
        return value.ndim in (2, 3)
    return hasattr(value, "getpixel")  # a PIL image


# ---------------------------------------------------------------------------------------------
def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float HxWx3 in [0, 1] -> uint8, the same rounding as diffusers' numpy_to_pil (NaN -> 0, clipped): the
    pipeline's outputs and FK steering's decoded predictions go through this one conversion."""
    return (np.nan_to_num(image, nan=0.0).clip(0, 1) * 255).round().astype(np.uint8)


class RLGSampler:
    """Runs a loaded pair's pipeline on batches of work items."""

    def __init__(self, pair: LoadedPair, settings: SamplerSettings, text_cache_size: int = 64):
        if settings.guidance_rescale:
            raise SamplerError(refusal("sampler", "guidance_rescale", CALL_KEYWORDS["guidance_rescale"][1]))
        self.pair = pair
        self.settings = settings
        self.pipe = pair.pipe
        self.scheduler = make_scheduler(self.pipe, settings.scheduler, settings.shift, settings.noise_level)
        make_batch_invariant(self.pipe, text_cache_size)
        if not pair.on_unwrap:  # pair.unwrap() gives the pipeline back with its own encoders' methods
            pair.on_unwrap.append(functools.partial(undo_batch_invariant, self.pipe))
        self._params = set(inspect.signature(self.pipe.__call__).parameters)
        try:  # every route into the pipeline (sampler.extra, generate_grid(**kwargs), SamplerSettings(extra=))
            check_call_keywords(settings.extra, "sampler.extra", accepted=self._params,
                                pipeline=type(self.pipe).__name__)
        except ValueError as exc:
            raise SamplerError(str(exc)) from None
        self._check_effects()
        self._check_correctors()
        self._check_steering()

    def _check_steering(self) -> None:
        """Refuse FK steering (``settings.steering``) where it cannot run, before any image: both FKC and steering, a
        scheduler without a predicted x0 (DDIM epsilon / FlowMatch), a pipeline without a step callback or with
        packed latents (FLUX), a reward its evaluator does not write. Builds the reward's evaluator."""
        steer = self.settings.steering
        if steer is None:
            return
        from rlg.fkc import unsupported_scheduler

        pipe = type(self.pipe).__name__
        if self.settings.correctors is not None:
            raise SamplerError("fk_steering runs one model with a reward; sampler.correctors corrects RLG's mix: "
                               "remove sampler.correctors")
        why = unsupported_scheduler(self.scheduler)
        if why:
            raise SamplerError(f"fk_steering: no predicted x0 for {why.split(' (')[0]}; use sampler.scheduler=ddim "
                               "(noise-prediction pipelines) or euler_ode / flow_grpo_sde (flow pipelines)")
        if "callback_on_step_end" not in self._params or not hasattr(self.pipe, "image_processor") or \
                hasattr(self.pipe, "_unpack_latents"):
            raise SamplerError(f"fk_steering resamples in the step callback and decodes unpacked latents, which {pipe} "
                               "does not allow; use an SD / SDXL / SD3 pipeline")
        if self.settings.window is not None and (self.settings.window.start, self.settings.window.stop) != (0.0, 1.0):
            raise SamplerError("fk_steering runs one model at every step; remove sampler.window")
        if not callable(steer.scorer):
            raise SamplerError(f"fk_steering needs a scorer of its reward {steer.reward!r} (SteeringSpec.scorer, e.g. "
                               "rlg.evaluators.base.reward_scorer; the harness builds it from method.fk_steering.pick)")

    def _check_correctors(self) -> None:
        """Refuse FKC (``settings.correctors``) where its weights are not derived (docs/fkc.md §1), before any image:
        a scheduler other than DDIM (epsilon) / FlowMatch, a pipeline without a step callback to resample through,
        an RLG window, a partial schedule, a second denoiser call per step."""
        if self.settings.correctors is None:
            return
        from rlg.fkc import unsupported_scheduler

        pipe = type(self.pipe).__name__
        why = unsupported_scheduler(self.scheduler)
        if why:
            raise SamplerError(f"sampler.correctors=fkc: no Feynman-Kac weights for {why}; use sampler.scheduler=ddim "
                               "(noise-prediction pipelines) or euler_ode / flow_grpo_sde (flow pipelines)")
        if "callback_on_step_end" not in self._params:
            raise SamplerError(f"sampler.correctors=fkc resamples in the step callback, which {pipe} does not take; "
                               "remove sampler.correctors")
        w = self.settings.window
        fix = fkc_refusal((0.0, 1.0) if w is None else (w.start, w.stop), self.settings.extra)
        if fix:
            raise SamplerError(fix)

    def _check_effects(self) -> None:
        """Refuse settings this pipeline and scheduler would ignore (the images would not change): eta with a
        scheduler whose ``step()`` takes none (diffusers drops it silently), shift with a scheduler that has
        none, an RLG window holding no step. Checked per sampler, so a notebook that swaps ``pipe.scheduler``
        between calls is checked against the scheduler in place."""
        s = self.settings
        eta = s.extra.get("eta", s.eta)
        if eta is not None:
            why = eta_ignored(type(self.pipe).__call__, type(self.scheduler))
            if why:
                raise SamplerError(f"eta={eta} has no effect: {why}; remove it (sampler.eta=null), or use "
                                   "sampler.scheduler=ddim on a noise-prediction pipeline")
        if s.shift is not None and s.scheduler in ("default", "ddim"):
            raise SamplerError(f"shift={s.shift} has no effect with scheduler={s.scheduler} (shift is for the flow "
                               "schedulers euler_ode / flow_grpo_sde); remove it")
        if s.window is not None and not PARTIAL_SCHEDULE & set(s.extra) and \
                not s.window.steps_inside(s.num_inference_steps):  # else the denoiser checks the steps that run
            raise SamplerError(f"the RLG window [{s.window.start:g}, {s.window.stop:g}) contains no step of the "
                               f"{s.num_inference_steps}-step schedule, so every scale gives the same image; widen it")
        self.conditional = "prompt" in self._params

    def _call_kwargs(self, items: list[WorkItem], generators: list[torch.Generator], on_step) -> dict[str, Any]:
        s = self.settings
        kw: dict[str, Any] = {"num_inference_steps": s.num_inference_steps, "generator": generators,
                              "output_type": "np"}
        if self.conditional:
            kw["prompt"] = [it.prompt for it in items]
            kw["guidance_scale"] = s.guidance_scale
            if s.negative_prompt is not None and "negative_prompt" in self._params:
                kw["negative_prompt"] = [s.negative_prompt] * len(items)
        else:
            kw["batch_size"] = len(items)
        for key in ("height", "width", "eta"):
            if getattr(s, key) is not None and key in self._params:
                kw[key] = getattr(s, key)
        if "callback_on_step_end" in self._params:
            kw["callback_on_step_end"] = on_step
            kw["callback_on_step_end_tensor_inputs"] = ["latents"]
        kw.update(s.extra)
        for key in PER_ROW_INPUTS:  # one copy per image, so each row's VAE sample uses its own generator
            if key in kw and _single_image(kw[key]):
                kw[key] = [kw[key]] * len(items)
        for key in PER_ROW_TEXTS:
            if isinstance(kw.get(key), str):
                kw[key] = [kw[key]] * len(items)
        return kw

    def generate(self, items: list[WorkItem]) -> list[Generated]:
        """Generate one image per work item, in one pipeline call; a call that runs out of GPU memory
        is split in halves (images do not change: they do not depend on the batch)."""
        try:
            return self._generate(items)
        except torch.OutOfMemoryError:
            if len(items) == 1:
                raise RuntimeError("out of GPU memory for a single image: lower sampler.micro_batch, use "
                                   "sampler.offload=model, or a lower pair.dtype") from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(items) // 2
            log.warning("out of GPU memory with %d images per call; splitting into %d + %d", len(items), half,
                        len(items) - half)
            return self.generate(items[:half]) + self.generate(items[half:])

    @torch.no_grad()
    def _generate(self, items: list[WorkItem]) -> list[Generated]:
        if not items:
            return []
        s, den = self.settings, self.pair.denoiser
        fkc, steer = s.correctors, s.steering
        K = int(fkc.particles) if fkc is not None else int(steer.particles) if steer is not None else 1
        scales = check_scales([it.scale for it in items for _ in range(K)])
        # K rows per image (particles; particle 0 has the image's own noise, so K = 1 is the plain sampler)
        rows = [it for it in items for _ in range(K)]
        generators = [torch.Generator("cpu").manual_seed(particle_seed(it.seed, it.prompt_index, it.sample_index, k))
                      for it in items for k in range(K)]
        own = [torch.Generator("cpu").manual_seed(corrector_seed(it.seed, it.prompt_index, it.sample_index))
               for it in items]  # each image's resampling and final pick
        population = None
        if fkc is not None:
            from rlg.fkc import FKCPopulation

            population = FKCPopulation(len(items), fkc, own)
        elif steer is not None:
            from rlg.fk_steering import FKSteeringConfig, FKSteeringPopulation

            population = FKSteeringPopulation(len(items), FKSteeringConfig(K, steer.potential, float(steer.lam),
                                                                           steer.interval), own)
        first_bad: list[int | None] = [None] * len(rows)
        calls_seen = [den.stats.calls]

        def on_step(pipe, i, t, kwargs):
            den.loop_step_done()  # the window is over the loop's iterations
            lat = kwargs["latents"]
            finite = torch.isfinite(lat.reshape(lat.shape[0], -1)).all(dim=1).tolist()
            for r, ok in enumerate(finite[: len(rows)]):
                if not ok and first_bad[r] is None:
                    first_bad[r] = int(i)
            if population is None:
                return {}
            if fkc is not None:
                ancestors = self._corrector_step(pipe, population, scales, int(i), calls_seen)
            else:
                ancestors = self._steering_step(pipe, population, rows, int(i), t)
            return {} if ancestors is None else {"latents": lat[ancestors.to(lat.device)]}

        options: dict[str, Any] = {"window": s.window, "loop_steps": "callback_on_step_end" in self._params,
                                   "keep_difference": fkc is not None, "keep_prediction": steer is not None}
        if s.micro_batch is not None:
            options["micro_batch"] = s.micro_batch
        start = time.perf_counter()
        try:
            with scheduler_for_call(self.pipe, self.scheduler, generators):
                den.begin(scales, s.num_inference_steps, **options)
                images = self.pipe(**self._call_kwargs(rows, generators, on_step)).images
        finally:
            den.end()  # the scales were for this call only
        u8 = [to_uint8(np.asarray(im, dtype=np.float32)) for im in images]
        if population is None:
            picked = list(range(len(items)))
        elif fkc is not None:
            picked = population.pick().tolist()
        else:
            picked = population.pick(self._reward(u8, rows, "the outputs")).tolist()
        wall = (time.perf_counter() - start) / len(items)
        self.last_population = population
        cost = den.image_rows.view(len(items), K, 2).sum(1).tolist()  # every particle's rows count
        out = []
        for j, it in enumerate(items):
            bad_steps = [b for b in first_bad[j * K:(j + 1) * K] if b is not None]
            first = min(bad_steps) if bad_steps else None
            bad = first is not None or not np.isfinite(np.asarray(images[picked[j]], dtype=np.float32)).all()
            out.append(Generated(it, u8[picked[j]], bad, first, cost[j][0], cost[j][1], wall))
        return out

    def _steering_step(self, pipe, population, rows: list[WorkItem], i: int, t):
        """FK steering after step i, when scheduled (every ``interval``-th step, never the last): the reward of each
        particle's predicted x0 (from the input and the guided prediction of step i, decoded by the VAE) gives the
        potentials; returns the ancestor rows (rlg.fk_steering.FKSteeringPopulation) or None."""
        from rlg.fk_steering import predicted_x0

        steer, den, n = self.settings.steering, self.pair.denoiser, len(rows)
        if i % steer.interval or i == len(pipe.scheduler.timesteps) - 1 or population.K == 1:
            return None
        x, pred = den.last_input, den.last_output
        if pred.shape[0] == 2 * n:  # CFG: [uncond, cond]; both halves hold the same latents
            pred = pred[:n] + float(pipe.guidance_scale) * (pred[n:] - pred[:n])
            x = x[:n]
        elif pred.shape[0] != n:
            raise SamplerError(f"fk_steering: the denoiser got {pred.shape[0]} rows for {n} particles; only pipelines "
                               "with no CFG or two-branch CFG are supported")
        return population.potential_step(self._reward(self._decode(predicted_x0(pipe.scheduler, t, x, pred)), rows,
                                                      f"step {i}"))

    def _decode(self, latents: torch.Tensor) -> list[np.ndarray]:
        """Latents -> uint8 HxWx3 images, as the pipeline decodes its output (VAE scaling and shift, postprocess)."""
        vae = self.pipe.vae
        z = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
        decoded = vae.decode(z.to(vae.dtype), return_dict=False)[0]
        arrays = self.pipe.image_processor.postprocess(decoded, output_type="np")
        return [to_uint8(a) for a in arrays]

    def _reward(self, images: list[np.ndarray], rows: list[WorkItem], where: str) -> torch.Tensor:
        """The steering reward of each image (the scorer's: higher is better), float64. Raises SamplerError when a
        reward is not finite (no particle is silently dropped)."""
        steer = self.settings.steering
        values = np.asarray(steer.scorer(images, [it.prompt for it in rows]), dtype=np.float64).reshape(-1)
        if not np.isfinite(values).all():
            raise SamplerError(f"fk_steering: the reward {steer.reward} is not finite for {int((~np.isfinite(values)).sum())} "
                               f"of {len(values)} particles at {where}; fix the evaluator or steer by another metric")
        return torch.from_numpy(values)

    def _corrector_step(self, pipe, population, scales: list[float], i: int, calls_seen: list[int]):
        """Step i's FKC weight increments from the denoiser's ``pred_rl - pred_base`` of the guided (post-CFG)
        prediction, then resampling (rlg.fkc.FKCPopulation). Returns the ancestor rows or None."""
        from rlg.fkc import log_weight_increment, weight_coefficient

        den = self.pair.denoiser
        calls = den.stats.calls
        if calls - calls_seen[0] != 1:  # e.g. a second denoiser call per step (true CFG, skip-layer guidance)
            raise SamplerError(f"sampler.correctors=fkc needs one denoiser call per step; {type(pipe).__name__} made "
                               f"{calls - calls_seen[0]} at step {i}: remove the keyword that adds calls")
        calls_seen[0] = calls
        diff, n = den.difference, len(scales)
        if diff.shape[0] == 2 * n:  # CFG: [uncond, cond]; the guided difference is linear in both
            g = float(pipe.guidance_scale)
            diff = diff[:n] + g * (diff[n:] - diff[:n])
        elif diff.shape[0] != n:
            raise SamplerError(f"sampler.correctors=fkc: the denoiser got {diff.shape[0]} rows for {n} particles; "
                               "only pipelines with no CFG or two-branch CFG are supported: remove sampler.correctors")
        increments = log_weight_increment(torch.zeros_like(diff), diff, torch.tensor(scales),
                                          weight_coefficient(pipe.scheduler, i))
        return population.step(increments, last=i == len(pipe.scheduler.timesteps) - 1)
