"""DDPO with an explicit KL penalty to the base, on DDIM eta=1 trajectories, for JPEG (in)compressibility.

Objective (the KL-regularised RL objective of DPOK, Fan et al. 2023, eq. 6/7, with DDPO's policy
gradient, Black et al. 2023, kvablack/ddpo-pytorch @ 1958463):
    max_theta  E[r(x_0)] / reward_scale  -  beta * sum_t E[KL(p_theta(x_{t-1}|x_t) || p_base(x_{t-1}|x_t))]
Each iteration samples ``batch_size`` trajectories from the current policy (DDIM ``NUM_STEPS`` steps, eta 1,
CFG 2, random digit prompts), computes rewards r = -kB (compress) or +kB (incompress) with
rlg.evaluators.jpeg.jpeg_kb (q95), advantages A = (r - mean_batch(r)) / reward_scale, and takes one
optimizer step on
    loss = - mean_n sum_{t in S} A_n log p_theta(x_{t-1}|x_t)  +  beta * mean_n sum_{t in S} KL_t
(S: a random ``timestep_fraction`` of the steps, rescaled to the full sum). One step per batch keeps
it on-policy (DDPO's importance ratio is exactly 1, so its clipping never acts); KL_t is the closed-form
Gaussian KL at the visited states (rlg.zoo.digits_rl). ``reward_scale`` is fixed (not the batch std), so
beta keeps one meaning across runs: the penalty per kB is beta * reward_scale.

The policy is a LoRA (rank 4, alpha 4) on the UNet's attention and feed-forward projections; the base is
the same network with the adapter off. Saved as a diffusers-format LoRA file
(``pytorch_lora_weights.safetensors`` via StableDiffusionPipeline.save_lora_weights, PEFT-style keys with
the r / lora_alpha metadata), which rlg.pairs
loads with rl_kind=diffusers_lora.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlg.zoo import resolve_zoo_id
from rlg.zoo.common import setup_torch, timer
from rlg.zoo.digits_rl import (ETA, GUIDANCE, NUM_STEPS, cfg_eps, decode_uint8, gaussian_log_prob, jpeg_reward,
                               load_base, sample_trajectories, step_coefficients)

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
DEFAULTS = dict(beta=0.1, steps=10, lr=5e-3, batch_size=8, timestep_fraction=0.5, rank=4, reward_scale=0.02)
# Iterations of the shipped models: 30 each. On the first base compressibility moved within 10; on the base with a
# trained text encoder 10 moved nothing (w = 1 - w = 0: +0.001 kB, the wrong sign; w2 - w1 -0.0035 kB at 50 images).
# Incompressibility needed 30 on the first base (after 10 its w2 - w1 was 1.5 paired SEs; after 30, over 6).
SHIPPED_STEPS = {"compress": 30, "incompress": 30}


def train_ddpo(beta: float = DEFAULTS["beta"], seed: int = 0, steps: int = DEFAULTS["steps"],
               out_dir: Path | str = "digits_ddpo", reward: str = "compress", base: str = "zoo:digits_base",
               lr: float = DEFAULTS["lr"], batch_size: int = DEFAULTS["batch_size"],
               timestep_fraction: float = DEFAULTS["timestep_fraction"], rank: int = DEFAULTS["rank"],
               reward_scale: float = DEFAULTS["reward_scale"], log=print) -> dict[str, Any]:
    """DDPO+KL LoRA fine-tune for ``reward`` in {compress, incompress}; ``steps`` = policy-gradient iterations.
    Saves ``<out_dir>/pytorch_lora_weights.safetensors``; deterministic given ``seed`` (one machine, one thread
    count). Returns the training config and log (reward and KL per iteration)."""
    from peft import LoraConfig, get_peft_model_state_dict
    from diffusers import StableDiffusionPipeline

    gen = setup_torch(seed)
    parts = load_base(resolve_zoo_id(base))
    unet = parts.unet
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, init_lora_weights="gaussian")
    unet.add_adapter(config)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    coefs = step_coefficients(parts.scheduler, NUM_STEPS, ETA)
    n_train = max(1, round(timestep_fraction * len(coefs)))
    history = []
    with timer() as t:
        for it in range(steps):
            digits = torch.randint(0, 10, (batch_size,), generator=gen)
            unet.eval()
            tr = sample_trajectories(parts, unet, digits, gen)
            r = jpeg_reward(decode_uint8(parts, tr["latents"][-1]), reward)
            adv = ((r - r.mean()) / reward_scale).float()
            unet.train()
            chosen = torch.randperm(len(coefs), generator=gen)[:n_train].tolist()
            opt.zero_grad(set_to_none=True)
            kl_sum = 0.0
            for i in chosen:
                c = coefs[i]
                x_t, x_prev = tr["latents"][i], tr["latents"][i + 1]
                eps = cfg_eps(unet, x_t, c["t"], tr["cond"], tr["uncond"], GUIDANCE)
                with torch.no_grad():
                    unet.disable_adapters()
                    eps_ref = cfg_eps(unet, x_t, c["t"], tr["cond"], tr["uncond"], GUIDANCE)
                    unet.enable_adapters()
                mean = c["A"] * x_t + c["C"] * eps
                logp = gaussian_log_prob(x_prev, mean, c["sigma"])
                kl = ((c["C"] * (eps - eps_ref)) ** 2).flatten(1).sum(1) / (2 * c["sigma"] ** 2)
                scale = len(coefs) / n_train  # unbiased for the full sum over steps
                loss = scale * (-(adv * logp).mean() + beta * kl.mean())
                loss.backward()
                kl_sum += scale * float(kl.detach().mean())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            history.append({"iter": it, "reward_mean": round(float(r.mean()), 4), "kl": round(kl_sum, 4)})
            if it % 5 == 0 or it == steps - 1:
                log(f"ddpo[{reward}] iter {it} reward {float(r.mean()):.4f} kl {kl_sum:.3f}")
    unet.eval()
    # PEFT-style keys (unet.<module>.lora_A/B.weight), the layout diffusers' own loader reads back in full.
    # convert_state_dict_to_diffusers would rename only the attention layers to the old "lora.down/up"
    # layout; a file mixing both layouts loads only half its layers (the attention LoRAs are dropped).
    layers = get_peft_model_state_dict(unet)
    meta = {"r": rank, "lora_alpha": rank, "target_modules": sorted(LORA_TARGETS)}
    StableDiffusionPipeline.save_lora_weights(str(out_dir), unet_lora_layers=layers, unet_lora_adapter_metadata=meta,
                                              safe_serialization=True)
    return {"method": "DDPO (on-policy, one step per batch) + KL penalty (DPOK)", "beta": beta, "kl_coefficient": beta,
            "reward": f"jpeg_{reward}ibility", "reward_scale_kb": reward_scale, "seed": seed, "steps": steps, "lr": lr,
            "batch_size": batch_size, "timestep_fraction": timestep_fraction, "lora_rank": rank, "lora_alpha": rank,
            "lora_targets": LORA_TARGETS, "base": base,
            "sampler": {"scheduler": "DDIM", "steps": NUM_STEPS, "eta": ETA, "guidance": GUIDANCE},
            "seconds": t["seconds"], "history": history}
