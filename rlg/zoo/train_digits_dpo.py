"""Diffusion-DPO on the digits base: preference pairs of the base model's own samples ranked by digit_prob.

Loss (Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference Optimization", eq. 14;
as implemented in SalesforceAIResearch/DiffusionDPO @ main : train.py, ``--sdxl False`` branch):
    l_w = ||eps - eps_theta(x^w_t, t)||^2 mean over dims,  l_l likewise; r_w, r_l the same for the
    frozen reference (the base)
    loss = -log sigmoid( -beta/2 * ((l_w - r_w) - (l_l - r_l)) )
with the same t and eps for the winner and the loser. ``beta`` is the official ``beta_dpo`` (the KL
coefficient of the objective, with the 1/T of eq. 14 folded in, as the official code does).

Preference data (one offline round, like Pick-a-Pic in the paper but self-generated): ``n_per_prompt``
samples per digit prompt from the base with DDIM (``data_steps`` steps, eta 1, CFG 2; 10 steps by default,
half the evaluation sampler's, to keep data generation within the CPU budget), scored by
the digit classifier; within each prompt, samples are paired at random and a pair is kept when its
digit_prob values differ by at least ``margin``; the winner is the higher. The winner's and loser's
final DDIM latents are the x_0 of the loss (what the VAE would encode them to, up to its error).
The data depend only on the base and ``data_seed``, so a beta/seed sweep trains on the same pairs.
Full UNet weights are trained and saved as ``<out_dir>/unet`` (like mhdang/dpo-sd1.5-text2image-v1).
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import torch

from rlg.zoo import digits as D
from rlg.zoo import resolve_zoo_id
from rlg.zoo.common import setup_torch, timer
from rlg.zoo.digits_rl import (GUIDANCE, NUM_STEPS, decode_uint8, digit_prob_reward, load_base, load_classifier,
                               sample_trajectories)

DEFAULTS = dict(beta=500.0, steps=150, lr=3e-5, batch_pairs=16, n_per_prompt=16, margin=0.2, data_seed=0,
                data_steps=10)
CACHE_DIR = Path.home() / ".cache" / "rlg-bench" / "zoo"


def make_preference_pairs(base_dir: str, data_seed: int = 0, n_per_prompt: int = 16, margin: float = 0.2,
                          classifier: str = "zoo:digits_classifier", data_steps: int = 10, cache: bool = True, log=print
                          ) -> dict[str, torch.Tensor]:
    """{'x_w','x_l': (P, 4, 8, 8) final latents, 'digit': (P,), 'p_w','p_l': (P,) digit_prob,
    'base_prob': (10 * n_per_prompt,) digit_prob of every base sample}. Cached by the base's weights hash."""
    digest = hashlib.sha256((Path(base_dir) / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()
    key = f"dpo-pairs-{digest[:12]}-{data_seed}-{n_per_prompt}-{margin}-{data_steps}.pt"
    if cache and (CACHE_DIR / key).exists():
        return torch.load(CACHE_DIR / key, weights_only=True)
    parts = load_base(base_dir)
    clf = load_classifier(classifier)
    gen = torch.Generator().manual_seed(data_seed)
    digits = torch.arange(10).repeat_interleave(n_per_prompt)
    lat, probs = [], []
    for i in range(0, len(digits), 80):
        d = digits[i:i + 80]
        tr = sample_trajectories(parts, parts.unet, d, gen, num_steps=data_steps)
        x0 = tr["latents"][-1]
        lat.append(x0)
        probs.append(digit_prob_reward(decode_uint8(parts, x0), d, clf))
        log(f"dpo data: {i + len(d)}/{len(digits)} samples")
    lat, probs = torch.cat(lat), torch.cat(probs).float()
    xw, xl, dg, pw, pl = [], [], [], [], []
    for d in range(10):
        idx = torch.nonzero(digits == d).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        for a, b in zip(idx[0::2].tolist(), idx[1::2].tolist()):
            if abs(probs[a] - probs[b]) < margin:
                continue
            w, l_ = (a, b) if probs[a] > probs[b] else (b, a)
            xw.append(lat[w]); xl.append(lat[l_]); dg.append(d); pw.append(probs[w]); pl.append(probs[l_])
    data = {"x_w": torch.stack(xw), "x_l": torch.stack(xl), "digit": torch.tensor(dg), "p_w": torch.stack(pw),
            "p_l": torch.stack(pl), "base_prob": probs}
    if cache:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        torch.save(data, CACHE_DIR / key)
    return data


def train_dpo(beta: float = DEFAULTS["beta"], seed: int = 0, steps: int = DEFAULTS["steps"],
              out_dir: Path | str = "digits_dpo", base: str = "zoo:digits_base", lr: float = DEFAULTS["lr"],
              batch_pairs: int = DEFAULTS["batch_pairs"], n_per_prompt: int = DEFAULTS["n_per_prompt"],
              margin: float = DEFAULTS["margin"], data_seed: int = DEFAULTS["data_seed"],
              classifier: str = "zoo:digits_classifier", data_steps: int = DEFAULTS["data_steps"], log=print
              ) -> dict[str, Any]:
    """Diffusion-DPO fine-tune of the base UNet; saves ``<out_dir>/unet`` (full weights). Deterministic given
    (seed, data_seed) on one machine and thread count. Returns the training config and log."""
    base_dir = resolve_zoo_id(base)
    with timer() as t_data:
        data = make_preference_pairs(base_dir, data_seed, n_per_prompt, margin, classifier, data_steps, log=log)
    gen = setup_torch(seed)
    parts = load_base(base_dir)
    ref = parts.unet
    policy = copy.deepcopy(ref).train().requires_grad_(True)
    emb = D.encode_prompts((parts.tokenizer, parts.text_encoder), D.PROMPTS)
    abar = parts.scheduler.alphas_cumprod
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    n_pairs = len(data["digit"])
    history = []
    with timer() as t_train:
        for step in range(steps):
            idx = torch.randint(0, n_pairs, (batch_pairs,), generator=gen)
            x0 = torch.cat([data["x_w"][idx], data["x_l"][idx]])
            cond = emb[data["digit"][idx]].repeat(2, 1, 1)
            tt = torch.randint(0, len(abar), (batch_pairs,), generator=gen).repeat(2)
            eps = torch.randn(x0[:batch_pairs].shape, generator=gen).repeat(2, 1, 1, 1)
            a = abar[tt].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
            model_l = ((policy(xt, tt, encoder_hidden_states=cond).sample - eps) ** 2).mean(dim=(1, 2, 3))
            with torch.no_grad():
                ref_l = ((ref(xt, tt, encoder_hidden_states=cond).sample - eps) ** 2).mean(dim=(1, 2, 3))
            model_diff = model_l[:batch_pairs] - model_l[batch_pairs:]
            ref_diff = ref_l[:batch_pairs] - ref_l[batch_pairs:]
            inside = -0.5 * beta * (model_diff - ref_diff)
            loss = -torch.nn.functional.logsigmoid(inside).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
            if step % 50 == 0 or step == steps - 1:
                acc = float((inside > 0).float().mean())
                history.append({"step": step, "loss": round(loss.item(), 4), "implicit_acc": acc})
                log(f"dpo step {step} loss {loss.item():.4f} implicit_acc {acc:.2f}")
    out = Path(out_dir)
    policy.eval().save_pretrained(str(out / "unet"), safe_serialization=True)
    return {"method": "Diffusion-DPO (Wallace et al. 2023)", "beta": beta, "kl_coefficient": beta, "seed": seed,
            "steps": steps, "lr": lr, "batch_pairs": batch_pairs, "base": base, "reward": "digit_prob",
            "n_per_prompt": n_per_prompt, "margin": margin, "data_seed": data_seed, "data_steps": data_steps,
            "n_pairs": int(n_pairs),
            "sampler": {"scheduler": "DDIM", "steps": NUM_STEPS, "eta": 1.0, "guidance": GUIDANCE},
            "base_sample_digit_prob": round(float(data["base_prob"].mean()), 4),
            "seconds": round(t_data["seconds"] + t_train["seconds"], 1), "seconds_data": t_data["seconds"],
            "history": history}
