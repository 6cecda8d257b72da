"""The digits task: data, prompts and the architecture of the SD-like digits pipeline.

Data: scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``): 1,797 real 8x8
scans (16 grey levels) of digits 0-9, the test part of the UCI "Optical Recognition of Handwritten
Digits" data set (Alpaydin & Kaynak 1998, https://doi.org/10.24432/C50P49), licence CC BY 4.0 (UCI).
Each scan is bilinearly upsampled to 32x32 and drawn as dark ink on white paper, RGB in [0, 1],
so a generator has pixels to spend (JPEG sizes vary with what it draws).

Split: a fixed stratified split (seed 0) into 1,297 train and 500 held-out images. The generator and
the classifier see only the train part; the held-out part is the classifier's test set and the
reference set of the Fréchet distance.

Pipeline: a stock ``StableDiffusionPipeline``: a small trained ``AutoencoderKL`` (32x32x3 <-> 8x8x4
latents), a tiny ``CLIPTextModel`` (hidden 32, 2 layers) with a real CLIP BPE tokenizer (from
``rlg.tiny_pairs``), trained together with a small ``UNet2DConditionModel`` by the epsilon-prediction
loss on SD1.5's scaled-linear DDPM schedule, and a ``DDIMScheduler``. All saved by the stock classes in
hub layout, so the pipeline loads by the same code path as real checkpoints.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

# the digit a prompt asks for is the scorers' rule: the evaluators own it, the zoo imports it (never the reverse)
from rlg.evaluators.digits import digit_of_prompt  # noqa: F401

DATA_SOURCE = ("scikit-learn sklearn.datasets.load_digits: UCI Optical Recognition of Handwritten Digits "
               "(Alpaydin & Kaynak 1998, doi:10.24432/C50P49), 1797 real 8x8 scans")
DATA_LICENCE = "CC BY 4.0 (UCI Machine Learning Repository)"
IMAGE_SIZE = 32
LATENT_SIZE = 8
TOKEN_LENGTH = 16  # the tokenizer's model_max_length: prompts are ~6 tokens
SPLIT_SEED, N_HELDOUT = 0, 500


def prompt_for(digit: int) -> str:
    return f"a handwritten digit {int(digit)}"


PROMPTS = [prompt_for(d) for d in range(10)]


def to_images(scans: np.ndarray) -> torch.Tensor:
    """8x8 scans (N, 8, 8), values 0..16 (16 = ink) -> float32 (N, 3, 32, 32) in [0, 1], dark ink on white."""
    x = torch.as_tensor(np.asarray(scans, dtype=np.float32) / 16.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return (1.0 - x.clamp(0, 1)).repeat(1, 3, 1, 1)


@lru_cache(maxsize=1)
def load_split() -> dict[str, np.ndarray]:
    """{'train_x','train_y','test_x','test_y'}: the 8x8 scans (float 0..16) and labels of the fixed split."""
    from rlg.extras import require

    require("sklearn", purpose="the digits zoo's data (sklearn.datasets.load_digits)")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    tx, vx, ty, vy = train_test_split(d.images, d.target, test_size=N_HELDOUT, random_state=SPLIT_SEED,
                                      stratify=d.target)
    return {"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy}


# ---------------------------------------------------------------------------------------------
# Components of the pipeline
# ---------------------------------------------------------------------------------------------
def build_tokenizer():
    from rlg.tiny_pairs import clip_tokenizer

    return clip_tokenizer(max_length=TOKEN_LENGTH)


def build_text_encoder(tokenizer, seed: int = 0):
    """Tiny CLIP text encoder (hidden 32, 2 layers), initialised by its seed; train_digits_base trains it with the
    UNet (a frozen random one left the digit prompts nearly indistinguishable to the UNet)."""
    from rlg.tiny_pairs import _clip_text

    return _clip_text(tokenizer, hidden=32, seed=seed)


def build_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 16, 32],
                         down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                         layers_per_block=1, norm_num_groups=8, sample_size=IMAGE_SIZE, mid_block_add_attention=False)


def build_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),  # text enters at 4x4 and in the mid block
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )


def train_scheduler():
    """SD1.5's training noise schedule (scaled linear, 1000 steps, epsilon prediction)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="epsilon", clip_sample=False)


def sample_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(train_scheduler().config, set_alpha_to_one=False, steps_offset=1)


def assemble_pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                                   unet=unet.eval(), scheduler=sample_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


@torch.no_grad()
def encode_prompts(pipe_or_parts, prompts: list[str]) -> torch.Tensor:
    """(len(prompts), TOKEN_LENGTH, 32) text embeddings, exactly as StableDiffusionPipeline.encode_prompt makes them."""
    tok, enc = pipe_or_parts
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    return enc(ids)[0]
