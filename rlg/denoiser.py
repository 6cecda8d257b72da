"""RLGDenoiser: stands in for a stock pipeline's ``unet`` / ``transformer`` and returns the RLG mix.

The pipeline keeps doing everything else (text encoding, classifier-free guidance, the scheduler,
decoding). Because CFG and the RLG mix are both linear, mixing the raw conditional and
unconditional predictions here and letting the pipeline apply CFG afterwards gives exactly the
official order (CFG inside each model, then the mix):

    mix(u) + g * (mix(c) - mix(u)) == mix(u + g * (c - u))      for mix(x) = x_b + w (x_r - x_b)

This breaks for nonlinear guidance (``guidance_rescale > 0``), which ``rlg.sampling`` refuses.

Per-sample scales: the sampler sets one scale per image with :meth:`RLGDenoiser.begin`; the
pipeline may stack the images k times (CFG puts [uncond..., cond...] in one batch), so row r of
the network batch belongs to image r % n_images.

Per-call state: ``begin(scales, num_steps, window=..., micro_batch=...)`` holds for exactly one
pipeline call. The call ends when ``end()`` is called (``RLGSampler`` does so after the pipeline
returns; ``with denoiser.call(...)`` does so on exit), or, for a user who calls the pipeline
directly, when the denoiser sees a timestep past the ``num_steps`` steps given to ``begin``: a second
pipeline call without a new ``begin()`` raises instead of silently reusing the old scales.

Work per call: rows whose effective scale is 0 run only the base model, rows at 1 only the RL
model, the others both. For a LoRA pair both come from ONE forward of the shared network with a
per-row adapter choice (PEFT's mixed-batch ``adapter_names``, ``"__base__"`` = adapter off).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils import BaseOutput

from rlg.guidance import StepWindow, check_scales, rlg_mix
from rlg.sampler_spec import AUTO_MICRO_BATCH, AUTO_MICRO_BATCH_OTHER, resolve_micro_batch  # noqa: F401  (re-exported)

_DEFAULT: Any = object()  # "the value given to the constructor" for begin()'s keywords

# Keyword arguments that are not batched even when their first dimension happens to equal the
# batch size (FLUX position ids are (seq, 3)).
UNBATCHED_KEYS = frozenset({"txt_ids", "img_ids"})
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch

@dataclass
class RLGOutput(BaseOutput):
    sample: torch.Tensor


@dataclass
class ForwardStats:
    """Network work done, in rows (one row = one sample through one model). Used by tests and
    benchmarks to prove that no evaluation is wasted."""

    calls: int = 0  # denoiser calls made by the pipeline
    base_rows: int = 0
    rl_rows: int = 0
    forwards: int = 0  # network forwards actually run (after fusing and micro-batching)
    padded_rows: int = 0  # rows added to fill fixed-size micro-batches

    def reset(self) -> None:
        self.calls = self.base_rows = self.rl_rows = self.forwards = self.padded_rows = 0


def take_rows(obj: Any, index: torch.Tensor, n_rows: int, key: str | None = None) -> Any:
    """Select batch rows from every batched tensor inside ``obj`` (nested dicts, lists, tuples)."""
    if key in UNBATCHED_KEYS:
        return obj
    if isinstance(obj, torch.Tensor):
        if obj.ndim >= 1 and obj.shape[0] == n_rows:
            return obj.index_select(0, index.to(obj.device))
        return obj
    if isinstance(obj, dict):
        return type(obj)((k, take_rows(v, index, n_rows, k)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(take_rows(v, index, n_rows) for v in obj)
    return obj


class RLGDenoiser(torch.nn.Module):
    """A denoiser that returns ``pred_base + w * (pred_rl - pred_base)`` per sample.

    Args:
        base: the base denoiser (a diffusers UNet / transformer, or any module with that call
            signature). For a LoRA pair this is the single network carrying the adapter.
        rl: the RL denoiser for a full-weight pair; ``None`` for a LoRA pair.
        rl_adapter: name of the PEFT adapter in ``base`` that makes it the RL model (LoRA pairs).
        window: the default for :meth:`begin`: the steps where RLG applies, and which model runs
            outside them.
        micro_batch: the default for :meth:`begin`: if set, the rows every model needs in a call
            (all images, scales, CFG branches; base and RL together for a LoRA pair) are packed into
            forwards of exactly this many rows, only the last one padded by repeating a row. Kernels
            pick different reduction orders for different batch sizes, so this is what makes an
            image bit-identical whatever batch it was generated in. ``"auto"``: a fixed size per
            device type (:func:`resolve_micro_batch`). ``None``: one forward per model.
        dedupe: evaluate identical input rows once (all scales of a grid share the first step).
    """

    def __init__(self, base: torch.nn.Module, rl: torch.nn.Module | None = None, *, rl_adapter: str | None = None,
                 window: StepWindow = StepWindow(), micro_batch: int | str | None = None, dedupe: bool = True):
        super().__init__()
        if (rl is None) == (rl_adapter is None):
            raise ValueError("RLGDenoiser needs either an RL denoiser (full-weight pair) or rl_adapter (LoRA pair), "
                             "not both")
        resolve_micro_batch(micro_batch, "cpu")  # refuses a bad value now, not at the first forward
        self.base = base
        self.rl = rl
        self.rl_adapter = rl_adapter
        self.default_window = window
        self.default_micro_batch = micro_batch
        self.window = window  # in force for the current call (set by begin)
        self.micro_batch = micro_batch  # in force for the current call (set by begin)
        self.stats = ForwardStats()
        self._lora_layers = _lora_layers(base) if rl_adapter else []
        if rl_adapter and not self._lora_layers:
            raise ValueError("rl_adapter was given but the base network has no LoRA layers; "
                             "load the adapter first (rlg.pairs)")
        # PEFT's per-row adapter choice cannot serve DoRA layers or modules_to_save copies (e.g. conv_in):
        # such adapters run base (adapters disabled) and RL (enabled) as two forwards instead
        self._adapter_modules = _adapter_modules(base) if rl_adapter else []
        self.mixed_adapter_batch = bool(rl_adapter) and not _needs_separate_forwards(base, rl_adapter)
        self.dedupe = dedupe
        self._diverged = False
        self._scales: torch.Tensor | None = None
        self._num_steps = 1
        self._step = -1
        self._last_t: float | None = None
        # network rows each image of the current (or last) call asked of (base, RL): shape (n_images, 2),
        # counted before any deduplication, so it is what the image costs made on its own
        self.image_rows = torch.zeros((0, 2), dtype=torch.long)
        self._pipe = None  # a weakref to the pipeline (attach): the steps each call runs
        # keep_difference (begin): pred_rl - pred_base per network row of the last forward (0 on rows at w = 0 or 1,
        # where one model runs): what the Feynman-Kac corrector weights of rlg.fkc need
        self.keep_difference = False
        self.difference: torch.Tensor | None = None
        # keep_prediction (begin): the last forward's input sample and output (FK steering's predicted x0)
        self.keep_prediction = False
        self.last_input: torch.Tensor | None = None
        self.last_output: torch.Tensor | None = None
        self._loop: int | None = None  # loop iterations done in this call, when the caller numbers them

    # -- what pipelines read from their denoiser ---------------------------------------------
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base", "rl", "_modules", "_parameters", "_buffers") or name.startswith("__"):
                raise
        value = getattr(self._modules["base"], name)  # config, add_embedding, ... (AttributeError if none)
        if isinstance(value, torch.nn.Module) or not callable(value):
            return value
        return self._network_method(name)

    def _networks(self) -> list[torch.nn.Module]:
        """The distinct networks: base and RL for a full pair, the one shared network for a LoRA pair."""
        return [self.base] if self.rl is None else [self.base, self.rl]

    def _network_method(self, name: str):
        """A network method reached through the wrapper, as ``rlg.surface.NETWORK_METHODS`` declares it: called on
        every network (an in-place change such as FreeU or an attention processor must reach the RL network too),
        the base's answer (a read), or a one-line refusal. An undeclared method raises here, so a diffusers release
        that adds one cannot silently change one network only."""
        from rlg.surface import BASE, BOTH, BOTH_CONTEXT, NETWORK_METHODS

        how = NETWORK_METHODS.get(name)
        if how is None:
            raise RuntimeError(f"RLGDenoiser: {type(self.base).__name__}.{name} was reached through the RLG wrapper but "
                               "is not declared in rlg.surface.NETWORK_METHODS, so it would reach the base network "
                               "only; declare it (both networks, base only, or refused) and test it")
        if how == BASE:
            return getattr(self.base, name)
        if how == BOTH:
            def on_both(*args, **kwargs):
                results = [getattr(net, name)(*args, **kwargs) for net in self._networks()]
                return results[0]
            return on_both
        if how == BOTH_CONTEXT:
            @contextlib.contextmanager
            def entered_on_both(*args, **kwargs):
                with contextlib.ExitStack() as stack:
                    for net in self._networks():
                        stack.enter_context(getattr(net, name)(*args, **kwargs))
                    yield
            return entered_on_both

        def refused(*args, **kwargs):
            raise RuntimeError(f"{name} is refused: {how[1]}")
        return refused

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def is_lora_pair(self) -> bool:
        return self.rl_adapter is not None

    # -- per-call state ------------------------------------------------------------------------
    def begin(self, scales, num_steps: int, *, window: StepWindow | None = None, micro_batch: Any = _DEFAULT,
              loop_steps: bool = False, keep_difference: bool = False, keep_prediction: bool = False) -> None:
        """Set the per-image RLG scales (and the step window and micro-batch) for ONE pipeline call.

        Args:
            scales: one finite scale per image of the call (row r of the network batch belongs to
                image r % len(scales)).
            num_steps: the call's ``num_inference_steps``: window fractions are of this many steps,
                and a timestep past them means a new pipeline call, which raises (call ``begin``
                again before every call).
            window: the step window for this call; ``None``: the constructor's.
            micro_batch: rows per network forward for this call (an int, or ``"auto"``: see
                :func:`resolve_micro_batch`); ``None`` or ``0``: one forward per model; omitted: the
                constructor's.
            loop_steps: the caller numbers the steps: it calls :meth:`loop_step_done` after each iteration of
                the pipeline's loop (``callback_on_step_end``), and the window is over the loop's iterations
                (``pipe._num_timesteps`` of them). Otherwise a step is a new timestep value.
            keep_difference: after every forward, :attr:`difference` holds ``pred_rl - pred_base`` per network row
                (shape and dtype of the predictions; zero on rows at w = 0 or 1, where only one model runs), for the
                Feynman-Kac corrector weights (``rlg.fkc``). The output does not change.
            keep_prediction: after every forward, :attr:`last_input` and :attr:`last_output` hold the sample given
                and the prediction returned (FK steering's predicted x0, ``rlg.fk_steering``).
        Raises:
            rlg.guidance.ScaleError: a scale that is not a finite number.
            ValueError: ``num_steps < 1`` or a ``micro_batch`` that is not >= 0 or ``"auto"``.
        """
        if int(num_steps) < 1:
            raise ValueError(f"num_steps must be >= 1 (the pipeline call's num_inference_steps), got {num_steps}")
        if micro_batch is _DEFAULT:
            micro_batch = self.default_micro_batch
        resolve_micro_batch(micro_batch, "cpu")  # refuses a bad value
        self._scales = torch.tensor(check_scales(scales), dtype=torch.float64)
        self.image_rows = torch.zeros((len(self._scales), 2), dtype=torch.long)
        self._num_steps = int(num_steps)
        self.window = self.default_window if window is None else window
        self.micro_batch = micro_batch or None
        self._step = -1
        self._last_t = None
        self._diverged = False
        self._loop = 0 if loop_steps else None
        self.keep_difference = bool(keep_difference)
        self.difference = None
        self.keep_prediction = bool(keep_prediction)
        self.last_input = self.last_output = None
        pipe = self._pipe() if self._pipe is not None else None
        if pipe is not None:  # the pipeline sets it again before its loop; a stale count from the last call must not be read
            pipe._num_timesteps = None

    def attach(self, pipe) -> None:
        """Read the number of steps each call runs from ``pipe`` (weakly referenced), see :meth:`steps_run`."""
        import weakref

        self._pipe = weakref.ref(pipe)

    def loop_step_done(self) -> None:
        """One iteration of the pipeline's loop is over (called from ``callback_on_step_end``)."""
        if self._loop is not None:
            self._loop += 1

    def steps_run(self) -> int:
        """The steps the current pipeline call runs: the window's fractions are of these steps.

        diffusers pipelines set ``_num_timesteps = len(timesteps)`` before their loop, after ``strength``
        (img2img / inpaint), ``denoising_start`` / ``denoising_end`` (SDXL) or custom ``timesteps`` / ``sigmas``
        cut the schedule; a scheduler of order k (Heun) lists about k timesteps per step. Without an attached
        pipeline that set it: the ``num_steps`` given to :meth:`begin`."""
        pipe = self._pipe() if self._pipe is not None else None
        n = getattr(pipe, "_num_timesteps", None) if pipe is not None else None
        if not isinstance(n, int) or n < 1:
            return self._num_steps
        if self._loop is not None:  # loop iterations, numbered by the caller
            return n
        order = int(getattr(getattr(pipe, "scheduler", None), "order", 1) or 1)
        return -(-n // order)

    def end(self) -> None:
        """End the current call: the scales set by :meth:`begin` are dropped (idempotent); ``image_rows``
        keeps the call's counts until the next :meth:`begin`."""
        self._scales = None
        self._loop = None
        self.keep_difference = self.keep_prediction = False
        self._step = -1
        self._last_t = None
        self.window = self.default_window
        self.micro_batch = self.default_micro_batch

    @contextlib.contextmanager
    def call(self, scales, num_steps: int, **options):
        """``with denoiser.call(scales, num_steps): pipe(...)``: begin() for one call, end() on exit."""
        self.begin(scales, num_steps, **options)
        try:
            yield self
        finally:
            self.end()

    @property
    def in_call(self) -> bool:
        """Whether scales are set for a pipeline call (begin() called, call not ended)."""
        return self._scales is not None

    def _advance_step(self, timestep) -> None:
        # A step is a new timestep value: FLUX true-CFG calls twice per step with the same t.
        t = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        if self._loop is not None and self._step >= 0:  # the caller numbers the loop's iterations
            if self._loop >= self._num_steps:
                n = self._num_steps
                self.end()
                raise RuntimeError(f"RLGDenoiser: the scales set by begin() were for one pipeline call of {n} steps "
                                   "and are used up; call begin(scales, num_steps) before every pipeline call")
            self._step = self._loop
            self._last_t = t
            return
        if t != self._last_t:
            if self._step < 0:  # the call's first step: the pipeline has cut its schedule by now
                n = self.steps_run()
                if self._loop is None and n > self._num_steps:  # a direct call with more steps than begin() was told
                    told = self._num_steps
                    self.end()
                    raise RuntimeError(f"RLGDenoiser: the scales set by begin() were for one pipeline call of {told} "
                                       f"steps, but this call runs {n}; call begin(scales, {n}) before it")
                self._num_steps = n
                if not self.window.steps_inside(self._num_steps):
                    self.end()
                    raise ValueError(f"the RLG window [{self.window.start:g}, {self.window.stop:g}) holds none of the "
                                     f"{self._num_steps} steps this call runs (the window is over the steps that run, "
                                     "after strength / denoising_start / denoising_end); widen it")
            if self._step + 1 >= self._num_steps:  # a timestep past the call's steps: a new pipeline call
                n = self._num_steps
                self.end()
                raise RuntimeError(
                    f"RLGDenoiser: the scales set by begin() were for one pipeline call of {n} steps and are used "
                    "up; call begin(scales, num_steps) before every pipeline call (or use rlg.RLGSampler, which "
                    "does). If one call really makes more denoiser steps than num_inference_steps (a scheduler "
                    "that evaluates the model at new timesteps within a step), pass that count as num_steps.")
            self._step += 1
            self._last_t = t

    # -- the call ------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        if self._scales is None:
            raise RuntimeError("RLGDenoiser has no scales for this pipeline call: call begin(scales, num_steps) before "
                               "every pipeline call (scales are consumed by one call), or use rlg.RLGSampler")
        return_dict = kwargs.pop("return_dict", True)
        if args:
            sample = args[0]
        else:
            sample_key = "sample" if "sample" in kwargs else "hidden_states"
            sample = kwargs[sample_key]
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        self._advance_step(timestep)
        self.stats.calls += 1

        n_rows, n_img = sample.shape[0], len(self._scales)
        if n_rows % n_img:
            raise RuntimeError(f"RLG scales were set for {n_img} images but the denoiser got a batch of {n_rows}; "
                               "call begin() with one scale per image of the pipeline call")
        scales = self.window.effective_scales(self._scales, self._step, self._num_steps).repeat(n_rows // n_img)
        image = torch.arange(n_rows) % n_img
        self.image_rows[:, 0].index_add_(0, image, (scales != 1.0).long())
        self.image_rows[:, 1].index_add_(0, image, (scales != 0.0).long())
        group, reps = self._identical_rows(args, kwargs, n_rows, scales)
        # a group of identical input rows is computed once per model, if any of its rows needs that model
        n_groups = len(reps)
        wants_base = torch.zeros(n_groups).index_add_(0, group, (scales != 1.0).float()) > 0
        wants_rl = torch.zeros(n_groups).index_add_(0, group, (scales != 0.0).float()) > 0
        base_groups, rl_groups = torch.nonzero(wants_base).flatten(), torch.nonzero(wants_rl).flatten()
        need_base, need_rl = reps[base_groups], reps[rl_groups]
        self.stats.base_rows += len(need_base)
        self.stats.rl_rows += len(need_rl)

        user = self.user_adapters() if self.is_lora_pair else []
        if user:  # the base is the user's adapted model, the RL model that plus the RL adapter: two forwards
            with self._active_adapters(user):
                pred_base = self._run(self.base, need_base, None, n_rows, args, kwargs)
            with self._active_adapters(user + [self.rl_adapter]):
                pred_rl = self._run(self.base, need_rl, None, n_rows, args, kwargs)
        elif self.is_lora_pair and not self.mixed_adapter_batch:
            with self._adapters_enabled(False):
                pred_base = self._run(self.base, need_base, None, n_rows, args, kwargs)
            with self._adapters_enabled(True):
                pred_rl = self._run(self.base, need_rl, None, n_rows, args, kwargs)
        elif self.is_lora_pair:
            rows = torch.cat([need_base, need_rl])
            tags = [BASE_ADAPTER] * len(need_base) + [self.rl_adapter] * len(need_rl)
            both = self._run(self.base, rows, tags, n_rows, args, kwargs)
            pred_base, pred_rl = both[: len(need_base)], both[len(need_base):]
        else:
            pred_base = self._run(self.base, need_base, None, n_rows, args, kwargs)
            pred_rl = self._run(self.rl, need_rl, None, n_rows, args, kwargs)

        # position of each row's group output inside pred_base / pred_rl
        pos_base = torch.full((n_groups,), -1, dtype=torch.long)
        pos_base[base_groups] = torch.arange(len(base_groups))
        pos_rl = torch.full((n_groups,), -1, dtype=torch.long)
        pos_rl[rl_groups] = torch.arange(len(rl_groups))
        like = pred_base if pred_base is not None else pred_rl
        out = torch.empty((n_rows, *like.shape[1:]), dtype=like.dtype, device=like.device)
        only_base, only_rl = scales == 0.0, scales == 1.0
        mixed = ~(only_base | only_rl)
        dev = like.device
        if only_base.any():
            out[only_base.to(dev)] = pred_base[pos_base[group[only_base]].to(dev)]
        if only_rl.any():
            out[only_rl.to(dev)] = pred_rl[pos_rl[group[only_rl]].to(dev)]
        if mixed.any():
            out[mixed.to(dev)] = rlg_mix(pred_base[pos_base[group[mixed]].to(dev)],
                                         pred_rl[pos_rl[group[mixed]].to(dev)], scales[mixed])
        if self.keep_difference:
            diff = torch.zeros_like(out)
            if mixed.any():
                m = mixed.to(dev)
                diff[m] = pred_rl[pos_rl[group[mixed]].to(dev)] - pred_base[pos_base[group[mixed]].to(dev)]
            self.difference = diff
        if self.keep_prediction:
            self.last_input, self.last_output = sample, out
        if len(set(scales.tolist())) > 1:  # rows that shared an input now take different steps
            self._diverged = True
        return RLGOutput(sample=out) if return_dict else (out,)

    def _identical_rows(self, args, kwargs, n_rows: int, scales: torch.Tensor):
        """Group rows whose inputs are identical: (group id per row, first row of each group).

        All scales of a (prompt, sample) start from the same noise, so until the first step where
        different scales are mixed their rows are the same input (the first step, and every step
        before the RLG window); each such input is evaluated once per model."""
        identity = torch.arange(n_rows)
        if not self.dedupe or self._diverged or n_rows == 1:
            return identity, identity
        flat = [t.reshape(n_rows, -1).float() for t in _batched_tensors((args, kwargs), n_rows)]
        if not flat:
            return identity, identity
        rows = torch.cat(flat, dim=1)
        _, group = torch.unique(rows, dim=0, return_inverse=True)
        group = group.cpu()
        n_groups = int(group.max()) + 1
        if n_groups == n_rows:
            return identity, identity
        # renumber groups by first occurrence, so results do not depend on torch.unique's sort order
        first = torch.full((n_groups,), n_rows, dtype=torch.long).scatter_reduce_(0, group, identity, "amin")
        order = torch.argsort(first)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n_groups)
        return rank[group], first[order]

    def _run(self, model, rows: torch.Tensor, tags: list[str] | None, n_rows: int, args, kwargs):
        """Run ``model`` on the given rows (repeats allowed), in micro-batches when set."""
        if len(rows) == 0:
            return None
        fixed = resolve_micro_batch(self.micro_batch, _first_tensor((args, kwargs)).device)
        size = fixed or len(rows)
        outs = []
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            chunk_tags = tags[start:start + size] if tags else None
            n_real = len(chunk)
            if n_real < size:  # only the last micro-batch: pad to the fixed size, drop the pad after
                pad = size - n_real
                chunk = torch.cat([chunk, chunk[-1:].repeat(pad)])
                chunk_tags = chunk_tags + chunk_tags[-1:] * pad if chunk_tags else None
                self.stats.padded_rows += pad
            a = take_rows(args, chunk, n_rows)
            kw = take_rows(kwargs, chunk, n_rows)
            with self._adapter_rows(chunk_tags):
                out = model(*a, **kw, return_dict=False)[0]
            self.stats.forwards += 1
            outs.append(out[:n_real])
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @contextlib.contextmanager
    def _adapter_rows(self, tags: list[str] | None):
        """Pass PEFT's per-row ``adapter_names`` to every LoRA layer for one forward."""
        if tags is None:
            yield
            return
        if self.base.training:
            raise RuntimeError("mixed-adapter batches need eval mode: call .eval() on the denoiser")

        def hook(module, args, kwargs):
            kwargs["adapter_names"] = tags
            return args, kwargs

        handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in self._lora_layers]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


    def user_adapters(self) -> list[str]:
        """The network's active adapters other than the RL one (a LoRA pair): the user's own (a style or
        DreamBooth LoRA), which both the base and the RL model keep, as in the stock pipeline with them."""
        for m in self._lora_layers:
            return [a for a in m.active_adapters if a != self.rl_adapter]
        return []

    @contextlib.contextmanager
    def _active_adapters(self, names: list[str]):
        """Exactly ``names`` active in every PEFT layer for one forward (their scales as the user set them); the
        previous active set afterwards."""
        before = [(m, list(m.active_adapters)) for m in self._lora_layers]
        for m, _ in before:
            m.set_adapter(names, inference_mode=True)
        try:
            yield
        finally:
            for m, names_before in before:
                m.set_adapter(names_before, inference_mode=True)

    @contextlib.contextmanager
    def _adapters_enabled(self, enabled: bool):
        """Every PEFT adapter module of the network on (the RL model) or off (the base model) for one forward;
        adapters are left enabled afterwards, as loading leaves them."""
        for m in self._adapter_modules:
            m.enable_adapters(enabled)
        try:
            yield
        finally:
            for m in self._adapter_modules:
                m.enable_adapters(True)


def _adapter_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """PEFT's LoRA/DoRA layers and modules_to_save wrappers inside ``model`` (what enable_adapters toggles)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


def _needs_separate_forwards(model: torch.nn.Module, adapter: str) -> bool:
    """True when PEFT's mixed-batch ``adapter_names`` cannot serve ``adapter``: DoRA layers (PEFT refuses
    adapter_names with DoRA) or modules_to_save wrappers (the per-row hooks reach only LoRA layers)."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    for m in model.modules():
        if isinstance(m, AuxiliaryTrainingWrapper):
            return True
        if bool(getattr(m, "use_dora", {}).get(adapter, False)):
            return True
    return False


def _first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor inside ``obj`` (the pipeline's latents come first): where the forward runs."""
    if isinstance(obj, torch.Tensor):
        return obj
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    for v in values:
        found = _first_tensor(v)
        if found is not None:
            return found
    return None


def _batched_tensors(obj: Any, n_rows: int, key: str | None = None) -> list[torch.Tensor]:
    """Every tensor in ``obj`` whose first dimension is the batch (what take_rows would slice)."""
    if key in UNBATCHED_KEYS:
        return []
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.ndim >= 1 and obj.shape[0] == n_rows else []
    if isinstance(obj, dict):
        return [t for k, v in obj.items() for t in _batched_tensors(v, n_rows, k)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _batched_tensors(v, n_rows)]
    return []


def _lora_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft is a hard dependency; without it there can be no LoRA layers
        return []
    return [m for m in model.modules() if isinstance(m, LoraLayer)]
