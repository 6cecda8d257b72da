"""Generating RLG images with a loaded pair: paired noise, per-sample scales, batch invariance.

Paired noise: every image has its own torch.Generator seeded from (seed, prompt index, sample
index) only. The pipeline draws the initial latents (and any SDE / DDIM-eta noise) row by row from
these generators, so every scale of a grid starts from the same noise and an image does not depend
on which batch it was generated in.

Batch invariance: kernels choose reduction orders by batch size, so the same row computed in a
batch of 3 or of 8 can differ in the last bits. Text encoders and the VAE therefore run one row at
a time (text encodings are also cached per prompt: computed once for base, RL and every scale), and
the denoiser runs fixed-size micro-batches (``Sampler.micro_batch``).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rlg.harness.config import ConfigError
from rlg.guidance import check_scales
from rlg.pairs import LoadedPair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkItem:
    """One image to make: a prompt, a sample index with its seed, and an RLG scale."""

    prompt_index: int
    prompt: str
    sample_index: int
    seed: int
    scale: float


@dataclass
class Generated:
    item: WorkItem
    image: np.ndarray  # uint8 HxWx3
    nonfinite: bool = False
    nonfinite_step: int | None = None  # first step whose latents held NaN/inf (None: unknown or finite)


@dataclass
class SamplerSettings:
    """What the pipeline call needs. ``extra`` is passed to the pipeline as is (e.g. true_cfg_scale)."""

    num_inference_steps: int = 20
    guidance_scale: float = 4.5
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = ""  # the official RLG protocol uses "" (not None: SDXL treats them differently)
    eta: float | None = None  # DDIM eta
    guidance_rescale: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def noise_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The generator seed of an image: a hash of (seed, prompt index, sample index) only."""
    digest = hashlib.sha256(f"rlg-noise:{seed}:{prompt_index}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


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
class RLGSampler:
    """Runs a loaded pair's pipeline on batches of work items."""

    def __init__(self, pair: LoadedPair, settings: SamplerSettings, text_cache_size: int = 64):
        if settings.guidance_rescale and settings.guidance_rescale > 0:
            raise ValueError(
                "guidance_rescale > 0 makes classifier-free guidance nonlinear, so mixing raw predictions no longer "
                "equals the official order (CFG inside each model, then the RLG mix); set sampler.guidance_rescale=0")
        self.pair = pair
        self.settings = settings
        self.pipe = pair.pipe
        make_batch_invariant(self.pipe, text_cache_size)
        self._params = set(inspect.signature(self.pipe.__call__).parameters)
        unknown = sorted(set(settings.extra) - self._params)
        if unknown:  # checked once here, not at every pipeline call
            raise ConfigError(f"sampler.extra has {unknown}, which {type(self.pipe).__name__} does not accept; "
                              f"remove them (its arguments: {', '.join(sorted(self._params - {'self', 'kwargs'}))})")
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
        scales = check_scales([it.scale for it in items])
        generators = [torch.Generator("cpu").manual_seed(noise_seed(it.seed, it.prompt_index, it.sample_index))
                      for it in items]
        first_bad: list[int | None] = [None] * len(items)

        def on_step(pipe, i, t, kwargs):
            lat = kwargs["latents"]
            finite = torch.isfinite(lat.reshape(lat.shape[0], -1)).all(dim=1).tolist()
            for r, ok in enumerate(finite[: len(items)]):
                if not ok and first_bad[r] is None:
                    first_bad[r] = int(i)
            return {}

        self.pair.denoiser.begin(scales, self.settings.num_inference_steps)
        images = self.pipe(**self._call_kwargs(items, generators, on_step)).images
        out = []
        for r, it in enumerate(items):
            img = np.asarray(images[r], dtype=np.float32)
            bad = first_bad[r] is not None or not np.isfinite(img).all()
            # the same float -> uint8 rounding as diffusers' numpy_to_pil
            u8 = (np.nan_to_num(img, nan=0.0).clip(0, 1) * 255).round().astype(np.uint8)
            out.append(Generated(it, u8, bad, first_bad[r]))
        return out
