"""What the digits RL trainers share: loading the base parts, DDIM (eta) trajectories with
log-probabilities, decoding exactly as the pipeline does, and the two rewards.

DDIM step (Song et al. 2021, eq. 12; the arithmetic of diffusers' DDIMScheduler.step with
clip_sample=False, and of kvablack/ddpo-pytorch @ 1958463 : ddpo_pytorch/diffusers_patch/ddim_with_logprob.py):
    x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    mean   = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma_t^2) eps
    x_prev = mean + sigma_t z
so mean is affine in eps: mean = A_t x_t + C_t eps, and two policies differ in mean by C_t (eps_1 - eps_2).
log p(x_prev | x_t) is the Gaussian log density SUMMED over the latent's dimensions (the exact
trajectory likelihood; ddpo-pytorch averages instead), and the per-step KL between two policies is
KL_t = ||C_t (eps_1 - eps_2)||^2 / (2 sigma_t^2) (the DPOK per-step KL, Fan et al. 2023, eq. 7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlg.zoo import digits as D

# The zoo's digits sampler (also rlg/conf/sampler/zoo_digits.yaml): DDIM, eta 1 (DDPO's), CFG 2.
NUM_STEPS, ETA, GUIDANCE = 20, 1.0, 2.0


@dataclass
class BaseParts:
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    scheduler: Any  # a DDIMScheduler
    path: str


def load_base(path: Path | str) -> BaseParts:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False)
    for m in (pipe.text_encoder, pipe.vae, pipe.unet):
        m.eval().requires_grad_(False)
    return BaseParts(pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, pipe.scheduler, str(path))


def step_coefficients(scheduler, num_steps: int = NUM_STEPS, eta: float = ETA) -> list[dict[str, float]]:
    """Per DDIM step i: timestep t, A_t, C_t, sigma_t (see the module docstring)."""
    scheduler.set_timesteps(num_steps)
    abar = scheduler.alphas_cumprod.double()
    stride = scheduler.config.num_train_timesteps // num_steps
    out = []
    for t in scheduler.timesteps.tolist():
        prev = t - stride
        a_t = float(abar[t])
        a_p = float(abar[prev]) if prev >= 0 else float(scheduler.final_alpha_cumprod)
        sigma = eta * math.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
        A = math.sqrt(a_p) / math.sqrt(a_t)
        C = math.sqrt(max(1 - a_p - sigma**2, 0.0)) - math.sqrt(a_p) * math.sqrt(1 - a_t) / math.sqrt(a_t)
        out.append({"t": int(t), "A": A, "C": C, "sigma": sigma})
    return out


def cfg_eps(unet, x: torch.Tensor, t: int, cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guided epsilon, as StableDiffusionPipeline forms it (one batch [uncond, cond])."""
    n = x.shape[0]
    out = unet(torch.cat([x, x]), torch.full((2 * n,), t), encoder_hidden_states=torch.cat([uncond, cond])).sample
    e_u, e_c = out.chunk(2)
    return e_u + guidance * (e_c - e_u)


@torch.no_grad()
def sample_trajectories(parts: BaseParts, unet, digits: torch.Tensor, gen: torch.Generator,
                        num_steps: int = NUM_STEPS, eta: float = ETA, guidance: float = GUIDANCE
                        ) -> dict[str, torch.Tensor]:
    """DDIM trajectories for prompts "a handwritten digit <d>".

    Returns {'latents': (T+1, N, 4, 8, 8) x_T..x_0, 'log_probs': (T, N), 'cond': (N, L, 32),
    'uncond': (N, L, 32)} (log_probs only when eta > 0).
    """
    n = len(digits)
    emb = D.encode_prompts((parts.tokenizer, parts.text_encoder), D.PROMPTS + [""])
    cond, uncond = emb[digits], emb[10:11].expand(n, -1, -1)
    coefs = step_coefficients(parts.scheduler, num_steps, eta)
    x = torch.randn((n, 4, D.LATENT_SIZE, D.LATENT_SIZE), generator=gen)
    lats, lps = [x], []
    for c in coefs:
        eps = cfg_eps(unet, x, c["t"], cond, uncond, guidance)
        mean = c["A"] * x + c["C"] * eps
        if c["sigma"] > 0:
            x = mean + c["sigma"] * torch.randn(x.shape, generator=gen)
            lps.append(gaussian_log_prob(x, mean, c["sigma"]))
        else:
            x = mean
        lats.append(x)
    out = {"latents": torch.stack(lats), "cond": cond, "uncond": uncond}
    if lps:
        out["log_probs"] = torch.stack(lps)
    return out


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(x; mean, sigma^2 I) summed over all but the batch dimension -> (N,)."""
    d = x[0].numel()
    return (-((x - mean) ** 2).flatten(1).sum(1) / (2 * sigma**2) - d * (math.log(sigma) + 0.5 * math.log(2 * math.pi)))


@torch.no_grad()
def decode_uint8(parts: BaseParts, latents: torch.Tensor) -> np.ndarray:
    """Final latents -> uint8 (N, 32, 32, 3), as StableDiffusionPipeline(output_type='np') then rlg.sampling round."""
    imgs = []
    for i in range(latents.shape[0]):  # row by row, like rlg.sampling's batch-invariant VAE
        imgs.append(parts.vae.decode(latents[i:i + 1] / parts.vae.config.scaling_factor).sample)
    img = (torch.cat(imgs) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
    return (img * 255).round().astype(np.uint8)


def digit_rewards(images_u8: np.ndarray, digits: torch.Tensor, classifier) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) probability of the prompted digit and (N,) its log-odds (the digit_prob evaluator's digit_prob and
    digit_margin, rlg.evaluators.digits.log_odds)."""
    from rlg.evaluators.digits import log_odds

    x = torch.from_numpy(images_u8.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        logits = classifier(x)
    return logits.softmax(1)[torch.arange(len(digits)), digits], log_odds(logits, digits)


def jpeg_reward(images_u8: np.ndarray, kind: str) -> torch.Tensor:
    """(N,) JPEG size in kB (``incompress``) or minus it (``compress``), via rlg.evaluators.jpeg.jpeg_kb (q95)."""
    from PIL import Image

    from rlg.evaluators.jpeg import jpeg_kb

    kb = torch.tensor([jpeg_kb(Image.fromarray(im)) for im in images_u8], dtype=torch.float64)
    if kind not in ("compress", "incompress"):
        raise ValueError(f"jpeg reward kind {kind!r}; use compress or incompress")
    return kb if kind == "incompress" else -kb


def load_classifier(path: str = "zoo:digits_classifier"):
    from rlg.evaluators.digits import DigitClassifier
    from rlg.zoo import resolve_zoo_id

    return DigitClassifier.load(resolve_zoo_id(path))
