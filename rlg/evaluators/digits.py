"""Evaluators of the digits zoo: the prompted digit's probability and a Fréchet distance to real digits.

Both use a small digit classifier, :class:`DigitClassifier`, defined here beside the scorers that read it.
The zoo trains it (``python -m rlg.zoo.train digits``) on the train split of scikit-learn's bundled UCI
digits and ships it at ``rlg/zoo/weights/digits_classifier`` (id ``zoo:digits_classifier``, resolved by
``rlg.model_ids``): this module imports nothing of the zoo.

``digit_prob`` (alignment, higher is better): softmax probability of the digit the prompt names
(the last character 0-9 of the prompt, e.g. "a handwritten digit 3" -> 3), per image.

``digit_fd`` (quality, lower is better): the Fréchet distance between the classifier's 64-d
penultimate features of a SET of images and those of the 500 held-out real digits,
FD = ||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^{1/2}) (Heusel et al. 2017, the FID formula on
another feature extractor). A Fréchet distance exists only per set, so it cannot be a per-image row
of the evaluator protocol: ``score`` returns the per-image ``digit_mahalanobis`` (squared Mahalanobis
distance of the image's features from the held-out mean, divided by the feature dimension; its mean
over a set tracks the same drift) and :meth:`DigitFD.score_set` returns ``{"digit_fd": ...}`` for a
whole set (what a harness calls once per (pair, scale) group).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlg.evaluators.base import Sample
from rlg.metrics import Metric, directions, register_metrics
from rlg.model_ids import resolve_zoo_id

CLASSIFIER_ID = "zoo:digits_classifier"
FEATURE_DIM = 64


class DigitClassifier(nn.Module):
    """A small CNN on 32x32 RGB images in [0, 1] (converted to grey by averaging the channels):
    ``features`` (N, 64) float32 is the penultimate layer (after ReLU), ``forward`` the (N, 10) logits.
    Saved as ``model.safetensors`` + ``config.json``; the held-out reference statistics of the features
    (mean, covariance) go beside them in ``reference_stats.safetensors``."""

    def __init__(self, width: int = 16, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.config = {"width": width, "feature_dim": feature_dim}
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Flatten(), nn.Linear(2 * width * 16, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, 10)

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] -> (N, 1, 32, 32) centred grey."""
        x = images.float().mean(dim=1, keepdim=True)
        if x.shape[-2:] != (32, 32):
            x = nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        return (x - 0.5) / 0.5

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.prepare(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def save(self, out_dir: Path | str, reference: dict[str, torch.Tensor] | None = None) -> None:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps(self.config, indent=1) + "\n")
        if reference is not None:
            save_file({k: v.contiguous() for k, v in reference.items()}, str(out / "reference_stats.safetensors"))

    @classmethod
    def load(cls, path: Path | str) -> "DigitClassifier":
        from safetensors.torch import load_file

        path = Path(path)
        model = cls(**json.loads((path / "config.json").read_text()))
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model.eval()


def load_reference(path: Path | str) -> dict[str, torch.Tensor]:
    """{'mean': (64,), 'cov': (64, 64)} float64 feature statistics of the held-out real digits."""
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "reference_stats.safetensors"))


def digit_of_prompt(prompt: str) -> int:
    """The digit a prompt asks for: the last character 0-9 in it. Raises ValueError if there is none."""
    for ch in reversed(prompt.strip()):
        if ch.isdigit():
            return int(ch)
    raise ValueError(f"the prompt {prompt!r} names no digit 0-9; digit prompts look like 'a handwritten digit 3'")


@lru_cache(maxsize=4)
def _load(weights: str):
    path = resolve_zoo_id(weights)
    return DigitClassifier.load(path), load_reference(path)


def _digest(weights: str) -> str:
    from rlg.files import sha256_file

    return sha256_file(Path(resolve_zoo_id(weights)) / "model.safetensors")[:12]


def images_to_tensor(images) -> torch.Tensor:
    """PIL images or uint8 HxWx3 arrays -> float32 (N, 3, H, W) in [0, 1]."""
    arrays = [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im, dtype=np.float32) / 255.0
              for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def frechet_distance(features: np.ndarray | torch.Tensor, ref_mean, ref_cov) -> float:
    """FD between a (N, D) feature sample (N >= 2) and a Gaussian (ref_mean (D,), ref_cov (D, D))."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"frechet_distance needs a (N >= 2, D) feature array, got shape {f.shape}")
    mu_r, cov_r = np.asarray(ref_mean, dtype=np.float64), np.asarray(ref_cov, dtype=np.float64)
    mu_g, cov_g = f.mean(0), np.cov(f, rowvar=False)
    # Tr (S_g S_r)^{1/2} = sum sqrt(eig(S_r^{1/2} S_g S_r^{1/2})): a symmetric PSD form, stable when the
    # covariances are singular (dead ReLU features), unlike scipy.linalg.sqrtm of the product
    lam, vec = np.linalg.eigh(cov_r)
    root_r = (vec * np.sqrt(lam.clip(min=0))) @ vec.T
    tr_covmean = np.sqrt(np.linalg.eigvalsh(root_r @ cov_g @ root_r).clip(min=0)).sum()
    return float(((mu_g - mu_r) ** 2).sum() + np.trace(cov_g) + np.trace(cov_r) - 2 * tr_covmean)


def kernel_distance(features: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """KID: the unbiased MMD^2 between a generated feature sample (N, D) and a reference sample (M, D) with the
    cubic polynomial kernel k(x, y) = (x.y / D + 1)^3 (Binkowski et al. 2018, "Demystifying MMD GANs", eq. 4 and
    sec. 4; torchmetrics' KernelInceptionDistance and clean-fid use the same kernel), on all N and M rows at once.

    Both samples are first divided by one number, the reference's root mean square feature (sqrt(mean ||r||^2 / D)),
    so x.y / D is O(1) as for Inception features; the classifier's raw ReLU features (about 12 rms) would make the
    kernel's values ~1e6 and the estimate all noise. Unlike FD the estimate is unbiased: its expectation does not
    depend on N, so sets of different sizes compare, and it can be negative near 0.
    Returns {'kid', 'kid_se', 'n'}: kid_se is the delete-one jackknife SE over the generated rows (the reference
    held fixed), so kid ± 1.96 kid_se is an interval around the estimate for the sampling of the N images.
    Raises ValueError when either sample has fewer than 3 rows or the widths differ."""
    f, r = np.asarray(features, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if f.ndim != 2 or r.ndim != 2 or min(len(f), len(r)) < 3 or f.shape[1] != r.shape[1]:
        raise ValueError(f"kernel_distance needs two (N >= 3, D) feature arrays, got {f.shape} and {r.shape}")
    scale = np.sqrt((r**2).sum(1).mean() / r.shape[1])
    f, r = f / scale, r / scale
    n, m, d = len(f), len(r), f.shape[1]
    kxx, kyy, kxy = (f @ f.T / d + 1) ** 3, (r @ r.T / d + 1) ** 3, (f @ r.T / d + 1) ** 3
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    xx_rows = kxx.sum(1) - np.diag(kxx)  # sum over j != i of k(x_i, x_j)
    xy_rows = kxy.mean(1)
    kid = xx_rows.sum() / (n * (n - 1)) + yy - 2 * xy_rows.mean()
    # without row i: the off-diagonal sum loses 2 * xx_rows[i]; the cross mean loses row i
    loo = (xx_rows.sum() - 2 * xx_rows) / ((n - 1) * (n - 2)) + yy - 2 * (xy_rows.sum() - xy_rows) / (n - 1)
    se = np.sqrt((n - 1) / n * ((loo - loo.mean()) ** 2).sum())
    return {"kid": float(kid), "kid_se": float(se), "n": int(n)}


class _DigitsBase:
    needs = frozenset({"image", "prompt"})
    # accepted for a uniform evaluator config but without effect: refused at start-up (rlg.harness.build)
    ignored_options = {"dtype": "the digits classifier runs in float32", "device": "the digits classifier runs on the CPU"}

    @staticmethod
    def check_weights(weights: str = CLASSIFIER_ID, **_: object) -> None:
        """Raise ModelNotAvailableError unless the classifier's folder holds its weights (start-up check)."""
        from rlg.evaluators._models import ModelNotAvailableError

        try:
            folder = Path(resolve_zoo_id(weights))
        except FileNotFoundError as exc:
            raise ModelNotAvailableError(str(exc)) from None
        if not (folder / "model.safetensors").is_file():
            raise ModelNotAvailableError(f"the digits classifier {weights!r} has no model.safetensors in {folder}")

    def __init__(self, weights: str = CLASSIFIER_ID, batch_size: int = 256, device: str | None = None,
                 dtype: str | None = None):
        self.weights = weights
        self.batch_size = batch_size  # the classifier is tiny; runs on the CPU
        self.model, self.reference = _load(weights)

    @torch.no_grad()
    def _logits_features(self, batch: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        x = images_to_tensor([s.image for s in batch])
        feats = self.model.features(x)
        return self.model.head(feats), feats


def log_odds(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) log(p / (1 - p)) of the target class under softmax(logits) (N, C): z_t - logsumexp_{j != t} z_j.

    Computed from the logits, so it stays finite and ordered where p rounds to 0 or 1 in float32."""
    rows = torch.arange(len(targets))
    others = logits.double().clone()
    others[rows, targets] = float("-inf")
    return logits.double()[rows, targets] - torch.logsumexp(others, dim=1)


def class_entropy(predicted: np.ndarray | list[int], n_classes: int = 10) -> float:
    """Entropy in bits of the histogram of predicted classes (log2(10) = 3.32 when uniform, 0 when one class)."""
    counts = np.bincount(np.asarray(predicted, dtype=np.int64), minlength=n_classes).astype(np.float64)
    q = counts[counts > 0] / counts.sum()
    return float(-(q * np.log2(q)).sum())


class DigitProb(_DigitsBase):
    """Per image: ``digit_prob`` (softmax probability of the prompted digit, in [0, 1]), ``digit_margin`` (its
    log-odds log(p / (1 - p)), unbounded: it keeps ordering images that are already right, where p saturates)
    and ``digit_correct`` (1.0 when the classifier's top class is the prompted digit)."""

    name = "digit_prob"
    declares = register_metrics(
        Metric("digit_prob", "digit probability", "probability", True, ("reward", "alignment"),
               "digit probability: the zoo classifier's probability of the digit the prompt names (alignment); "
               "higher is better.", reward_rank=7),
        Metric("digit_margin", "digit log-odds", "log-odds", True, ("reward", "alignment"),
               "digit log-odds: log(p / (1 - p)) of the digit the prompt names under the zoo classifier "
               "(alignment, unbounded where the probability saturates); higher is better."),
        Metric("digit_correct", "digit accuracy", "fraction", True, ("alignment",),
               "digit accuracy: share of images whose top class under the zoo classifier is the digit the "
               "prompt names (alignment); higher is better."))
    metrics = directions(declares)
    option_effects = {"weights": "score", "batch_size": "placement"}

    def __init__(self, **kw):
        super().__init__(**kw)
        self.version = f"digit_prob/cnn-{_digest(self.weights)}/32px-grey/margin"

    def score(self, batch: list[Sample]) -> list[dict[str, float]]:
        targets = torch.tensor([digit_of_prompt(s.prompt) for s in batch])
        logits, _ = self._logits_features(batch)
        p = logits.softmax(1)[torch.arange(len(batch)), targets]
        margin = log_odds(logits, targets)
        right = logits.argmax(1) == targets
        return [{"digit_prob": float(v), "digit_margin": float(m), "digit_correct": float(c)}
                for v, m, c in zip(p, margin, right)]

    def predict(self, images) -> np.ndarray:
        """(N,) the classifier's top class of PIL images / uint8 arrays."""
        with torch.no_grad():
            return self.model(images_to_tensor(images)).argmax(1).numpy()


class DigitFD(_DigitsBase):
    name = "digit_fd"
    declares = register_metrics(Metric(
        "digit_mahalanobis", "digit feature distance", "", False, ("quality",),
        "digit feature distance: per-image squared Mahalanobis distance of the zoo classifier's features from 500 "
        "real digits, per feature dimension (quality; evaluator digit_fd, whose set-level Fréchet distance is the "
        "zoo table's digit_fd); lower is better."))
    metrics = directions(declares)
    option_effects = {"ridge": "score", "weights": "score", "batch_size": "placement"}
    # the set metric score_set writes; registered apart from ``declares`` (what score writes per image), so an image
    # run's metrics and default reward are unchanged, and its readers (the KL-claim report) find its direction
    set_declares = register_metrics(Metric(
        "digit_fd", "digit FD", "", False, ("quality",),
        "digit FD: Fréchet distance between the zoo classifier's 64-d features of a set of images and of 500 real "
        "digits (a set metric, biased upward for small sets; quality); lower is better."))
    set_metrics = directions(set_declares)
    needs = frozenset({"image"})

    def __init__(self, ridge: float = 1e-3, **kw):
        super().__init__(**kw)
        cov = self.reference["cov"].double()
        self._prec = torch.linalg.inv(cov + ridge * torch.eye(cov.shape[0], dtype=cov.dtype) * cov.diagonal().mean())
        # the ridge changes every distance: a non-default one is part of the version (the default's string is kept)
        ridge_tag = "" if ridge == 1e-3 else f"/ridge{ridge:g}"
        self.version = f"digit_fd/cnn-{_digest(self.weights)}/heldout500/penultimate64{ridge_tag}"

    def score(self, batch: list[Sample]) -> list[dict[str, float]]:
        _, feats = self._logits_features(batch)
        d = feats.double() - self.reference["mean"].double()
        m = ((d @ self._prec) * d).sum(1) / d.shape[1]
        return [{"digit_mahalanobis": float(v)} for v in m]

    def features(self, images) -> np.ndarray:
        """(N, 64) penultimate features of PIL images / uint8 arrays."""
        with torch.no_grad():
            return self.model.features(images_to_tensor(images)).double().numpy()

    def score_set(self, batch: list[Sample]) -> dict[str, float]:
        """{'digit_fd': FD of the set's features against the held-out real digits}; needs >= 2 images."""
        return {"digit_fd": frechet_distance(self.features([s.image for s in batch]), self.reference["mean"],
                                             self.reference["cov"])}
