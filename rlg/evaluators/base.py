"""The Evaluator protocol, a lazy registry, and the one scoring loop: the batched runner with per-image
failure isolation (:func:`run_evaluator`) and its in-memory form for arrays of images (:func:`score_images`).

An evaluator's heavy imports (open_clip, easyocr, ...) happen only when it is selected: the registry
(``REGISTRY``, an ``rlg.registry.Registry``) maps names to "module:Class" strings and imports on first use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from rlg.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One stored image with what scorers may need. ``key`` is the store's content key."""

    key: str
    image: Image.Image  # RGB
    prompt: str = ""
    metadata: dict[str, Any] | None = None  # e.g. a GenEval metadata row


@runtime_checkable
class Evaluator(Protocol):
    name: str  # registry name, e.g. "jpeg"
    version: str  # convention string recorded with every number (engine, scale, backbone, ...)
    metrics: dict[str, bool]  # metric name -> higher_is_better: what score() writes (rlg.metrics.directions)
    declares: tuple  # rlg.metrics.Metric of every metric it can write or the report derives from it
    needs: frozenset[str]  # subset of {"image", "prompt", "metadata"}
    # how each constructor option takes effect (tests/test_effects.py fails for an undeclared one and checks each):
    # "score" changes the scores and ``version``; "placement" where it runs or caches, no score; "gpu" changes
    # scores only where the CPU audit cannot reach (CUDA kernels, autocast). Options in the class's
    # ``ignored_options`` are refused at start-up instead (no effect) and are not listed here
    option_effects: dict[str, str]

    def score(self, batch: list[Sample]) -> list[dict[str, float]]:
        """Scores for each sample, in order; may raise (the runner then retries one by one)."""
        ...


class UnknownEvaluatorError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


TORCH_PLACES = {"device": "gpu", "offline": "placement", "cache_dir": "placement"}  # a torch model's option_effects

# name -> "module:Class". A new evaluator is its module (the class, its metrics declared with rlg.metrics) and a
# line here (or REGISTRY.register(name, cls) at runtime: tests/test_eval_base.py).
REGISTRY = Registry("evaluator", {
    "jpeg": "rlg.evaluators.jpeg:JpegCompressibility",
    "ocr": "rlg.evaluators.ocr:OCRAccuracy",
    "pickscore": "rlg.evaluators.pickscore:PickScore",
    "hps": "rlg.evaluators.hps:HPSv2",
    "imagereward": "rlg.evaluators.imagereward:ImageReward",
    "aesthetic": "rlg.evaluators.aesthetic:Aesthetic",
    "clip_score": "rlg.evaluators.clip_score:CLIPScore",
    "geneval": "rlg.evaluators.geneval:GenEval",
    "digit_prob": "rlg.evaluators.digits:DigitProb",
    "digit_fd": "rlg.evaluators.digits:DigitFD",
}, error=UnknownEvaluatorError)


def available() -> list[str]:
    return sorted(REGISTRY)


def evaluator_class(name: str) -> type:
    """The class registered as ``name`` (imported on first use). Raises UnknownEvaluatorError listing the
    known names. Optional class hooks the harness calls at start-up, before any image is made:
    ``check_options(**options)`` (raise ValueError for a bad value) and
    ``check_prompts(texts, metadata)`` (raise ValueError for prompts it cannot score); and the attribute
    ``uses_device = False`` for an evaluator that ignores ``device`` (the harness then resolves none)."""
    return REGISTRY.get(name)


def constructor_options(cls: type) -> tuple[dict[str, Any], bool]:
    """The keyword options the evaluator class ``cls`` is built with: ({name: inspect.Parameter}, whether it
    takes any keyword). A constructor's ``**kw`` counts as the keywords of the next ``__init__`` up the MRO
    (``DigitProb(**kw)`` forwards to ``_DigitsBase(weights, batch_size, ...)``); a ``**kw`` that reaches no
    other ``__init__`` takes any keyword."""
    import inspect

    out: dict[str, Any] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = inspect.signature(klass.__init__).parameters
        out.update({k: p for k, p in params.items() if k != "self" and k not in out
                    and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)})
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return out, False
    return out, True


def check_ready(name: str, options: dict[str, Any]) -> None:
    """Refuse, before any image is made, an evaluator that could not score: a package it imports is missing
    (class attribute ``requires``: top-level import names, or ``requires_for(**options)``), or its weights are
    not on disk (class hook ``check_weights(**options)``). Finds packages without importing them.
    Raises rlg.extras.MissingExtraError or rlg.evaluators._models.ModelNotAvailableError, one line each."""
    import importlib.util

    from rlg.extras import MissingExtraError, install_hint

    cls = evaluator_class(name)  # its module's own imports (e.g. rapidfuzz for ocr) fail here
    requires = getattr(cls, "requires_for", None)
    modules = requires(**options) if requires else getattr(cls, "requires", ())
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(f"evaluator {name!r} needs the package {module!r}, which is not installed. "
                                    f"Fix: {install_hint(module)}, or drop {name} from evaluators.selected")
    check = getattr(cls, "check_weights", None)
    if check is not None:
        check(**options)


def metrics_of(name: str, options: dict[str, Any] | None = None) -> tuple:
    """The ``rlg.metrics.Metric``s an evaluator built with ``options`` writes, and those the report derives from
    them (class hook ``metrics_for(**options)`` where the options choose them, else the class's ``metrics``)."""
    cls = evaluator_class(name)
    hook = getattr(cls, "metrics_for", None)
    written = hook(**(options or {})) if hook else cls.metrics
    return tuple(m for m in cls.declares if m.id in written or m.derived)


def register_stored(names: Iterable[str]) -> None:
    """Import the evaluators ``names`` (e.g. the ``evaluator`` column of stored scores) so their metrics are
    registered in ``rlg.metrics``; one that cannot be imported here (a missing extra) keeps its metric ids as
    labels."""
    from rlg.extras import MissingExtraError

    for name in sorted(set(names)):
        try:
            evaluator_class(name)
        except (UnknownEvaluatorError, MissingExtraError):
            log.debug("metrics of evaluator %r not registered (cannot import it here)", name)


def get_evaluator(name: str, **options: Any) -> Evaluator:
    """Build the evaluator ``name`` with its options (batch size, device, dtype, weights, ...).

    Raises ValueError for an option the class accepts without effect (its ``ignored_options``; the harness
    refuses the same at start-up), e.g. ``get_evaluator("jpeg", dtype="float16")``."""
    cls = evaluator_class(name)
    ignored = getattr(cls, "ignored_options", {})
    hit = sorted(k for k in options if k in ignored and options[k] is not None)
    if hit:
        raise ValueError(f"evaluator {name}: option {hit[0]} has no effect ({ignored[hit[0]]}); remove it")
    return cls(**options)


@dataclass
class ScoreRow:
    """One (image, metric) result. ``value`` is NaN and ``error`` set when scoring failed."""

    image_key: str
    evaluator: str
    version: str
    metric: str
    value: float
    higher_is_better: bool
    error: str | None = None


def _rows(ev: Evaluator, sample: Sample, scores: dict[str, float] | None, error: str | None) -> list[ScoreRow]:
    return [
        ScoreRow(sample.key, ev.name, ev.version, m, float("nan") if scores is None else float(scores[m]), hib, error)
        for m, hib in ev.metrics.items()
    ]


def run_evaluator(ev: Evaluator, samples: Iterable[Sample], batch_size: int = 16) -> Iterator[list[ScoreRow]]:
    """Score samples in batches, yielding the rows of each batch as it finishes.

    A batch that raises is retried image by image, so one bad image records its own failure
    (value NaN, error = the exception) and the others are still scored.
    """
    batch: list[Sample] = []

    def score_all(items: list[Sample]) -> list[ScoreRow]:
        results = ev.score(items)
        if len(results) != len(items):
            raise RuntimeError(f"{ev.name} returned {len(results)} results for {len(items)} images")
        return [r for s, sc in zip(items, results) for r in _rows(ev, s, sc, None)]

    def flush() -> list[ScoreRow]:
        if len(batch) > 1:
            try:
                return score_all(batch)
            except Exception as exc:
                log.warning("%s failed on a batch (%s); retrying image by image", ev.name, exc)
        out = []
        for s in batch:
            try:
                out += score_all([s])
            except Exception as exc:  # recorded per image, never silently dropped
                log.warning("%s failed on %s: %s", ev.name, s.key, exc)
                out += _rows(ev, s, None, f"{type(exc).__name__}: {exc}")
        return out

    for s in samples:
        batch.append(s)
        if len(batch) >= batch_size:
            yield flush()
            batch = []
    if batch:
        yield flush()


@dataclass(frozen=True)
class ImageScores:
    """Per-image scores of some evaluators, in image order (what :func:`score_images` returns).

    ``values[metric]``: float64 array (n,), NaN where scoring that image failed; ``errors[evaluator]``:
    one entry per image, the failure (``"ExcType: message"``) or None; ``versions[evaluator]``: the
    convention string recorded with the numbers."""

    values: dict[str, np.ndarray]
    errors: dict[str, tuple[str | None, ...]]
    versions: dict[str, str]

    def __getitem__(self, metric: str) -> np.ndarray:
        return self.values[metric]

    @property
    def failed(self) -> int:
        """(evaluator, image) pairs that could not be scored."""
        return sum(e is not None for errs in self.errors.values() for e in errs)


def reward_scorer(evaluator: Evaluator, metric: str):
    """``scorer(images, prompts) -> (N,) float64``: ``metric`` of ``evaluator`` on images held in memory (uint8 HxWx3
    arrays, one prompt each; :func:`score_images`), negated when lower is better, so that higher is always better:
    FK steering's reward (``rlg.sampler_spec.SteeringSpec.scorer``). Raises ValueError (one line) when the
    evaluator writes no such metric."""
    if metric not in evaluator.metrics:
        raise ValueError(f"fk_steering: evaluator {evaluator.name} writes no metric {metric!r} (it writes "
                         f"{', '.join(sorted(evaluator.metrics))}); steer by one of them")
    sign = 1.0 if evaluator.metrics[metric] else -1.0

    def scorer(images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        return sign * np.asarray(score_images(evaluator, images, list(prompts))[metric], dtype=np.float64)

    return scorer


def score_images(evaluators: Evaluator | str | Sequence[Evaluator | str], images: Sequence[Any] | np.ndarray,
                 prompts: str | Sequence[str] = "", metadata: Sequence[dict[str, Any] | None] | None = None, *,
                 batch_size: int = 16) -> ImageScores:
    """Score images held in memory through :func:`run_evaluator` (the harness's own loop: batches, and a
    batch that fails is retried image by image, so one bad image records its own failure).

    Args:
        evaluators: Evaluator objects or registry names (built with their default options).
        images: uint8 arrays HxWx3 (or one array (N, H, W, 3)) or PIL images.
        prompts: one prompt per image, or one for all.
        metadata: one metadata dict (or None) per image.
        batch_size: images per ``score`` call.
    Returns:
        :class:`ImageScores`.
    Raises:
        ValueError: prompts or metadata not one per image; two evaluators with a metric of the same name.
    """
    evs = [evaluators] if isinstance(evaluators, (str, Evaluator)) else list(evaluators)
    evs = [get_evaluator(e) if isinstance(e, str) else e for e in evs]
    n = len(images)
    texts = [prompts] * n if isinstance(prompts, str) else list(prompts)
    meta = [None] * n if metadata is None else list(metadata)
    if len(texts) != n or len(meta) != n:
        raise ValueError(f"{n} images need one prompt and one metadata entry each; got {len(texts)} prompts and "
                         f"{len(meta)} metadata entries")
    metrics = [m for ev in evs for m in ev.metrics]
    clash = sorted({m for m in metrics if metrics.count(m) > 1})
    if clash:
        raise ValueError(f"metric name(s) {clash} come from more than one evaluator; score them in separate calls")
    pil = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)) for im in images]
    samples = [Sample(key=str(i), image=im, prompt=t, metadata=m) for i, (im, t, m) in enumerate(zip(pil, texts, meta))]
    values = {m: np.full(n, np.nan) for m in metrics}
    errors: dict[str, tuple[str | None, ...]] = {}
    for ev in evs:
        errs: list[str | None] = [None] * n
        for rows in run_evaluator(ev, samples, batch_size=batch_size):
            for r in rows:
                values[r.metric][int(r.image_key)] = r.value
                if r.error:
                    errs[int(r.image_key)] = r.error
        errors[ev.name] = tuple(errs)
    return ImageScores(values, errors, {ev.name: ev.version for ev in evs})
