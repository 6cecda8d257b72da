"""What to sample, as plain values: sampler settings, work items and results, the sampler's error, each
image's noise seed and the micro-batch rule.

It imports only the standard library, so the harness checks a run and computes its content keys, and
report-only and evaluate-only invocations run, without the seconds of torch and diffusers imports. The
engine (``rlg.sampling``, ``rlg.denoiser``) re-exports every name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: this module must not import numpy's or torch's start-up cost
    import numpy as np


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
    nfe_base: int = 0  # network rows this image asked of the base model (all steps and CFG branches)
    nfe_rl: int = 0  # ... and of the RL model (RLGDenoiser.image_rows: before deduplication)
    wall_s: float = 0.0  # the pipeline call's wall time divided by its images


FKC_RESAMPLE = ("ess", "every_step")


@dataclass(frozen=True)
class FKCConfig:
    """Feynman-Kac correctors (``rlg.fkc``; ``sampler.correctors=fkc``): particles K per output sample (>= 1);
    resample "ess" (when a sample's effective sample size falls below ess_threshold * K) or "every_step".
    Raises ValueError naming the fix."""

    particles: int = 16
    resample: str = "ess"
    ess_threshold: float = 0.5

    def __post_init__(self):
        if isinstance(self.particles, bool) or int(self.particles) != self.particles or self.particles < 1:
            raise ValueError(f"fkc particles must be an integer >= 1, got {self.particles}")
        if self.resample not in FKC_RESAMPLE:
            raise ValueError(f"fkc resample={self.resample!r}; use one of {list(FKC_RESAMPLE)}")
        if not 0.0 < self.ess_threshold <= 1.0:
            raise ValueError(f"fkc ess_threshold must be in (0, 1], got {self.ess_threshold}")


FK_POTENTIALS = ("difference", "max", "sum")


@dataclass(frozen=True)
class SteeringSpec:
    """FK steering of one model (``method=fk_steering``; ``rlg.fk_steering``): K particles per image, resampled every
    ``interval`` steps by potentials (``potential``) of ``lam`` times the reward of the decoded predicted x0.
    ``reward`` names the metric that steers; ``scorer(images, prompts)`` computes it: uint8 HxWx3 arrays and one
    prompt each -> one float per image, signed so that higher is better (``rlg.evaluators.base.reward_scorer``;
    the sampler imports no evaluator). Raises ValueError naming the fix."""

    particles: int
    reward: str
    scorer: Any = field(default=None, compare=False)
    potential: str = "difference"
    interval: int = 1
    lam: float = 1.0

    def __post_init__(self):
        if isinstance(self.particles, bool) or int(self.particles) != self.particles or self.particles < 1:
            raise ValueError(f"fk_steering particles must be an integer >= 1, got {self.particles}")
        if self.potential not in FK_POTENTIALS:
            raise ValueError(f"fk_steering potential={self.potential!r}; use one of {list(FK_POTENTIALS)}")
        if isinstance(self.interval, bool) or int(self.interval) != self.interval or self.interval < 1:
            raise ValueError(f"fk_steering interval must be an integer >= 1, got {self.interval}")
        if not isinstance(self.lam, (int, float)) or self.lam != self.lam or abs(self.lam) == float("inf"):
            raise ValueError(f"fk_steering lam must be a finite number, got {self.lam}")


class SamplerError(ValueError):
    """Sampler settings the pipeline cannot honour; the message names the fix."""


@dataclass
class SamplerSettings:
    """What one pipeline call needs; all of it is applied per call, so changing it keeps the pair loaded.

    ``extra`` is passed to the pipeline as is (e.g. true_cfg_scale, inpainting image/mask_image).
    ``scheduler``: a name of ``rlg.choices.SCHEDULERS``; ``shift`` (flow schedulers: None keeps the pipeline's) and
    ``noise_level`` (flow_grpo_sde) configure it. ``window``/``micro_batch``: the denoiser's step window
    and rows per network forward (``None``: the denoiser's own defaults; ``micro_batch=0``: one forward
    per model). ``correctors``: an :class:`FKCConfig` runs every image as a population of K particles with
    Feynman-Kac corrector weights (``rlg.fkc``, docs/fkc.md); None: plain RLG.
    """

    num_inference_steps: int = 20
    guidance_scale: float = 4.5
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = ""  # the official RLG protocol uses "" (not None: SDXL treats them differently)
    eta: float | None = None  # DDIM eta
    guidance_rescale: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    scheduler: str = "default"
    shift: float | None = None
    noise_level: float = 0.7
    window: Any = None  # an rlg.guidance.StepWindow (not imported: this module imports nothing of rlg)
    micro_batch: int | str | None = None  # rows per forward, "auto" (per device type) or None/0
    correctors: FKCConfig | None = None  # Feynman-Kac correctors: K particles per image (rlg.fkc); None: plain RLG
    steering: SteeringSpec | None = None  # FK steering by a reward: K particles per image (rlg.fk_steering)


def noise_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The generator seed of an image: a hash of (seed, prompt index, sample index) only."""
    digest = hashlib.sha256(f"rlg-noise:{seed}:{prompt_index}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def particle_seed(seed: int, prompt_index: int, sample_index: int, particle: int) -> int:
    """The generator seed of FKC particle ``particle`` of an image: particle 0 has the image's own
    :func:`noise_seed` (so K = 1 is plain RLG, bit for bit), the others a hash of (seed, prompt, sample, particle)."""
    if particle == 0:
        return noise_seed(seed, prompt_index, sample_index)
    digest = hashlib.sha256(f"rlg-particle:{seed}:{prompt_index}:{sample_index}:{particle}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def corrector_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of an image's FKC resampling and final pick (its own stream, apart from the particles' noise)."""
    digest = hashlib.sha256(f"rlg-fkc:{seed}:{prompt_index}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# Rows per network forward that ``micro_batch="auto"`` resolves to, by device type. A fixed size per
# device keeps images bit-identical whatever the batch. CPU: 32 rows amortise the per-forward overhead
# (benchmarks/grid.py, tiny pairs, 8 prompts x 7 scales per call: the PEFT-LoRA UNet pair took 1.14x
# the floor at 16 rows, 0.88x at 32). GPU: 16 rows fill a GPU at realistic shapes (16 x 1357 tokens
# for SD3.5-M at 512px; not yet measured: benchmarks/gpu.py sweeps 8-64). Padding costs at most size-1
# rows per model and step of a pipeline call, so the harness fills calls with many (prompt, sample)
# groups (sampler.batch_size). Changing an entry changes the images' content keys (no mixing).
AUTO_MICRO_BATCH = {"cpu": 32, "cuda": 16, "mps": 16, "xpu": 16}
AUTO_MICRO_BATCH_OTHER = 16  # any other device type


def resolve_micro_batch(micro_batch: int | str | None, device: Any) -> int | None:
    """The rows per network forward that ``micro_batch`` means on ``device``.

    Args:
        micro_batch: an int >= 1 (that many rows per forward), ``"auto"`` (``AUTO_MICRO_BATCH`` for
            the device type), or ``None`` / ``0`` (one unpadded forward per model and step: fastest,
            but an image then depends on the batch it was made in).
        device: where the denoiser runs, a ``torch.device`` or its string (only its type matters).
    Returns:
        int >= 1, or ``None`` for one forward per model.
    Raises:
        ValueError: anything else (a negative number, another string).
    """
    if micro_batch is None or (isinstance(micro_batch, int) and not isinstance(micro_batch, bool)
                               and micro_batch == 0):
        return None
    if micro_batch == "auto":
        kind = getattr(device, "type", None) or str(device).split(":")[0]  # torch.device(...).type, without torch
        return AUTO_MICRO_BATCH.get(kind, AUTO_MICRO_BATCH_OTHER)
    if isinstance(micro_batch, int) and not isinstance(micro_batch, bool) and micro_batch >= 1:
        return micro_batch
    raise ValueError(f"micro_batch={micro_batch!r} is not valid; use an int >= 1 (rows per network forward), "
                     "'auto' (a fixed size per device type) or null/0 (one forward per model, batch-dependent)")
