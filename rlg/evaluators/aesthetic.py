"""LAION aesthetic predictor v2 ("improved aesthetic predictor"), scores on a 1-10 scale.

Definition (christophschuhmann/improved-aesthetic-predictor @ 6934dd8 : simple_inference.py):
OpenAI CLIP ViT-L/14 image embedding (``clip.load("ViT-L/14")`` preprocessing: resize shorter side
to 224 bicubic, centre crop, OpenAI mean/std), L2-normalised, into the linear MLP
768-1024-128-64-16-1 (dropouts between, no activations) with the weights
sac+logos+ava1-l14-linearMSE.pth.

The backbone comes through open_clip: ``ViT-L-14`` with pretrained tag ``openai`` (the same weights;
open_clip marks that tag ``quick_gelu``, which we honour: building the plain ``ViT-L-14`` config
with those weights would silently use the wrong activation). ``clip_pretrained`` may also be a
local checkpoint file, together with ``clip_quick_gelu`` (true for OpenAI's weights: a file does not say
which activation it was trained with, so the load is refused without it), and ``clip_model`` a
``local-dir:/path`` holding open_clip_config.json and weights (the hub layout of
timm/vit_large_patch14_clip_224.openai).

Upstream runs the backbone in fp16 on CUDA (``clip.load`` converts it); we default to fp32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlg.evaluators._models import ModelNotAvailableError, cached_url_file, dtype_tag, load_open_clip
from rlg.files import sha256_file
from rlg.runtime import default_device, hub_offline, torch_dtype
from rlg.evaluators.base import TORCH_PLACES, Sample
from rlg.metrics import Metric, directions, register_metrics

HEAD_FILENAME = "sac+logos+ava1-l14-linearMSE.pth"
HEAD_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/"
            "6934dd81792f086e613a121dbce43082cb8be85e/sac%2Blogos%2Bava1-l14-linearMSE.pth")
HEAD_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"


def aesthetic_head(input_size: int = 768):
    """The upstream ``MLP.layers`` (Sequential indices 0..7) so the released state dict loads strictly."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(input_size, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


def load_aesthetic_head(path: str | Path):
    """The head with the weights at ``path`` (upstream ships only this pickle: loaded with weights_only)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    # Upstream saved MLP.state_dict(), whose keys are "layers.<i>.*".
    state = {k.removeprefix("layers."): v for k, v in state.items()}
    head = aesthetic_head(state["0.weight"].shape[1])
    head.load_state_dict(state, strict=True)
    return head.eval()


class Aesthetic:
    name = "aesthetic"
    declares = register_metrics(Metric(
        "aesthetic", "LAION aesthetic score", "1-10", True, ("reward", "quality"),
        "LAION aesthetic predictor v2 on CLIP ViT-L/14, 1-10; higher is better.", reward_rank=8))
    metrics = directions(declares)
    option_effects = {**dict.fromkeys(("clip_model", "clip_pretrained", "clip_quick_gelu", "head_path", "dtype"),
                                      "score"), **TORCH_PLACES}
    needs = frozenset({"image"})
    requires = ("open_clip", "torchvision")

    def __init__(
        self,
        clip_model: str = "ViT-L-14",
        clip_pretrained: str | None = "openai",
        clip_quick_gelu: bool | None = None,  # follows the tag; required with a weights file
        head_path: str | None = None,
        cache_dir: str | None = None,
        device: str | None = None,
        dtype: Any = "float32",
        offline: bool | None = None,
    ):
        import torch

        offline = hub_offline(offline)
        self.device = default_device(device)
        self.dtype = torch_dtype(dtype)

        if head_path is None:
            head_file = cached_url_file(HEAD_URL, HEAD_SHA256, HEAD_FILENAME, cache_dir=cache_dir, offline=offline,
                                        option="head_path", what="LAION aesthetic head")
        else:
            head_file = Path(head_path).expanduser()
            if not head_file.is_file():
                raise ModelNotAvailableError(
                    f"LAION aesthetic head not found at {str(head_file)!r} (option head_path=); download "
                    f"{HEAD_URL} (sha256 {HEAD_SHA256}) and point head_path= at it"
                )
        self.head = load_aesthetic_head(head_file).to(self.device)

        model, preprocess, backbone = load_open_clip(
            clip_model, clip_pretrained, offline=offline, option="clip_model", what="Aesthetic backbone",
            cache_dir=cache_dir, quick_gelu=clip_quick_gelu, quick_gelu_option="clip_quick_gelu",
        )
        embed_dim = model.visual.output_dim
        if embed_dim != self.head[0].in_features:
            raise ValueError(f"backbone {clip_model!r} gives {embed_dim}-d embeddings; the aesthetic head expects "
                             f"{self.head[0].in_features} (CLIP ViT-L/14)")
        self.model = model.eval().to(self.device, self.dtype)
        self.preprocess = preprocess
        self._torch = torch
        self.version = (
            f"aesthetic/laion-v2-linearMSE/head-sha256:{sha256_file(head_file)[:12]}/{backbone}/{dtype_tag(self.dtype)}"
        )

    def score(self, batch: list[Sample]) -> list[dict[str, float]]:
        torch = self._torch
        images = torch.stack([self.preprocess(s.image) for s in batch]).to(self.device, self.dtype)
        with torch.no_grad():
            emb = self.model.encode_image(images).float()
            # Upstream's normalized(): L2 norm, with a zero norm left as 1.
            norm = emb.norm(dim=-1, keepdim=True)
            emb = emb / torch.where(norm == 0, torch.ones_like(norm), norm)
            scores = self.head(emb.to(self.device)).squeeze(-1)
        return [{"aesthetic": float(v)} for v in scores.cpu()]
