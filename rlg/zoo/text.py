"""The text-rendering zoo task: data, model builders and paths (the SD3.5-M + Flow-GRPO-Text analogue).

Data: words rendered with the DejaVu fonts matplotlib ships (``matplotlib/mpl-data/fonts/ttf``, licence
``LICENSE_DEJAVU`` next to them: Bitstream Vera derived, free to use and redistribute; DejaVu changes in the
public domain). Dark text on a light background, uint8 RGB (H, W, 3) = (32, 64, 3); one of ``VOCAB`` words
per image, font/size/offset/grey levels drawn from a seeded numpy Generator (deterministic).

Narrowing (issue 16: until the base model renders partly readable words on a CPU budget): 4 upper-case
3-letter words, 32x64 images, font size 22-24 (capitals about 17 px high, words 50-60 px wide), offsets within
+-1 px; the VAE sees 4 DejaVu faces, the transformer DejaVu Sans Bold only. (The first attempt, 8 four-letter
words at size 17-22 with +-2 px offsets, left the base unreadable after 1000-2400 CPU steps: OCR 0.03-0.05.)
EasyOCR reads the clean renders and their VAE reconstructions with accuracy 1.0. Prompts follow the Flow-GRPO
OCR convention that ``rlg.evaluators.ocr`` parses: ``a sign that says "SUN"``.

Model (a stock ``StableDiffusion3Pipeline``):
  transformer     SD3Transformer2DModel, 4 joint blocks, 4 heads x 16, patch 2, trained with rectified flow
  vae             AutoencoderKL (2 blocks: 32x64x3 <-> 16x32x4), trained here; scaling/shift factors measured
  text_encoder(_2) tiny CLIPTextModelWithProjection (hidden 32) from ``rlg.tiny_pairs``: frozen, random from a
                  seed (they only need to tell the prompts apart); tokenizers truncated to 16 tokens
  text_encoder_3  tiny T5EncoderModel (d_model 64), frozen, random from a seed. (None is not an option:
                  ``from_pretrained`` of StableDiffusion3Pipeline rejects a saved pipeline whose text_encoder_3 is
                  null, so the pair loader could not load it.) The models are trained and must be sampled with
                  ``max_sequence_length=MAX_SEQUENCE_LENGTH`` (8 T5 tokens; the stock default 256 would make the
                  joint attention 4x slower on CPU and feed a sequence length never seen in training). The zoo
                  sampler presets pass it through ``sampler.extra``.
  scheduler       FlowMatchEulerDiscreteScheduler(shift=3.0), as SD3.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

VOCAB = ("SUN", "CAT", "BOX", "RED")
FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf")  # VAE data
FLOW_FONTS = ("DejaVuSans-Bold.ttf",)  # transformer data: one face (4 faces left the base unreadable on budget)
FONT_SIZES = (22, 25)  # [low, high) font size in points
JITTER = 1.0  # px, uniform offset around the centre
HEIGHT, WIDTH = 32, 64
MAX_SEQUENCE_LENGTH = 8  # T5 tokens; see the module docstring
TRAIN_TEXT_ENCODERS = False  # the base trainer keeps this task's random text encoders frozen (rlg.zoo.train_text_base)
CLIP_MAX_LENGTH = 16
SHIFT = 3.0
DATA_SOURCE = ("words rendered with the DejaVu fonts shipped by matplotlib (mpl-data/fonts/ttf/"
               f"{{{','.join(FONTS)}}}); licence: matplotlib's LICENSE_DEJAVU (Bitstream Vera derived, "
               "free licence; DejaVu changes public domain)")

DATA_LICENCE = ("DejaVu fonts: Bitstream Vera Fonts licence (free to use, modify and redistribute, not to sell alone) "
                "with DejaVu changes in the public domain; see matplotlib's mpl-data/fonts/ttf/LICENSE_DEJAVU")

WEIGHTS = Path(__file__).parent / "weights"
BASE_DIR = WEIGHTS / "text_sd3_base"
RL_DIR = WEIGHTS / "text_sd3_flowgrpo_ocr"


def prompt(word: str) -> str:
    return f'a sign that says "{word}"'


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=None)
def _font(name: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(font_dir() / name), size)


def render(word: str, rng: np.random.Generator, fonts: tuple[str, ...] = FONTS) -> np.ndarray:
    """One training image of ``word``: uint8 (HEIGHT, WIDTH, 3), dark glyphs on a light background."""
    from PIL import Image, ImageDraw

    name = fonts[int(rng.integers(len(fonts)))]
    size = int(rng.integers(*FONT_SIZES))
    while True:  # shrink until the word fits with a 3 px margin
        x0, y0, x1, y1 = _font(name, size).getbbox(word)
        if x1 - x0 <= WIDTH - 6 or size <= 8:
            break
        size -= 1
    font = _font(name, size)
    bg, fg = int(rng.integers(215, 256)), int(rng.integers(0, 45))
    img = Image.new("L", (WIDTH, HEIGHT), bg)
    dx = (WIDTH - (x1 - x0)) / 2 - x0 + rng.uniform(-JITTER, JITTER)
    dy = (HEIGHT - (y1 - y0)) / 2 - y0 + rng.uniform(-JITTER, JITTER)
    ImageDraw.Draw(img).text((dx, dy), word, font=font, fill=fg)
    return np.repeat(np.asarray(img)[:, :, None], 3, axis=2)


def dataset(n: int, seed: int, fonts: tuple[str, ...] = FONTS) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rendered images (uint8 (n, H, W, 3)) and their word indices into VOCAB (int64 (n,))."""
    rng = np.random.default_rng(seed)
    words = rng.integers(len(VOCAB), size=n)
    return np.stack([render(VOCAB[w], rng, fonts) for w in words]), words


PROMPTS = tuple(prompt(w) for w in VOCAB)


# the trainers' task interface (rlg.zoo.train_text_base / train_text_flowgrpo; rlg.zoo.geneval has the same)
def vae_data(n: int, seed: int) -> np.ndarray:
    """The VAE's training images: uint8 (n, H, W, 3), every face."""
    return dataset(n, seed)[0]


def flow_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The transformer's training images and their prompt indices into PROMPTS (the FLOW_FONTS face)."""
    return dataset(n, seed, fonts=FLOW_FONTS)


def reward_fn():
    """The Flow-GRPO reward of this task: (images uint8 (B, H, W, 3), prompt indices (B,)) -> float32 (B,) OCR
    accuracy of each image's word (rlg.evaluators.ocr: real EasyOCR, Flow-GRPO's formula)."""
    from rlg.evaluators.ocr import OCRAccuracy, ocr_accuracy

    reader = OCRAccuracy(device="cpu").reader()

    def reward(images: np.ndarray, idx) -> torch.Tensor:
        return torch.tensor([ocr_accuracy(VOCAB[int(i)], reader(np.ascontiguousarray(im)))
                             for im, i in zip(images, idx)])

    return reward


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> float32 (n, 3, H, W) in [-1, 1] (the VAE's input range)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


# ---------------------------------------------------------------------------------------------
ENCODER_KEYS = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "tokenizer_3", "text_encoder_3")


def build_text_encoders(seed: int = 0, max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> dict:
    """Tiny CLIP x2 + T5 encoders and tokenizers (pipeline components), random from ``seed`` (in eval mode: no
    dropout); the T5 tokenizer's ``model_max_length`` is ``max_sequence_length``."""
    from rlg.tiny_pairs import _clip_text, _t5_text, clip_tokenizer, t5_tokenizer

    tok, tok2 = clip_tokenizer(max_length=CLIP_MAX_LENGTH), clip_tokenizer(max_length=CLIP_MAX_LENGTH)
    tok3 = t5_tokenizer(max_length=max_sequence_length)
    return {"tokenizer": tok, "text_encoder": _clip_text(tok, projection=32, seed=seed),
            "tokenizer_2": tok2, "text_encoder_2": _clip_text(tok2, projection=32, seed=seed + 1),
            "tokenizer_3": tok3, "text_encoder_3": _t5_text(tok3, d_model=64, seed=seed + 2)}


def build_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    # SD3's VAE has no quant convs; scaling_factor / shift_factor are set after training from the latents.
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                         latent_channels=4, norm_num_groups=8, sample_size=HEIGHT, use_quant_conv=False,
                         use_post_quant_conv=False, mid_block_add_attention=False,
                         scaling_factor=1.0, shift_factor=0.0)


def build_transformer(seed: int = 0):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(sample_size=HEIGHT // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=4,
                                 attention_head_dim=16, num_attention_heads=4, joint_attention_dim=64,
                                 caption_projection_dim=64, pooled_projection_dim=64, pos_embed_max_size=WIDTH // 4)


def build_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=SHIFT)


def assemble(transformer, vae, encoders: dict):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(transformer=transformer, vae=vae, scheduler=build_scheduler(), **encoders)


LORA_TARGETS = ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v"]  # Flow-GRPO's target modules


def pair_spec(base: Path | str = BASE_DIR, rl: Path | str = RL_DIR):
    """The PairSpec of the shipped (or a retrained) text pair."""
    from rlg.pairs import Checkpoint, PairSpec

    return PairSpec(name="zoo_text_flowgrpo", base=Checkpoint(str(base)), rl=Checkpoint(str(rl)),
                    rl_kind="peft_lora", offline=True)


def sampler_kwargs(steps: int = 20, guidance_scale: float = 4.5) -> dict:
    """The pipeline keyword arguments the zoo text models are trained for."""
    return {"height": HEIGHT, "width": WIDTH, "num_inference_steps": steps, "guidance_scale": guidance_scale,
            "negative_prompt": "", "max_sequence_length": MAX_SEQUENCE_LENGTH}


def threads() -> int:
    return int(os.environ.get("RLG_ZOO_THREADS", "1"))
