"""HPSv2 on a tiny random open_clip model saved as an upstream-style checkpoint ({'state_dict': ...}).

The architecture is registered under a test name with ``open_clip.add_model_config`` (the real one is
ViT-H-14); the checkpoint goes through the same loading code as HPS_v2.1_compressed.pt. The expected
scores re-implement upstream's preprocessing with plain torch ops and use CLIP.forward.
"""

import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data

from rlg.evaluators._models import ModelNotAvailableError
from rlg.evaluators.base import Evaluator, Sample, get_evaluator, run_evaluator
from tests.helpers.scorers import tiny_open_clip_config
from rlg.evaluators.hps import HPSv2

ARCH = "rlgtest-hps-tiny"
SIZE = 56
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hps")
    (root / f"{ARCH}.json").write_text(json.dumps(tiny_open_clip_config(embed_dim=16, image_size=SIZE, patch_size=14)))
    open_clip.add_model_config(root / f"{ARCH}.json")
    out = root / "xswu-HPSv2"
    out.mkdir()
    for seed, name in [(1, "HPS_v2_compressed.pt"), (2, "HPS_v2.1_compressed.pt")]:
        torch.manual_seed(seed)
        model = open_clip.create_model(ARCH)
        torch.save({"state_dict": model.state_dict()}, out / name)
    return out


@pytest.fixture(scope="module")
def samples():
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    # Square, landscape, portrait (padding on each axis) and an image already at the model size.
    sizes = [(128, 128), (150, 100), (60, 90), (SIZE, SIZE)]
    prompts = ["an astronaut", "a cup of coffee, latte art", "a cat looking at the camera", "a rocket launch"]
    return [Sample(f"img{i}", Image.fromarray(p).resize(s, Image.Resampling.BICUBIC), t)
            for i, (p, s, t) in enumerate(zip(photos, sizes, prompts))]


@pytest.fixture(scope="module")
def ev21(ckpt_dir):
    return HPSv2(checkpoint=str(ckpt_dir), model_name=ARCH, offline=True)


def _reference_pixels(image: Image.Image) -> torch.Tensor:
    """Upstream ResizeMaxSize on the float tensor: longer side to SIZE, bicubic + antialias, centred zero pad."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    h, w = x.shape[1:]
    if max(h, w) != SIZE:
        nh, nw = round(h * SIZE / max(h, w)), round(w * SIZE / max(h, w))
        x = F.interpolate(x[None], size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)[0]
        top, left = (SIZE - nh) // 2, (SIZE - nw) // 2
        canvas = torch.zeros(3, SIZE, SIZE)
        canvas[:, top:top + nh, left:left + nw] = x
        x = canvas
    return (x - MEAN) / STD


def _reference_scores(ckpt, samples):
    model = open_clip.create_model(ARCH)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    model.eval()
    tokenizer = open_clip.get_tokenizer(ARCH)
    out = []
    with torch.no_grad():
        for s in samples:
            image_features, text_features, _ = model(_reference_pixels(s.image)[None], tokenizer([s.prompt]))
            out.append(100 * float(image_features[0] @ text_features[0]))  # not logit-scaled; x100 as the benchmark
    return out


@pytest.mark.parametrize("hps_version,filename", [("v2.0", "HPS_v2_compressed.pt"), ("v2.1", "HPS_v2.1_compressed.pt")])
def test_hps_matches_independent_computation(ckpt_dir, samples, hps_version, filename):
    ev = HPSv2(hps_version=hps_version, checkpoint=str(ckpt_dir), model_name=ARCH, offline=True)
    metric = f"hps_{hps_version}"
    assert isinstance(ev, Evaluator) and ev.metrics == {metric: True}
    got = [r[metric] for r in ev.score(samples)]
    assert got == pytest.approx(_reference_scores(ckpt_dir / filename, samples), rel=1e-4, abs=1e-4)


def test_versions_are_separate_metrics_and_conventions(ckpt_dir, samples):
    v20 = get_evaluator("hps", hps_version="v2.0", checkpoint=str(ckpt_dir), model_name=ARCH, offline=True)
    v21 = get_evaluator("hps", hps_version="v2.1", checkpoint=str(ckpt_dir / "HPS_v2.1_compressed.pt"),
                        model_name=ARCH, offline=True)
    assert set(v20.metrics).isdisjoint(v21.metrics)
    assert v20.version != v21.version
    assert v21.version.startswith(f"hps/v2.1/100*cos/{ARCH}/ckpt-sha256:") and "-aa/fp32" in v21.version
    a, b = v20.score(samples[:1])[0]["hps_v2.0"], v21.score(samples[:1])[0]["hps_v2.1"]
    assert a != pytest.approx(b)  # different weights really loaded


def test_batch_equals_one_by_one(ev21, samples):
    ev = ev21
    single = [ev.score([s])[0]["hps_v2.1"] for s in samples]
    rows = [r for batch in run_evaluator(ev, samples, batch_size=3) for r in batch]
    assert [r.value for r in rows] == pytest.approx(single, rel=1e-5, abs=1e-5)


def test_antialias_option_changes_pixels_and_version(ckpt_dir, ev21, samples):
    aa = ev21
    no_aa = HPSv2(checkpoint=str(ckpt_dir), model_name=ARCH, offline=True, antialias=False)
    assert "-noaa/" in no_aa.version
    assert aa.score(samples[:1])[0]["hps_v2.1"] != pytest.approx(no_aa.score(samples[:1])[0]["hps_v2.1"], abs=1e-6)


def test_ddp_prefixed_checkpoint_loads(ckpt_dir, ev21, samples, tmp_path):
    state = torch.load(ckpt_dir / "HPS_v2.1_compressed.pt", weights_only=True)["state_dict"]
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "HPS_v2.1_compressed.pt")
    plain = ev21.score(samples[:2])
    prefixed = HPSv2(checkpoint=str(tmp_path), model_name=ARCH, offline=True).score(samples[:2])
    assert [r["hps_v2.1"] for r in prefixed] == pytest.approx([r["hps_v2.1"] for r in plain], abs=1e-6)


def test_missing_checkpoint_errors(tmp_path):
    with pytest.raises(ModelNotAvailableError) as err:
        HPSv2(hps_version="v2.0", checkpoint=str(tmp_path), model_name=ARCH)
    assert "HPS_v2_compressed.pt" in str(err.value) and "huggingface-cli download xswu/HPSv2" in str(err.value)
    with pytest.raises(ModelNotAvailableError) as err:
        HPSv2(repo="rlg-bench-test/no-such-hps", model_name=ARCH, offline=True, cache_dir=str(tmp_path))
    assert "rlg-bench-test/no-such-hps/HPS_v2.1_compressed.pt" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)
    with pytest.raises(ValueError, match="v2.0, v2.1"):
        HPSv2(hps_version="v3", checkpoint=str(tmp_path))
