"""HPSv2 / HPSv2.1: an open_clip ViT-H-14 fine-tuned on human preference pairs (HPD v2).

Definition (tgxs002/HPSv2 @ 866735e : hpsv2/img_score.py ``score`` and hpsv2/evaluation.py
``evaluate_benchmark``):

- architecture open_clip ViT-H-14; the whole state dict is replaced by ``torch.load(ckpt)['state_dict']``
  from the hub repo xswu/HPSv2 (HPS_v2_compressed.pt for v2.0, HPS_v2.1_compressed.pt for v2.1).
  Upstream first loads the laion2B backbone and then overwrites every tensor, so we build the
  architecture without those weights.
- preprocessing (the vendored open_clip's ``image_transform(..., is_train=False, resize_longest_max=True)``,
  chosen by ``light_augmentation=True``): RGB -> ToTensor -> if the longer side is not 224, resize the
  tensor (bicubic) so the longer side is 224 and zero-pad the shorter side centred -> Normalize with
  the OpenAI CLIP mean/std. No centre crop. The resize runs on a float tensor, so torchvision's
  ``antialias`` default applies: True since torchvision 0.17 (January 2024), False (with a warning)
  before; upstream does not pin torchvision, so the mid-2023 v2.0 tables most likely used False.
  Option ``antialias`` (default True, what upstream computes today) picks it and goes into ``version``.
- prompt: open_clip ``get_tokenizer('ViT-H-14')`` (77 tokens).
- score = ``image_features @ text_features.T`` diagonal with both normalised: the plain cosine, *not*
  multiplied by ``logit_scale``. ``img_score.py`` returns that cosine (about 0.2-0.35); the benchmark
  (``evaluation.py``) reports ``x 100``, the number papers quote. We report x100 (``scale=100``).

v2.0 and v2.1 are different models whose scores are not comparable, so each has its own metric
name (``hps_v2.0`` / ``hps_v2.1``): a table can never average one with the other.

Upstream reloads the checkpoint on every ``score`` call and scores one image at a time under CUDA
fp16 autocast; here the checkpoint is loaded once and images are batched (fp32 unless ``dtype``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlg.evaluators._models import ModelNotAvailableError, dtype_tag, hub_file
from rlg.files import sha256_file
from rlg.runtime import default_device, hub_offline, torch_dtype
from rlg.evaluators.base import TORCH_PLACES, Sample
from rlg.metrics import Metric, directions, register_metrics
from rlg.extras import require

HUB_REPO = "xswu/HPSv2"
CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}  # upstream hps_version_map
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def hps_preprocess(image, size: int, antialias: bool = True):
    """Upstream's val transform: longer side to ``size`` (bicubic, on the tensor), centred zero pad."""
    TF = require("torchvision.transforms.functional", purpose="the hps evaluator")
    from torchvision.transforms import InterpolationMode

    x = TF.to_tensor(image.convert("RGB"))
    h, w = x.shape[1:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        nh, nw = round(h * scale), round(w * scale)
        x = TF.resize(x, [nh, nw], InterpolationMode.BICUBIC, antialias=antialias)
        pad_h, pad_w = size - nh, size - nw
        x = TF.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return TF.normalize(x, OPENAI_MEAN, OPENAI_STD)


def load_hps_state_dict(path: str | Path) -> dict:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # e.g. a pickle that needs arbitrary classes: refuse rather than execute it
        raise RuntimeError(f"could not load HPS checkpoint {path} with torch.load(weights_only=True): {exc}") from exc
    state = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
    # Checkpoints saved from DistributedDataParallel prefix every key with "module.".
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


class HPSv2:
    name = "hps"
    needs = frozenset({"image", "prompt"})
    requires = ("open_clip", "torchvision")
    declares = register_metrics(
        Metric("hps_v2.0", "HPSv2.0", "", True, ("reward", "quality"),
               "HPSv2.0: 100·cos(text, image) of the HPSv2 model; higher is better (not comparable to v2.1).",
               reward_rank=5),
        Metric("hps_v2.1", "HPSv2.1", "", True, ("reward", "quality"),
               "HPSv2.1: 100·cos(text, image) of the HPSv2.1 model; higher is better (not comparable to v2.0).",
               reward_rank=4))
    metrics = directions(declares)  # an instance writes the one of its hps_version (metrics_for)
    option_effects = {**dict.fromkeys(("hps_version", "checkpoint", "repo", "revision", "model_name", "antialias",
                                       "scale", "dtype"), "score"), **TORCH_PLACES}

    @classmethod
    def metrics_for(cls, hps_version: str = "v2.1", **_) -> dict[str, bool]:
        """The metric an instance with this ``hps_version`` writes."""
        return {f"hps_{hps_version}": True}

    def __init__(self, hps_version: str = "v2.1", checkpoint: str | None = None, repo: str = HUB_REPO,
                 revision: str | None = None, model_name: str = "ViT-H-14", antialias: bool = True,
                 scale: float = 100.0, device: str | None = None, dtype: Any = "float32", offline: bool | None = None,
                 cache_dir: str | None = None):
        open_clip = require("open_clip", purpose="the hps evaluator")
        import torch

        if hps_version not in CHECKPOINTS:
            raise ValueError(f"unknown hps_version {hps_version!r}; use one of {', '.join(CHECKPOINTS)}")
        self.hps_version = hps_version
        self.metric = f"hps_{hps_version}"
        self.metrics = self.metrics_for(hps_version)
        self.antialias = bool(antialias)
        self.scale = float(scale)
        self.device = default_device(device)
        self.dtype = torch_dtype(dtype)
        filename = CHECKPOINTS[hps_version]

        if checkpoint is None:
            path = hub_file(repo, filename, revision=revision, offline=hub_offline(offline), option="checkpoint",
                            what=f"HPS {hps_version} checkpoint", cache_dir=cache_dir)
        else:
            path = Path(checkpoint).expanduser()
            if path.is_dir():  # a `huggingface-cli download xswu/HPSv2 --local-dir DIR` folder
                path = path / filename
            if not path.is_file():
                raise ModelNotAvailableError(
                    f"HPS {hps_version} checkpoint not found at {str(path)!r} (option checkpoint=). Get it with "
                    f"`huggingface-cli download {repo} {filename} --local-dir DIR` and pass checkpoint=DIR"
                )

        model = open_clip.create_model(model_name, pretrained=None, device="cpu")
        model.load_state_dict(load_hps_state_dict(path), strict=True)
        self.model = model.eval().to(self.device, self.dtype)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        size = self.model.visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self._torch = torch
        # The checkpoint's hash identifies the weights whatever path or revision they came from.
        self.version = (f"hps/{hps_version}/{self.scale:g}*cos/{model_name}/ckpt-sha256:{sha256_file(path)[:12]}"
                        f"/longest-resize-pad{'-aa' if self.antialias else '-noaa'}/{dtype_tag(self.dtype)}")

    def score(self, batch: list[Sample]) -> list[dict[str, float]]:
        torch = self._torch
        images = torch.stack([hps_preprocess(s.image, self.image_size, self.antialias) for s in batch])
        text = self.tokenizer([s.prompt for s in batch])
        with torch.no_grad():
            img = self.model.encode_image(images.to(self.device, self.dtype), normalize=True)
            txt = self.model.encode_text(text.to(self.device), normalize=True)
            scores = self.scale * (img.float() * txt.float()).sum(-1)
        return [{self.metric: float(v)} for v in scores.cpu()]
