"""Benchmark `evaluators`: images per second of each evaluator that runs here, batched vs one image
at a time (what upstream scoring scripts do: hpsv2.score and ImageReward score one image per call).

Models are the tiny random ones of tests/helpers/scorers.py (real code paths, meaningless scores); JPEG
and OCR are the real thing. Run by hand:  python benchmarks/evaluators.py [--images 32] [--size 256]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def samples(n: int, size: int):
    import numpy as np
    from PIL import Image, ImageDraw

    from rlg.evaluators.base import Sample

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        ImageDraw.Draw(img).text((size // 8, size // 3), f"WORD{i}", fill=(0, 0, 0))
        out.append(Sample(key=str(i), image=img, prompt=f'a sign that says "WORD{i}"'))
    return out


def build(tmp: Path) -> dict:
    """name -> (evaluator, batch size) built on tiny local models."""
    from tests.helpers import scorers as fixtures  # the test suite's tiny scorer builders
    from rlg.evaluators.base import get_evaluator

    clip = fixtures.save_tiny_hf_clip(tmp / "clip")
    oc = fixtures.save_tiny_open_clip(tmp / "openclip768", embed_dim=768)
    head = (Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "aesthetic"
            / "sac+logos+ava1-l14-linearMSE.pth")
    evs = {
        "jpeg": get_evaluator("jpeg"),
        "ocr": get_evaluator("ocr"),
        "clip_score": get_evaluator("clip_score", model=str(clip), offline=True),
        "pickscore": get_evaluator("pickscore", model=str(clip), processor=str(clip), offline=True),
    }
    # HPS: a tiny open_clip architecture with a checkpoint in the xswu/HPSv2 layout (['state_dict'])
    import json

    import open_clip
    import torch

    (tmp / "hps-tiny.json").write_text(json.dumps(fixtures.tiny_open_clip_config(embed_dim=16, image_size=56,
                                                                                   patch_size=14)))
    open_clip.add_model_config(tmp / "hps-tiny.json")
    torch.save({"state_dict": open_clip.create_model("hps-tiny").state_dict()}, tmp / "HPS_v2.1_compressed.pt")
    evs["hps"] = get_evaluator("hps", checkpoint=str(tmp / "HPS_v2.1_compressed.pt"), model_name="hps-tiny",
                               offline=True)
    if head.exists():
        evs["aesthetic"] = get_evaluator("aesthetic", clip_model=f"local-dir:{oc}", clip_pretrained=None,
                                         head_path=str(head), offline=True)
    return evs


def rate(ev, items, batch: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(items), batch):
            ev.score(items[i:i + batch])
        times.append(time.perf_counter() - t0)
    return len(items) / statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch

    print(f"# evaluators benchmark  {time.strftime('%Y-%m-%d %H:%M')}  python {platform.python_version()}  "
          f"torch {torch.__version__}  threads {torch.get_num_threads()}  {os.cpu_count()} cpus")
    print(f"# {args.images} images of {args.size}px, batch {args.batch}, medians of {args.repeats}; "
          "tiny models except jpeg/ocr")
    print("| evaluator | batched img/s | one-at-a-time img/s | speed-up |")
    print("|---|--:|--:|--:|")
    items = samples(args.images, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        for name, ev in build(Path(tmp)).items():
            ev.score(items[:2])  # load and warm up once
            b = rate(ev, items, args.batch, args.repeats)
            one = rate(ev, items, 1, args.repeats)
            print(f"| {name} | {b:.1f} | {one:.1f} | {b / one:.2f} |", flush=True)


if __name__ == "__main__":
    main()
