"""The compositional (GenEval-style) zoo task: digit scenes, their prompts and metadata rows, model builders.

Data: scikit-learn's bundled handwritten digits (``rlg.zoo.digits.load_split``: the train part for the generator,
the held-out part for measuring the detector), each 8x8 scan bilinearly upsampled to a ``TILE`` x ``TILE`` tile of
dark ink on white paper and composed onto a ``HEIGHT`` x ``WIDTH`` = 32 x 64 canvas (ink combined by maximum).

Prompts follow GenEval's tags (djghosh13/geneval @ af4902f : prompts/evaluation_metadata.jsonl) on the digits
``DIGITS`` (a 5-digit vocabulary keeps every prompt seen often on a CPU budget), each with a GenEval metadata row
whose classes are the digit names "0".."9" (the ``zoo_digits`` detector's classes):
  single_object  "a 3"                  include [{3, count 1}]                           digit at the centre
  counting       "two 3s"               include [{3, count 2}]                           3 in both slots
  two_object     "a 3 and a 7"          include [{3, 1}, {7, 1}]                         slots in random order
  position       "a 3 left of a 7"      include [{7, 1}, {3, 1, position [left of, 0]}]  3 in the left slot
Two slots: tile centres at x = 16 and 48 (y = 16), jittered by up to ``JITTER`` px. Scenes are made FROM the metadata
row (``layout``), so the data and the evaluator's rules agree by construction. Colour ("a red 4") and above/below are
not included: colour needs a colour classifier on ink (GenEval's is CLIP ViT-L-14) and a 32 px high canvas has no
room for two stacked tiles.

Model: the text task's stock ``StableDiffusion3Pipeline`` architecture at the same size (``rlg.zoo.text``: trained
AutoencoderKL 32x64x3 <-> 16x32x4, SD3Transformer2DModel 4 joint blocks, tiny CLIP x2 + T5 encoders), built by its
builders, with two options of this task for the base trainer: ``MAX_SEQUENCE_LENGTH`` = 16 T5 tokens (the text task's
8 cut position prompts before their second digit) and ``TRAIN_TEXT_ENCODERS`` (the encoders trained with the
transformer, not frozen random). Sampler preset zoo_geneval_ode (the text pair's protocol with 16 T5 tokens).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlg.zoo import text as T

DIGITS = (0, 1, 3, 4, 7)
TAGS = ("single_object", "two_object", "counting", "position")
HEIGHT, WIDTH = T.HEIGHT, T.WIDTH
TILE = 24  # px: the side of one digit tile (8x8 scan x 3)
SLOTS = (16, 48)  # x centres of the left and right slot; the single-object slot is the canvas centre
JITTER = 2  # px, uniform integer offset of each tile in x and y
INK_LEVEL = 0.3  # a pixel whose ink (1 - grey) exceeds this belongs to a digit (ground-truth boxes, detector)
# The base trainer's text options (rlg.zoo.train_text_base): the longest prompt is 12 T5 tokens ("a 3 right of a 7");
# the text task's 8 cut position prompts before their second digit. The encoders are trained with the transformer:
# frozen random ones left the base at two_object 0.18 / position 0.13 (README_geneval.md).
MAX_SEQUENCE_LENGTH = 16
TRAIN_TEXT_ENCODERS = True

WEIGHTS = T.WEIGHTS
BASE_DIR = WEIGHTS / "geneval_sd3_base"
RL_DIR = WEIGHTS / "geneval_sd3_flowgrpo"
METADATA = Path(__file__).parent / "geneval_digits_metadata.jsonl"
DATA_SOURCE = ("scenes composed from scikit-learn sklearn.datasets.load_digits (UCI Optical Recognition of "
               "Handwritten Digits, Alpaydin & Kaynak 1998, doi:10.24432/C50P49), train split only")
DATA_LICENCE = "CC BY 4.0 (UCI Machine Learning Repository)"


def rows() -> list[dict[str, Any]]:
    """The GenEval metadata rows of every prompt (40 with 5 digits), in a fixed order: tag by tag."""
    out: list[dict[str, Any]] = []
    for d in DIGITS:
        out.append({"tag": "single_object", "prompt": f"a {d}", "include": [{"class": str(d), "count": 1}]})
    for i, a in enumerate(DIGITS):
        for b in DIGITS[i + 1:]:
            out.append({"tag": "two_object", "prompt": f"a {a} and a {b}",
                        "include": [{"class": str(a), "count": 1}, {"class": str(b), "count": 1}]})
    for d in DIGITS:
        out.append({"tag": "counting", "prompt": f"two {d}s", "include": [{"class": str(d), "count": 2}]})
    for i, a in enumerate(DIGITS):
        for b in DIGITS[i + 1:]:
            for rel in ("left of", "right of"):  # GenEval's form: the target first, the placed object second
                out.append({"tag": "position", "prompt": f"a {a} {rel} a {b}",
                            "include": [{"class": str(b), "count": 1},
                                        {"class": str(a), "count": 1, "position": [rel, 0]}]})
    return out


PROMPTS = tuple(r["prompt"] for r in rows())


def layout(row: dict[str, Any], rng: np.random.Generator) -> list[tuple[int, int]]:
    """(digit, x centre) of each tile the row asks for; raises ValueError for a row outside this task's forms."""
    inc = row["include"]
    if row["tag"] == "single_object":
        return [(int(inc[0]["class"]), WIDTH // 2)]
    if row["tag"] == "counting":
        if inc[0]["count"] != 2:
            raise ValueError(f"counting rows of this task ask for 2 digits, got {inc[0]['count']}")
        return [(int(inc[0]["class"]), x) for x in SLOTS]
    if row["tag"] == "two_object":
        order = rng.permutation(2)
        return [(int(inc[k]["class"]), SLOTS[s]) for k, s in zip(range(2), order)]
    if row["tag"] == "position":
        rel = inc[1]["position"][0]
        obj, target = int(inc[1]["class"]), int(inc[0]["class"])
        left, right = (obj, target) if rel == "left of" else (target, obj)
        if rel not in ("left of", "right of"):
            raise ValueError(f"position rows of this task are left of / right of, got {rel!r}")
        return [(left, SLOTS[0]), (right, SLOTS[1])]
    raise ValueError(f"tag {row['tag']!r} is not one of this task's {TAGS}")


def tiles(scans: np.ndarray) -> np.ndarray:
    """8x8 scans (N, 8, 8), values 0..16 -> ink float32 (N, TILE, TILE) in [0, 1] (bilinear, as rlg.zoo.digits)."""
    x = torch.as_tensor(np.asarray(scans, dtype=np.float32) / 16.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(TILE, TILE), mode="bilinear", align_corners=False)
    return x[:, 0].clamp(0, 1).numpy()


@lru_cache(maxsize=2)
def digit_tiles(split: str = "train") -> dict[int, np.ndarray]:
    """{digit: ink tiles (n, TILE, TILE)} of one part ("train" or "test") of rlg.zoo.digits' fixed split."""
    from rlg.zoo.digits import load_split

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    s = load_split()
    ink, y = tiles(s[f"{split}_x"]), s[f"{split}_y"]
    return {d: ink[y == d] for d in range(10)}


def ink_box(ink: np.ndarray) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) (x1, y1 exclusive) of the pixels of an ink map (H, W) above INK_LEVEL; None if none."""
    ys, xs = np.nonzero(ink > INK_LEVEL)
    if not len(xs):
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def scene(row: dict[str, Any], rng: np.random.Generator, split: str = "train"
          ) -> tuple[np.ndarray, list[tuple[str, tuple[float, float, float, float]]]]:
    """One scene of ``row``: uint8 RGB (HEIGHT, WIDTH, 3) and its ground truth [(class name, ink box), ...]."""
    pool = digit_tiles(split)
    canvas = np.zeros((HEIGHT, WIDTH), np.float32)
    truth = []
    for digit, cx in layout(row, rng):
        tile = pool[digit][int(rng.integers(len(pool[digit])))]
        x0 = cx - TILE // 2 + int(rng.integers(-JITTER, JITTER + 1))
        y0 = HEIGHT // 2 - TILE // 2 + int(rng.integers(-JITTER, JITTER + 1))
        one = np.zeros_like(canvas)
        one[y0:y0 + TILE, x0:x0 + TILE] = tile
        canvas = np.maximum(canvas, one)
        truth.append((str(digit), ink_box(one)))
    grey = np.round((1 - canvas) * 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2), truth


def dataset(n: int, seed: int, split: str = "train") -> tuple[np.ndarray, np.ndarray, list]:
    """``n`` scenes: uint8 (n, H, W, 3), their row indices into rows() (int64 (n,)), and their ground truths.
    A tag is drawn uniformly, then a row of that tag (so the 5 single-object rows are not drowned by 20 position
    rows); seeded numpy Generator, deterministic."""
    rng = np.random.default_rng(seed)
    all_rows = rows()
    by_tag = {t: [i for i, r in enumerate(all_rows) if r["tag"] == t] for t in TAGS}
    idx = np.array([by_tag[t][int(rng.integers(len(by_tag[t])))] for t in rng.choice(TAGS, size=n)], np.int64)
    made = [scene(all_rows[i], rng, split) for i in idx]
    return np.stack([m[0] for m in made]), idx, [m[1] for m in made]


# ---------------------------------------------------------------------------------------------
# The trainers' task interface (rlg.zoo.train_text_base / train_text_flowgrpo)
# ---------------------------------------------------------------------------------------------
def vae_data(n: int, seed: int) -> np.ndarray:
    return dataset(n, seed)[0]


def flow_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images, idx, _ = dataset(n, seed)
    return images, idx


def reward_fn():
    """(images uint8 (B, H, W, 3), prompt indices (B,)) -> float32 (B,) GenEval correctness (0/1) under the
    zoo_digits detector and GenEval's rules (rlg.evaluators.geneval)."""
    from PIL import Image

    from rlg.evaluators.base import Sample
    from rlg.evaluators.geneval import GenEval

    ev = GenEval(detector="zoo_digits", device="cpu")
    all_rows = rows()

    def reward(images: np.ndarray, idx) -> torch.Tensor:
        batch = [Sample(key=str(k), image=Image.fromarray(im), prompt=all_rows[int(i)]["prompt"],
                        metadata=all_rows[int(i)]) for k, (im, i) in enumerate(zip(images, idx))]
        return torch.tensor([s["geneval_correct"] for s in ev.score(batch)], dtype=torch.float32)

    return reward


def pair_spec(base: Path | str = BASE_DIR, rl: Path | str = RL_DIR):
    """The PairSpec of the shipped (or a retrained) compositional pair."""
    from rlg.pairs import Checkpoint, PairSpec

    return PairSpec(name="zoo_geneval_flowgrpo", base=Checkpoint(str(base)), rl=Checkpoint(str(rl)),
                    rl_kind="peft_lora", offline=True)
