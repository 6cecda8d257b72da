"""Evaluators of the digits zoo: the prompted digit's probability and a Fréchet distance to real digits.

Both use the zoo's digit classifier (``rlg.zoo.digits_classifier``; trained on the train split of
scikit-learn's bundled UCI digits, shipped at ``rlg/zoo/weights/digits_classifier``).

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

from functools import lru_cache

import numpy as np
import torch

from rlg.evaluators.base import Sample

CLASSIFIER_ID = "zoo:digits_classifier"


@lru_cache(maxsize=4)
def _load(weights: str):
    from rlg.zoo import resolve_zoo_id
    from rlg.zoo.digits_classifier import DigitClassifier, load_reference

    path = resolve_zoo_id(weights)
    return DigitClassifier.load(path), load_reference(path)


def _digest(weights: str) -> str:
    from pathlib import Path

    from rlg.files import sha256_file
    from rlg.zoo import resolve_zoo_id

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


class _DigitsBase:
    needs = frozenset({"image", "prompt"})

    @staticmethod
    def check_weights(weights: str = CLASSIFIER_ID, **_: object) -> None:
        """Raise ModelNotAvailableError unless the classifier's folder holds its weights (start-up check)."""
        from pathlib import Path

        from rlg.evaluators._models import ModelNotAvailableError
        from rlg.zoo import resolve_zoo_id

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


class DigitProb(_DigitsBase):
    name = "digit_prob"
    metrics = {"digit_prob": True}

    def __init__(self, **kw):
        super().__init__(**kw)
        self.version = f"digit_prob/cnn-{_digest(self.weights)}/32px-grey"

    def score(self, batch: list[Sample]) -> list[dict[str, float]]:
        from rlg.zoo.digits import digit_of_prompt

        targets = torch.tensor([digit_of_prompt(s.prompt) for s in batch])
        logits, _ = self._logits_features(batch)
        p = logits.softmax(1)[torch.arange(len(batch)), targets]
        return [{"digit_prob": float(v)} for v in p]


class DigitFD(_DigitsBase):
    name = "digit_fd"
    metrics = {"digit_mahalanobis": False}
    set_metrics = {"digit_fd": False}
    needs = frozenset({"image"})

    def __init__(self, ridge: float = 1e-3, **kw):
        super().__init__(**kw)
        cov = self.reference["cov"].double()
        self._prec = torch.linalg.inv(cov + ridge * torch.eye(cov.shape[0], dtype=cov.dtype) * cov.diagonal().mean())
        self.version = f"digit_fd/cnn-{_digest(self.weights)}/heldout500/penultimate64"

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
