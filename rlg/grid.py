"""The RLG grid protocol: which images share a pipeline call (and its noise), and the one loop over a grid.

A grid is prompts x samples x scales. Every scale of one (prompt, sample) is a *group*: its images
start from the same initial noise (``rlg.sampling.noise_seed`` of (seed, prompt id, sample)), so the
groups are kept whole inside one pipeline call where they fit, and many groups fill a call of
``batch_size`` images (:func:`pack_calls`). A process of ``world`` takes every world-th group
starting at its ``rank`` (:func:`work_groups`), so ranks and shards split the work without overlap.

Every caller that samples a grid uses :func:`run_grid`: the harness's generate stage (which adds the
store, resume and the writer thread), the notebook's :func:`generate_grid`, the benchmarks and the
measurements. Images do not depend on the packing when the denoiser runs fixed-size micro-batches
(``SamplerSettings.micro_batch`` an int or ``"auto"``; see ``rlg.sampling``).

This module takes plain values (a :class:`Grid`, a key function) and imports nothing above
``rlg.sampling``; torch only when :func:`run_grid` samples.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Hashable, Iterator

from rlg.guidance import check_scales
from rlg.sampler_spec import Generated, SamplerSettings, WorkItem

DEFAULT_BATCH_SIZE = 64  # images per pipeline call; the harness's sampler.batch_size default

# key(prompt id, sample index, scale) -> a hashable name of the image (the harness: its content key)
KeyFn = Callable[[int, int, float], Hashable]


@dataclass(frozen=True)
class Grid:
    """What to sample: every (prompt, sample, scale), and how (sampler settings, images per call).

    Attributes:
        prompts: prompt texts.
        scales: RLG scales w (checked by ``rlg.guidance.check_scales``).
        samples: samples per prompt (sample indices 0..samples-1).
        seed: the seed of the paired noise (with the prompt id and sample index).
        settings: the sampler settings of every call.
        batch_size: images per pipeline call (>= 1): whole groups where they fit.
        prompt_ids: the id of each prompt (enters the noise seed and the key); default 0..len(prompts)-1.

    Raises:
        ValueError: an empty grid dimension, ``samples < 1``, ``batch_size < 1``, ids not one per prompt
            or repeated; ``rlg.guidance.ScaleError`` for a bad scale.
    """

    prompts: tuple[str, ...]
    scales: tuple[float, ...]
    samples: int = 1
    seed: int = 0
    settings: SamplerSettings = field(default_factory=SamplerSettings)
    batch_size: int = DEFAULT_BATCH_SIZE
    prompt_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        prompts = (self.prompts,) if isinstance(self.prompts, str) else tuple(self.prompts)
        object.__setattr__(self, "prompts", prompts)
        object.__setattr__(self, "scales", tuple(check_scales(list(self.scales))))
        ids = tuple(range(len(prompts))) if self.prompt_ids is None else tuple(int(i) for i in self.prompt_ids)
        object.__setattr__(self, "prompt_ids", ids)
        if not prompts or not self.scales:
            raise ValueError("a grid needs at least one prompt and one scale")
        if self.samples < 1 or self.batch_size < 1:
            raise ValueError(f"samples={self.samples} and batch_size={self.batch_size} must be >= 1")
        if len(ids) != len(prompts) or len(set(ids)) != len(ids):
            raise ValueError(f"prompt_ids needs one distinct id per prompt ({len(prompts)} prompts, ids {ids})")


def _own_key(prompt_id: int, sample: int, scale: float) -> tuple[int, int, float]:
    return prompt_id, sample, scale


def work_groups(grid: Grid, key: KeyFn | None = None, *, rank: int = 0,
                world: int = 1) -> list[list[tuple[Hashable, WorkItem]]]:
    """This process's (key, WorkItem) groups: one group per (prompt, sample) with every scale of the grid,
    in the order prompt-major, sample-minor; the process of ``rank`` takes every ``world``-th group.

    ``key(prompt_id, sample, scale)`` names each image (default: the tuple itself)."""
    key = key or _own_key
    groups = []
    g = 0
    for pid, text in zip(grid.prompt_ids, grid.prompts):
        for s in range(grid.samples):
            if g % world == rank:
                groups.append([(key(pid, s, w), WorkItem(pid, text, s, grid.seed, w)) for w in grid.scales])
            g += 1
    return groups


def pack_calls(todo: list[list[Any]], size: int) -> list[list[Any]]:
    """Work items into pipeline calls of at most ``size`` images: whole (prompt, sample) groups where they
    fit, so every scale of a group shares a call (and its noise); many groups fill the micro-batches."""
    batches, cur = [], []
    for group in todo:
        for chunk in [group[i:i + size] for i in range(0, len(group), size)]:
            if cur and len(cur) + len(chunk) > size:
                batches.append(cur)
                cur = []
            cur += chunk
    if cur:
        batches.append(cur)
    return batches


def pending(groups: list[list[tuple[Hashable, Any]]], skip: Collection[Hashable]) -> list[list[tuple[Hashable, Any]]]:
    """``groups`` ((key, WorkItem) lists of :func:`work_groups`) without the keys in ``skip``, and without the
    groups left empty: what :func:`run_grid` makes, to pack with :func:`pack_calls`."""
    skip = set(skip)
    return [g for g in ([(k, it) for k, it in group if k not in skip] for group in groups) if g]


def prompt_truncation(pipe, texts: list[str], extra: dict[str, Any]) -> dict[str, bool]:
    """Whether each prompt is longer than a text encoder of ``pipe`` reads (the pipeline then cuts it).

    CLIP tokenizers are cut at their ``model_max_length`` (77); T5 ones (SD3, FLUX) at the pipeline's
    ``max_sequence_length`` (its default, or sampler.extra.max_sequence_length)."""
    params = inspect.signature(pipe.__call__).parameters
    msl = extra.get("max_sequence_length")
    if msl is None and "max_sequence_length" in params:
        msl = params["max_sequence_length"].default
    tokenizers = [c for n, c in pipe.components.items() if n.startswith("tokenizer") and c is not None]
    out = {}
    for text in set(texts):
        cut = False
        for tok in tokenizers:
            limit = tok.model_max_length
            if "CLIP" not in type(tok).__name__ and isinstance(msl, int):
                limit = msl
            if not limit or limit > 1_000_000:  # "no limit" sentinel of transformers
                continue
            if len(tok(text, truncation=False, verbose=False).input_ids) > limit:
                cut = True
        out[text] = cut
    return out


def run_grid(pair, grid: Grid, *, key: KeyFn | None = None, skip: Collection[Hashable] = (), rank: int = 0,
             world: int = 1, before_call: Callable[[], None] | None = None,
             ) -> Iterator[list[tuple[Hashable, Generated]]]:
    """Sample this process's part of ``grid`` with the loaded ``pair`` (an ``rlg.pairs.LoadedPair``), one
    pipeline call at a time.

    Args:
        key: names each image, ``key(prompt_id, sample, scale)`` (default: that tuple).
        skip: keys of images not to make (already stored); a group keeps its other scales.
        rank, world: this process takes every ``world``-th (prompt, sample) group from ``rank``.
        before_call: called before each pipeline call (e.g. a free-space check).
    Returns:
        An iterator over the calls, each a list of (key, ``rlg.sampling.Generated``) in the call's order.
        The sampler is built (and its settings checked) when run_grid is called, before the first call.
    Raises:
        rlg.sampling.SamplerError: settings the pipeline cannot honour (at once).
    """
    from rlg.sampling import RLGSampler  # the engine (torch) only when a grid is sampled

    sampler = RLGSampler(pair, grid.settings)  # refuses sampler.extra keys the pipeline does not accept
    groups = work_groups(grid, key, rank=rank, world=world)
    todo = pending(groups, skip)

    def calls() -> Iterator[list[tuple[Hashable, Generated]]]:
        for batch in pack_calls(todo, grid.batch_size):
            if before_call is not None:
                before_call()
            results = sampler.generate([it for _, it in batch])
            yield [(k, res) for (k, _), res in zip(batch, results)]

    return calls()


def generate_grid(pair, prompts: str | list[str], scales, *, seed: int = 0, samples: int = 1,
                  output: str = "pil", batch_size: int | None = None, **settings) -> list[list[list[Any]]]:
    """Images of every (prompt, sample, scale), with paired noise: ``grid[prompt][sample][scale]``.

    ``settings`` are SamplerSettings fields (num_inference_steps, guidance_scale, height, width,
    negative_prompt, scheduler, window, micro_batch, ...); any other keyword goes to the pipeline as is
    (``SamplerSettings.extra``). The grid runs through :func:`run_grid`, the harness's loop: every scale
    of a (prompt, sample) in one call, from the same noise, seeded by (seed, prompt index, sample index)
    only. ``batch_size``: images per call, whole (prompt, sample) groups where they fit; None (default):
    one group per call, so with the default ``micro_batch=None`` (one unpadded forward per model) an
    image does not depend on the other prompts of the grid. With ``micro_batch`` an int or "auto" (the
    harness's default) the images are the harness's, bit for bit, for any ``batch_size``. ``output``:
    "pil" or "np" (uint8 HxWx3). Nothing stays set on the pair after the call.
    """
    if output not in ("pil", "np"):
        raise ValueError(f"output={output!r}; use 'pil' or 'np'")
    names = {f.name for f in dataclasses.fields(SamplerSettings)} - {"extra"}
    own = {k: v for k, v in settings.items() if k in names}
    extra = {k: v for k, v in settings.items() if k not in names}
    g = Grid(prompts=(prompts,) if isinstance(prompts, str) else tuple(prompts), scales=tuple(scales), seed=seed,
             samples=samples, settings=SamplerSettings(**own, extra=extra), batch_size=batch_size or len(scales))
    made: dict[Hashable, Any] = {}
    for call in run_grid(pair, g):
        for k, res in call:
            made[k] = res.image
    if output == "pil":
        from PIL import Image

        made = {k: Image.fromarray(v) for k, v in made.items()}
    return [[[made[(p, s, w)] for w in g.scales] for s in range(samples)] for p in g.prompt_ids]


__all__ = ["Grid", "work_groups", "pack_calls", "pending", "prompt_truncation", "run_grid",
           "generate_grid", "DEFAULT_BATCH_SIZE"]
