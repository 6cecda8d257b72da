"""Flow-GRPO fine-tune of a zoo SD3-like base transformer with a task's reward: rlg.zoo.text (the default, the OCR
evaluator with real EasyOCR) or rlg.zoo.geneval (GenEval correctness under the zoo_digits detector); the task module
gives ``PROMPTS``, ``MAX_SEQUENCE_LENGTH`` (the T5 length its base was trained with) and ``reward_fn()`` ->
reward(images uint8 (B, H, W, 3), prompt indices (B,)) -> (B,).

The algorithm of yifan123/flow_grpo @ ac4c86e : scripts/train_sd3.py (read, not copied):
  1. sample a group of ``group`` images per prompt with the Flow-GRPO SDE (``noise_level`` 0.7, ``sample_steps``
     steps, CFG ``guidance_scale`` inside the policy), recording every state x_j, next state x_{j+1} and
     log p(x_{j+1} | x_j) under the sampling policy. With ``sde_steps`` = k only the first k steps are SDE steps
     and the rest deterministic Euler ODE steps, as Flow-GRPO-Fast (yifan123/flow_grpo README; MixGRPO): all
     reward variance then comes from the k high-noise steps that decide the glyphs, and only those are trained
     (on this CPU budget, all-SDE trajectories gave no measurable gain: OCR 0.69 -> 0.66 after 30 iterations);
  2. reward r = the task's (OCR accuracy for the text task: rlg.evaluators.ocr); advantage per prompt group
     A = (r - mean_group) / (std_group + 1e-4), clipped to +-adv_clip_max;
  3. loss per step j: max(-A ratio, -A clip(ratio, 1 +- clip_range)) with ratio = exp(log p_theta - log p_old),
     plus beta * ||mean_theta - mean_ref||^2 / (2 std_j^2) (mean over latent dims; ref = adapter off);
     gradients accumulated over a random ``timestep_fraction`` of the steps (upstream's train.timestep_fraction,
     drawn per iteration) and the batch, one AdamW step per iteration (so ratio == 1 at the forward, as upstream
     with one inner epoch).
SDE step and Gaussian log-density (flow_grpo/diffusers_patch/sd3_sde_with_logprob.py, FACTS.md section 1):
  std_j = noise_level sqrt(sigma / (1 - sigma')),  sigma' = sigmas[1] where sigma == 1
  mean = x (1 + std^2 / (2 sigma) dt) + v (1 + std^2 (1 - sigma) / (2 sigma)) dt,  x_next = mean + std sqrt(-dt) eps
  log p = mean over dims of [-(x_next - mean)^2 / (2 std^2 (-dt)) - log(std sqrt(-dt)) - log sqrt(2 pi)].
The adapter is a PEFT LoRA (Flow-GRPO's target modules, ``lora_alpha != r``, gaussian init) saved with
``PeftModel.save_pretrained``: adapter_config.json + adapter_model.safetensors (keys base_model.model.*).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rlg.zoo import text as T
from rlg.zoo.common import save_checkpoint

DEFAULTS = {"group": 16, "prompts_per_step": 4, "sample_steps": 8, "noise_level": 0.7, "guidance_scale": 4.5,
            "lr": 1e-3, "lora_r": 8, "lora_alpha": 16, "clip_range": 1e-4, "adv_clip_max": 5.0,
            "max_grad_norm": 1.0, "timestep_fraction": 1.0, "sde_steps": 1}


def sde_mean_std(x: torch.Tensor, v: torch.Tensor, sigmas: torch.Tensor, j: int, noise_level: float):
    """(mean (B, C, H, W), std_j * sqrt(-dt) (0-d), std_j (0-d)) of the Flow-GRPO SDE step j; float32."""
    sigma, sigma_next = sigmas[j], sigmas[j + 1]
    dt = sigma_next - sigma
    std = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigmas[1], sigma))) * noise_level
    mean = x * (1 + std**2 / (2 * sigma) * dt) + v * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt
    return mean, std * torch.sqrt(-dt), std


def gaussian_log_prob(x_next: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over dims of log N(x_next; mean, scale^2): (B,)."""
    lp = -((x_next.detach() - mean) ** 2) / (2 * scale**2) - torch.log(scale) - math.log(math.sqrt(2 * math.pi))
    return lp.mean(dim=tuple(range(1, lp.ndim)))


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """(r - mean over the prompt's group) / (std over the group + 1e-4), upstream's per-prompt stat tracking."""
    adv = torch.empty_like(rewards)
    for g in group_ids.unique():
        m = group_ids == g
        r = rewards[m]
        adv[m] = (r - r.mean()) / (r.std(unbiased=False) + 1e-4)
    return adv


def flat_share(rewards: torch.Tensor, group_ids: torch.Tensor) -> float:
    """Share of prompt groups whose rewards are all equal: their advantage is 0, so they give no policy gradient."""
    return float(np.mean([rewards[group_ids == g].std(unbiased=False).item() == 0 for g in group_ids.unique()]))


def prompt_pool(train_prompts, n_prompts: int, prompts_per_step: int) -> torch.Tensor:
    """The prompt indices groups are drawn from, int64 (K,): all ``n_prompts`` when ``train_prompts`` is None
    (then pool[randperm] == randperm: runs without the option are unchanged). Raises ValueError before any work
    when fewer than ``prompts_per_step`` distinct indices, or one outside [0, n_prompts), are given."""
    if train_prompts is None:
        return torch.arange(n_prompts)
    ids = [int(i) for i in train_prompts]
    if len(set(ids)) < prompts_per_step or not all(0 <= i < n_prompts for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"train_prompts must hold at least prompts_per_step={prompts_per_step} distinct prompt "
                         f"indices in [0, {n_prompts}); got {list(train_prompts)!r}")
    return torch.tensor(ids)


def velocity(model, x, t, pe, pooled, uncond_pe, uncond_pooled, guidance_scale):
    """CFG velocity as StableDiffusion3Pipeline computes it (uncond first, then cond, in one batch)."""
    n = x.shape[0]
    out = model(hidden_states=torch.cat([x, x]), encoder_hidden_states=torch.cat([uncond_pe, pe]),
                pooled_projections=torch.cat([uncond_pooled, pooled]),
                timestep=torch.full((2 * n,), float(t))).sample
    u, c = out[:n], out[n:]
    return u + guidance_scale * (c - u)


def decode(pipe, latents: torch.Tensor) -> np.ndarray:
    """Latents -> uint8 (B, H, W, 3), the pipeline's own decode and rounding."""
    with torch.no_grad():
        z = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        img = pipe.vae.decode(z).sample
    img = (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return (img * 255).round().astype(np.uint8)


def train_flowgrpo(beta: float, seed: int, steps: int, out_dir: Path | str, base_dir: Path | str = T.BASE_DIR,
                   log=print, snapshot_steps=(), task=T, resume: bool = False, **overrides) -> dict:
    """Fine-tune a PEFT LoRA on the base transformer for ``steps`` iterations; save it to ``out_dir`` (and the
    adapter after each iteration count in ``snapshot_steps`` to ``<out_dir>_it<N>``, for choosing ``steps``).
    ``resume``: save the state (adapter, optimiser, generator, history) to ``<out_dir>.partial.pt`` after every
    iteration and continue from it when present (removed at the end; the result equals an uninterrupted run's).

    beta: KL coefficient (0 allowed). Overrides: the keys of ``DEFAULTS``, and ``train_prompts`` (indices into
    ``task.PROMPTS`` that groups are drawn from; default all, ``prompt_pool``). The history records per iteration
    the mean reward, the KL and ``flat_groups`` (``flat_share``). Deterministic given ``seed`` (one torch thread).
    Returns metrics.
    """
    from diffusers import StableDiffusion3Pipeline
    from peft import LoraConfig, get_peft_model

    from rlg.schedulers import FlowGRPOSDEScheduler
    from rlg.zoo.train_text_base import prompt_embeddings

    cfg = {**DEFAULTS, **overrides, "beta": beta, "seed": seed, "steps": steps}
    pool = prompt_pool(cfg.get("train_prompts"), len(task.PROMPTS), cfg["prompts_per_step"])
    torch.set_num_threads(T.threads())
    torch.manual_seed(seed)
    t0 = time.time()
    pipe = StableDiffusion3Pipeline.from_pretrained(str(base_dir), local_files_only=True)
    sched = FlowGRPOSDEScheduler.from_config(pipe.scheduler.config, noise_level=cfg["noise_level"])
    sched.set_timesteps(cfg["sample_steps"])
    sigmas, timesteps = sched.sigmas.float(), sched.timesteps
    pe_all, pooled_all = prompt_embeddings(pipe, list(task.PROMPTS) + [""], task.MAX_SEQUENCE_LENGTH)
    lora = LoraConfig(r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], init_lora_weights="gaussian",
                      target_modules=T.LORA_TARGETS)
    model = get_peft_model(pipe.transformer.requires_grad_(False), lora)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    reward_of = task.reward_fn()  # built here, as before the generalisation: the OCR reader's init draws torch RNG
    gen = torch.Generator().manual_seed(seed)
    nw, G, P = len(task.PROMPTS), cfg["group"], cfg["prompts_per_step"]
    n_sde = len(timesteps) if cfg["sde_steps"] is None else cfg["sde_steps"]
    history, start = [], 0
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial.pt")
    if resume and partial.exists():
        state = torch.load(partial, weights_only=True)
        model.load_state_dict(state["model"], strict=False)  # the adapter's tensors; the base is the same file
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        history, start = state["history"], state["step"]
        t0 -= state["seconds"]
        log(f"grpo: resumed at iteration {start} from {partial}")

    def save(path: Path, config: dict) -> dict:
        model.save_pretrained(str(path), safe_serialization=True)
        (path / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub
        metrics = {"config": config, "seconds": time.time() - t0,
                   "train_reward_first5": float(np.mean([h["reward"] for h in history[:5]])),
                   "train_reward_last5": float(np.mean([h["reward"] for h in history[-5:]]))}
        (path / "train_metrics.json").write_text(json.dumps({**metrics, "history": history}, indent=1))
        return metrics
    for it in range(start, steps):
        # --- 1. sample groups with the SDE (no grad), recording the trajectory
        words = pool[torch.randperm(len(pool), generator=gen)[:P]].repeat_interleave(G)
        n = len(words)
        pe, pooled = pe_all[words], pooled_all[words]
        upe, upooled = pe_all[nw:].expand(n, -1, -1), pooled_all[nw:].expand(n, -1)
        x = torch.randn((n, 4, T.HEIGHT // 2, T.WIDTH // 2), generator=gen)
        states, logps = [x], []
        model.eval()
        with torch.no_grad():
            for j, t in enumerate(timesteps):
                v = velocity(model, x, t, pe, pooled, upe, upooled, cfg["guidance_scale"])
                if j < n_sde:
                    mean, scale, _ = sde_mean_std(x, v, sigmas, j, cfg["noise_level"])
                    x = mean + scale * torch.randn(x.shape, generator=gen)
                    logps.append(gaussian_log_prob(x, mean, scale))
                else:  # Flow-GRPO-Fast: deterministic Euler ODE after the SDE window
                    x = x + (sigmas[j + 1] - sigmas[j]) * v
                states.append(x)
        images = decode(pipe, x)
        rewards = reward_of(images, words.tolist())
        adv = group_advantages(rewards, words).clamp(-cfg["adv_clip_max"], cfg["adv_clip_max"])
        # --- 2. policy-gradient step accumulated over all SDE steps
        model.train()
        opt.zero_grad()
        kls = []
        n_train = max(1, round(cfg["timestep_fraction"] * n_sde))
        train_steps = sorted(torch.randperm(n_sde, generator=gen)[:n_train].tolist())
        for j in train_steps:
            t = timesteps[j]
            v = velocity(model, states[j], t, pe, pooled, upe, upooled, cfg["guidance_scale"])
            mean, scale, std = sde_mean_std(states[j], v, sigmas, j, cfg["noise_level"])
            ratio = torch.exp(gaussian_log_prob(states[j + 1], mean, scale) - logps[j])
            clipped = torch.clamp(ratio, 1 - cfg["clip_range"], 1 + cfg["clip_range"])
            loss = torch.mean(torch.maximum(-adv * ratio, -adv * clipped))
            if beta > 0:
                with torch.no_grad(), model.disable_adapter():
                    v_ref = velocity(model, states[j], t, pe, pooled, upe, upooled, cfg["guidance_scale"])
                    mean_ref = sde_mean_std(states[j], v_ref, sigmas, j, cfg["noise_level"])[0]
                kl = (((mean - mean_ref) ** 2).mean(dim=(1, 2, 3)) / (2 * std**2)).mean()
                loss = loss + beta * kl
                kls.append(kl.item())
            (loss / n_train).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"])
        opt.step()
        flat = flat_share(rewards, words)
        history.append({"step": it, "reward": rewards.mean().item(), "kl": float(np.mean(kls)) if kls else 0.0,
                        "flat_groups": flat})
        log(f"grpo step {it} reward {rewards.mean():.3f} kl {history[-1]['kl']:.3g} flat groups {flat:.2f} "
            f"({time.time() - t0:.0f}s)")
        if it + 1 in snapshot_steps and it + 1 < steps:  # equals a run with steps = it + 1 (nothing depends on steps)
            save(out_dir.with_name(f"{out_dir.name}_it{it + 1}"), {**cfg, "steps": it + 1})
        if resume and it + 1 < steps:
            trained = {k: v for k, v in model.state_dict().items() if "lora_" in k}
            save_checkpoint(partial, {"model": trained, "opt": opt.state_dict(), "gen": gen.get_state(),
                                      "history": history, "step": it + 1, "seconds": time.time() - t0})
    metrics = save(out_dir, cfg)
    partial.unlink(missing_ok=True)
    return metrics


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else T.RL_DIR
    base = Path(sys.argv[2]) if len(sys.argv) > 2 else T.BASE_DIR
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    beta = float(sys.argv[4]) if len(sys.argv) > 4 else 0.04
    print(json.dumps(train_flowgrpo(beta, 0, n, out, base_dir=base), indent=1), flush=True)
