"""The settings of the measurement kinds (rlg.harness.kinds), torch-free: each dataclass is both what its
library module runs with and the node of the config schema (rlg.harness.config.run_schema), so no field is
declared twice; each kind's builder (``*_settings(conf, scales, overrides)``, ``conf`` the typed run config)
sits beside it. The library modules (rlg.ground_truth, rlg.kl_claim, rlg.kl_learned) re-export them.
Each ``__post_init__`` and builder raises ValueError for a value it cannot run with (the harness names the kind)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

# sampler name -> schedule ("flow" | "vp"); see make_sampler
SAMPLERS = {
    "flow_euler_ode": "flow",
    "flow_grpo_sde": "flow",
    "ddim_eta0": "vp",
    "ddim_eta1": "vp",
}

METRICS = ("energy_distance", "mmd2", "mean_reward", "component_weight", "moments")


@dataclass
class GroundTruthSampling:
    """How the analytic ground truth samples: the config node ``ground_truth`` (its pair is ``pair.analytic``, its
    scales ``grid.scales``, its seed the run's; ``GroundTruthConfig`` adds them)."""

    samplers: list[str] = field(default_factory=lambda: list(SAMPLERS))
    num_inference_steps: int = 100
    n_per_batch: int = 500
    n_batches: int = 8
    noise_level: float = 0.7  # Flow-GRPO SDE
    flow_shift: float = 3.0  # SD3.5's FlowMatch shift
    init: str = "marginal"  # "marginal" | "noise"
    rl_control: bool = True  # the sampler control: the exact target's own score at every w ("exact_score")
    # RLG with Feynman-Kac correctors (rlg.fkc), method "rlg_fkc", one run per particle count K, at every scale
    # except w = 0 and 1 (where its weights are identically 0: the same law as plain sampling); [] = none
    fkc_particles: list[int] = field(default_factory=list)
    fkc_resample: str = "ess"  # "ess" | "every_step"
    # FK steering (rlg.fk_steering), method "fk_steering": the base model alone, K particles, potentials of the
    # reward on the predicted x0, lam = w / beta (target: the beta/w optimum); at every scale but 0; [] = none
    fks_particles: list[int] = field(default_factory=list)
    fks_potential: str = "difference"  # "difference" | "max" | "sum"
    fks_interval: int = 1  # steps between resamplings


@dataclass
class GroundTruthConfig(GroundTruthSampling):
    """What one analytic ground-truth run (``rlg.ground_truth.run_ground_truth``) samples and measures."""

    pair: str = "mixture_quadratic"  # a key of rlg.analytic.PAIR_PRESETS
    d: int = 2
    beta: float = 1.0
    scales: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    moment_dims: int = 8  # per-dimension mean/variance tests for dimensions i < moment_dims
    progress: bool = True  # a tqdm bar over the sampling steps
    seed: int = 0
    fkc_ess_threshold: float = 0.5

    def __post_init__(self):
        if self.fkc_particles or self.fks_particles:  # their own configs name the fix for a bad value
            from rlg.fk_steering import FKSteeringConfig
            from rlg.fkc import FKCConfig

            for k in self.fkc_particles:
                FKCConfig(k, self.fkc_resample, self.fkc_ess_threshold)
            for k in self.fks_particles:
                FKSteeringConfig(k, self.fks_potential, 1.0, self.fks_interval)
        unknown = [s for s in self.samplers if s not in SAMPLERS]
        if unknown:
            raise ValueError(f"unknown samplers {unknown}; known: {sorted(SAMPLERS)}")
        bad = [m for m in self.metrics if m not in METRICS]
        if bad:
            raise ValueError(f"unknown metrics {bad}; known: {list(METRICS)}")
        if self.init not in ("marginal", "noise"):
            raise ValueError(f"init={self.init!r}; use 'marginal' or 'noise'")
        if self.n_batches < 2 or self.n_per_batch < 2:
            raise ValueError("need n_batches >= 2 and n_per_batch >= 2 for error bars")


OBJECTIVES = ("rwr", "pg", "pg_dpok", "dpo")  # retraining objectives ("oracle", DSM on the optimum, is not one)


@dataclass
class LearnedTruthConfig:
    """What one learned ground-truth run trains and samples (defaults: the ``kl_ground_truth_learned`` preset)."""

    pair: str = "mixture_quadratic"  # rlg.analytic.PAIR_PRESETS with a closed-form tilt
    d: int = 2
    beta: float = 1.0  # KL coefficient of the source RL model
    scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 3.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    hidden: int = 128
    depth: int = 3
    base_steps: int = 3000
    tune_steps: int = 1500
    batch_size: int = 256
    lr: float = 2e-3
    tune_lr: float = 1e-3
    num_inference_steps: int = 50
    eta: float = 1.0
    n_samples: int = 2000
    n_batches: int = 4  # energy distances: se over this many disjoint batches
    seed: int = 0  # sampling noise (the same for every arm and training seed)
    threads: int = 1
    workers: int = 1  # processes, one training seed each (the numbers do not change; the wall time does)
    progress: bool = True
    # the retraining objectives, each a full arm (retrained / rlg / weights) at every beta / w:
    # "rwr" reward-weighted regression, "pg" KL-regularised policy gradient (unbiased for the path-KL objective),
    # "pg_dpok" the same with the zoo trainer's formula (KL only at the visited states), "dpo" Diffusion-DPO
    objectives: list[str] = field(default_factory=lambda: ["rwr", "pg", "dpo"])
    pg_steps: int = 200  # policy-gradient iterations (one batch of trajectories each)
    pg_batch: int = 128  # trajectories per iteration
    pg_lr: float = 2e-3
    pg_timestep_fraction: float = 0.25  # DDPO's train.timestep_fraction: steps per trajectory in each update
    dpo_steps: int = 1500
    dpo_pairs: int = 256  # preference pairs per step (fresh Bradley-Terry draws)
    dpo_lr: float = 5e-4
    # w(t) of Diffusion-DPO: "elbo" the DDPM variational weights (T - 1) lambda_t (the path likelihood's); "constant"
    # their mean over t at every t (the simple-loss weighting Wallace et al. train with, same total weight)
    dpo_weight: str = "elbo"

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not self.scales or any(w <= 0 for w in self.scales):
            raise ValueError(f"scales must be > 0 (w = 0 is the base: no KL coefficient), got {self.scales}")
        if len(self.seeds) < 2:
            raise ValueError(f"seeds needs >= 2 training seeds (intervals over seeds), got {self.seeds}")
        if self.eta <= 0:
            raise ValueError(f"eta must be > 0 (the path KL needs a stochastic sampler), got {self.eta}")
        if self.n_batches < 2 or self.n_samples < 2 * self.n_batches:
            raise ValueError("need n_batches >= 2 and n_samples >= 2 * n_batches for the distance error bars")
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if not self.objectives or unknown:
            raise ValueError(f"objectives must be a non-empty subset of {list(OBJECTIVES)}, got {self.objectives}")
        if self.dpo_weight not in ("elbo", "constant"):
            raise ValueError(f"dpo_weight must be 'elbo' or 'constant', got {self.dpo_weight!r}")
        if not 0 < self.pg_timestep_fraction <= 1:
            raise ValueError(f"pg_timestep_fraction must be in (0, 1], got {self.pg_timestep_fraction}")
        for k in ("hidden", "depth", "base_steps", "tune_steps", "batch_size", "num_inference_steps", "pg_steps",
                  "workers", "pg_batch", "dpo_steps", "dpo_pairs"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")


@dataclass
class KLClaimSettings:
    """What one KL-claim measurement runs besides what it shares with an image run (the prompts, sampler and
    evaluator options come from the shared groups ``prompts``, ``sampler`` and ``evaluators.options``: an
    ``rlg.grid.Grid`` in ``rlg.kl_claim.run_kl_claim``). ``metrics`` are "evaluator:metric" names of per-image
    metrics (``rlg.evaluators`` registry); ``set_metrics`` the same for set metrics (an evaluator with
    ``score_set``); ``features`` = "classifier" (the ``feature_evaluator``'s ``features(images)``) or
    "pixels" (uint8 / 255, flattened)."""

    task: str = "digits_dpo"  # names the model directory kl_<task>
    base: str = "zoo:digits_base_v1"  # the base the kl_digits_* models were fine-tuned from (hub layout)
    trainer: str = ""  # "module:function" train(beta, seed, steps, out_dir, **trainer_kwargs); only to train
    trainer_kwargs: Dict[str, Any] = field(default_factory=dict)  # to the trainer as is (e.g. reward: incompress)
    train_steps: int = 0  # 0: the trainer's default
    train_missing: bool = False
    beta: float = 1.0  # the KL coefficient of the source (RL) model
    scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 3.0])
    source_seed: int = 0
    floor_seeds: list[int] = field(default_factory=lambda: [1, 2])
    # paired: RLG(w) from the beta model of every floor seed, each against the beta / w model of the same training
    # seed (common random numbers: the trainer draws the same prompts and noise for a seed at every beta); the
    # source_seed model is then not used. False: RLG from the one source_seed model against the floor seeds' mean.
    paired: bool = False
    weights_dir: str = ""  # default rlg/zoo/weights
    metrics: list[str] = field(default_factory=lambda: ["digit_prob:digit_prob", "jpeg:jpeg_incompressibility"])
    reward_metric: str = ""  # the metric the RL models were trained on (the verdict's); "": the first of metrics
    set_metrics: list[str] = field(default_factory=lambda: ["digit_fd:digit_fd"])
    features: str = "classifier"  # "classifier" | "pixels"
    feature_evaluator: str = "digit_fd"
    distance: str = "energy_distance"  # "energy_distance" | "mmd2"
    n_batches: int = 4
    n_boot: int = 200
    seed: int = 0
    threads: int = 1  # torch intra-op threads while sampling (the CPUs are shared); restored afterwards
    progress: bool = True
    analytic: Optional[GroundTruthConfig] = None  # the closed-form result drawn beside the trained one

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if any(w <= 0 for w in self.scales):
            raise ValueError(f"scales must be > 0 (w = 0 is the base model: no KL coefficient), got {self.scales}")
        if len(self.floor_seeds) < 2:
            raise ValueError("floor_seeds needs two seeds per beta: the floor is the distance between two retrainings")
        if self.source_seed in self.floor_seeds:
            raise ValueError(f"source_seed {self.source_seed} is among floor_seeds {self.floor_seeds}; use another "
                             "seed so that RLG(1) is compared with independent retrainings")
        if self.trainer and ":" not in self.trainer:
            raise ValueError(f"trainer must be 'module:function', got {self.trainer!r}")
        if self.features not in ("classifier", "pixels"):
            raise ValueError(f"features={self.features!r}; use 'classifier' or 'pixels'")
        if self.distance not in ("energy_distance", "mmd2"):
            raise ValueError(f"distance={self.distance!r}; use 'energy_distance' or 'mmd2'")
        names = [m.split(":")[-1] for m in self.metrics]
        if self.reward_metric and self.reward_metric not in names:
            raise ValueError(f"reward_metric={self.reward_metric!r} is not among the metrics {names}")
        self.check_images(2 * self.n_batches)

    def check_images(self, n_images: int) -> None:
        """ValueError unless ``n_images`` per arm (prompts x samples per prompt) fill ``n_batches`` >= 2 batches
        of at least 2 images (the distance error bars)."""
        if self.n_batches < 2 or n_images < 2 * self.n_batches:
            raise ValueError(f"need n_batches >= 2 and at least 2 images per batch for the distance error bars "
                             f"({n_images} images per arm, n_batches={self.n_batches}); raise "
                             "prompts.samples_per_prompt or lower kl_claim.n_batches")


@dataclass
class FindingsConfig:
    """Verdicts over zoo pairs, sampling seeds and methods (rlg.harness.findings, which documents every field)."""

    pairs: list[str] = field(default_factory=list)  # experiment presets, one per pair (each sets report.reward)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # sampling seeds (the run's `seed`) per pair
    overrides: list[str] = field(default_factory=list)  # applied to every sub-run after its preset
    compare_at: list[float] = field(default_factory=lambda: [2.0])  # RLG scales best-of-N is matched with in cost
    reward_margin: float = 0.25  # equivalence margin on the reward: this fraction of the RL model's reward gain
    held_out_margin: float = 0.2  # equivalence margin on a held-out metric: this many base-image sds
    alpha: float = 0.05  # family-wise error rate over the findings table (Holm)
    n_resamples: int = 20000  # cluster-bootstrap resamples (prompts x seeds) per row
    sub_reports: bool = True  # each sub-run writes its own report (the Methods section per pair and seed)


def ground_truth_settings(conf: Any, scales: tuple[float, ...], overrides: list[str]) -> GroundTruthConfig:
    """The analytic ground truth's settings: the closed-form pair, the ground_truth node, the grid's scales."""
    a, g = conf.pair.analytic, conf.ground_truth
    try:
        return GroundTruthConfig(**dataclasses.asdict(g), pair=a.preset, d=a.d, beta=a.beta, scales=list(scales),
                                 seed=conf.seed)
    except ValueError as exc:
        raise ValueError(f"ground_truth: {exc}") from exc


def kl_claim_settings(conf: Any, scales: tuple[float, ...], overrides: list[str]) -> KLClaimSettings:
    """The kl_claim node as it is; its analytic part with the measurement's seed. Its prompts, sampler and evaluator
    options are the shared groups' (the Job's ``prompts`` and ``sampler``, ``evaluators.options``)."""
    s = conf.kl_claim  # the analytic part shares the measurement's seed
    if s.analytic is not None and s.analytic.seed not in (0, s.seed):
        raise ValueError(f"kl_claim.analytic.seed={s.analytic.seed} has no effect (the analytic part takes "
                         f"kl_claim.seed); set kl_claim.seed instead")
    return s if s.analytic is None else dataclasses.replace(s, analytic=dataclasses.replace(s.analytic, seed=s.seed))


def kl_learned_settings(conf: Any, scales: tuple[float, ...], overrides: list[str]) -> LearnedTruthConfig:
    """The kl_learned node with the run's seed."""
    if conf.kl_learned.seed not in (0, conf.seed):
        raise ValueError(f"kl_learned.seed={conf.kl_learned.seed} has no effect (the run's seed is used); set "
                         f"seed={conf.kl_learned.seed} instead")
    return dataclasses.replace(conf.kl_learned, seed=conf.seed)  # the run's seed


@dataclass(frozen=True)
class FindingsSubRun:
    """One (pair, seed) of a findings run: the experiment preset, its reward, the overrides that make it and the
    checked ``rlg.harness.build.Job`` (built when the plan is made: a bad pair fails before any work)."""

    preset: str
    seed: int
    reward: str
    overrides: tuple[str, ...]
    job: Any  # an rlg.harness.build.Job (the app floor: not importable from here)

    @property
    def dir_name(self) -> str:
        return f"{self.preset}-seed{self.seed}"


@dataclass(frozen=True)
class FindingsPlan:
    """The findings kind's checked settings: every sub-run built, and the verdict parameters."""

    runs: tuple[FindingsSubRun, ...]
    compare_at: tuple[float, ...]
    reward_margin: float
    held_out_margin: float
    alpha: float
    n_resamples: int


__all__ = ["FindingsConfig", "FindingsPlan", "FindingsSubRun", "GroundTruthConfig", "GroundTruthSampling", "KLClaimSettings",
           "LearnedTruthConfig", "METRICS", "OBJECTIVES",
           "SAMPLERS", "ground_truth_settings", "kl_claim_settings", "kl_learned_settings"]
