"""DDPO with an explicit KL penalty to the base, on DDIM eta=1 trajectories, for JPEG (in)compressibility.

Objective (the KL-regularised RL objective of DPOK, Fan et al. 2023, eq. 6/7, with DDPO's policy
gradient, Black et al. 2023, kvablack/ddpo-pytorch @ 1958463):
    max_theta  E[r(x_0)] / reward_scale  -  beta * sum_t E[KL(p_theta(x_{t-1}|x_t) || p_base(x_{t-1}|x_t))]
Each iteration samples ``batch_size`` trajectories from the current policy (DDIM ``NUM_STEPS`` steps, eta 1,
CFG 2, random digit prompts), computes rewards r = -kB (compress) or +kB (incompress) with
rlg.evaluators.jpeg.jpeg_kb (q95), advantages A = (r - mean_batch(r)) / reward_scale, and takes one
optimizer step on
    loss = - mean_n sum_{t in S} A_n log p_theta(x_{t-1}|x_t)  +  beta * mean_n sum_{t in S} KL_t
(S: a random ``timestep_fraction`` of the steps, rescaled to the full sum). With ``group_size`` set, each batch is
``batch_size // group_size`` distinct prompts drawn ``group_size`` times and the baseline is the mean of the same
prompt's group (DDPO's per-prompt stat tracking, ddpo_pytorch/stat_tracking.py, and Flow-GRPO's group advantage):
the digit decides most of the JPEG size (a "1" is 0.1 kB smaller than a "0"), so a batch-mean baseline credits a
trajectory for its prompt's size, noise the policy cannot act on. ``adv_norm="std"`` divides by the group's std
as they do; the default keeps the fixed ``reward_scale``. One step per batch keeps
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
# The shipped models' recipes (train_ddpo keyword arguments beyond beta and seed).
# Incompressibility: 30 iterations of 8 random digits, batch-mean baseline (on the first base, after 10 iterations
# its w2 - w1 was 1.5 paired SEs; after 30, over 6).
# Compressibility: that recipe moved the first base (which ignored its prompt, so drawing a "1" for any prompt paid)
# but not the base with a trained text encoder (10 or 30 iterations: w = 1 - w = 0 +0.001 kB). There the digit
# decides most of the size (base: "1" 0.99 kB, "0" 1.10 kB; within a digit sd 0.005-0.023 kB), so the batch-mean
# baseline was mostly prompt noise. Per-prompt groups (4 digits x 4 samples, lr 3e-3) move it: after 20 iterations
# w = 1 - w = 0 +0.012 kB (4.4 paired SE), w2 - w1 +0.008 (4.3 SE) at 30 images; after 30, +0.020 and +0.010 but
# the RL model draws wrong digits (accuracy 0.97 at w = 1, 0.87 at w = 2).
SHIPPED = {"compress": dict(steps=20, lr=3e-3, batch_size=16, group_size=4),
           "incompress": dict(steps=30)}


def train_ddpo(beta: float = DEFAULTS["beta"], seed: int = 0, steps: int = DEFAULTS["steps"],
               out_dir: Path | str = "digits_ddpo", reward: str = "compress", base: str = "zoo:digits_base",
               lr: float = DEFAULTS["lr"], batch_size: int = DEFAULTS["batch_size"],
               timestep_fraction: float = DEFAULTS["timestep_fraction"], rank: int = DEFAULTS["rank"],
               reward_scale: float = DEFAULTS["reward_scale"], group_size: int | None = None,
               adv_norm: str = "scale", snapshot_steps: tuple[int, ...] = (), log=print) -> dict[str, Any]:
    """DDPO+KL LoRA fine-tune for ``reward`` in {compress, incompress}; ``steps`` = policy-gradient iterations.
    Saves ``<out_dir>/pytorch_lora_weights.safetensors``; deterministic given ``seed`` (one machine, one thread
    count). ``group_size`` (None: ``batch_size`` random digits, batch-mean baseline, the shipped recipe) and
    ``adv_norm`` ("scale" | "std") choose the advantage (module docstring). ``snapshot_steps``: also save the
    adapter after those iterations to ``<out_dir>/iter<k>`` (each equal to a run of k iterations). Raises
    ValueError when group_size does not divide batch_size or is 1, or adv_norm is neither. Returns the training
    config and log (reward and KL per iteration)."""
    if group_size is not None and (group_size < 2 or batch_size % group_size):
        raise ValueError(f"group_size {group_size} must be >= 2 and divide batch_size {batch_size}")
    if adv_norm not in ("scale", "std"):
        raise ValueError(f"adv_norm {adv_norm!r}; use 'scale' or 'std'")
    from peft import LoraConfig

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
            if group_size is None:  # the shipped recipe: its random stream is unchanged
                digits = torch.randint(0, 10, (batch_size,), generator=gen)
            else:
                digits = torch.randperm(10, generator=gen)[:batch_size // group_size].repeat_interleave(group_size)
            unet.eval()
            tr = sample_trajectories(parts, unet, digits, gen)
            r = jpeg_reward(decode_uint8(parts, tr["latents"][-1]), reward)
            adv = advantages(r, None if group_size is None else group_size, reward_scale, adv_norm)
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
            if it + 1 in snapshot_steps:
                save_lora(unet, rank, Path(out_dir) / f"iter{it + 1}")
            if it % 5 == 0 or it == steps - 1:
                log(f"ddpo[{reward}] iter {it} reward {float(r.mean()):.4f} kl {kl_sum:.3f}")
    unet.eval()
    save_lora(unet, rank, out_dir)
    return {"method": "DDPO (on-policy, one step per batch) + KL penalty (DPOK)", "beta": beta, "kl_coefficient": beta,
            "reward": f"jpeg_{reward}ibility", "reward_scale_kb": reward_scale, "seed": seed, "steps": steps, "lr": lr,
            "batch_size": batch_size, "timestep_fraction": timestep_fraction, "lora_rank": rank, "lora_alpha": rank,
            "lora_targets": LORA_TARGETS, "base": base,
            **({} if group_size is None else {"group_size": group_size, "adv_norm": adv_norm}),
            "sampler": {"scheduler": "DDIM", "steps": NUM_STEPS, "eta": ETA, "guidance": GUIDANCE},
            "seconds": t["seconds"], "history": history}


def save_lora(unet, rank: int, out_dir: Path | str) -> None:
    """The UNet's LoRA as ``<out_dir>/pytorch_lora_weights.safetensors`` (StableDiffusionPipeline.save_lora_weights).
    PEFT-style keys (unet.<module>.lora_A/B.weight), the layout diffusers' own loader reads back in full:
    convert_state_dict_to_diffusers would rename only the attention layers to the old "lora.down/up" layout, and a
    file mixing both layouts loads only half its layers (the attention LoRAs are dropped)."""
    from diffusers import StableDiffusionPipeline
    from peft import get_peft_model_state_dict

    meta = {"r": rank, "lora_alpha": rank, "target_modules": sorted(LORA_TARGETS)}
    StableDiffusionPipeline.save_lora_weights(str(out_dir), unet_lora_layers=get_peft_model_state_dict(unet),
                                              unet_lora_adapter_metadata=meta, safe_serialization=True)


def advantages(r: torch.Tensor, group_size: int | None, reward_scale: float, adv_norm: str = "scale"
               ) -> torch.Tensor:
    """(N,) float32 advantages of rewards ``r`` (N,) float64: minus the batch mean (group_size None) or minus the
    mean of each consecutive group of ``group_size``; divided by ``reward_scale`` ("scale") or by the group's std
    plus 1e-6 ("std", DDPO's PerPromptStatTracker and Flow-GRPO)."""
    if group_size is None and adv_norm == "scale":
        return ((r - r.mean()) / reward_scale).float()  # the shipped models' exact arithmetic
    g = r.view(-1, group_size) if group_size else r.view(1, -1)
    centred = g - g.mean(1, keepdim=True)
    denom = reward_scale if adv_norm == "scale" else g.std(1, keepdim=True) + 1e-6
    return (centred / denom).reshape(-1).float()
