"""The digit classifier: the alignment reward and the feature extractor of the Fréchet distance.

A small CNN on 32x32 RGB images in [0, 1] (the zoo's image format; images are converted to grey by
averaging the channels). ``features`` is the 64-d penultimate layer (after ReLU), ``forward`` the
10 logits. Weights ship as ``rlg/zoo/weights/digits_classifier/model.safetensors`` with a
``config.json``; the held-out reference statistics of the features (mean, covariance) ship beside
them in ``reference_stats.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

FEATURE_DIM = 64


class DigitClassifier(nn.Module):
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
