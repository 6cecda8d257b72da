"""Diffusion-DPO on the digits base: preference pairs of the base model's own samples, Bradley-Terry labels on the
classifier's log-odds of the prompted digit.

Loss (Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference Optimization", eq. 14;
as implemented in SalesforceAIResearch/DiffusionDPO @ main : train.py, ``--sdxl False`` branch):
    l_w = ||eps - eps_theta(x^w_t, t)||^2 mean over dims,  l_l likewise; r_w, r_l the same for the
    frozen reference (the base)
    loss = -log sigmoid( -beta/2 * ((l_w - r_w) - (l_l - r_l)) )
with the same t and eps for the winner and the loser. ``beta`` is the official ``beta_dpo`` (the KL
coefficient of the objective, with the 1/T of eq. 14 folded in, as the official code does).

Preference data (one offline round, like Pick-a-Pic in the paper but self-generated): ``n_per_prompt``
samples per digit prompt from the base with the evaluation sampler (DDIM ``data_steps`` = 20 steps, eta 1, CFG 2),
scored by the digit classifier's log-odds of the prompted digit, r = log(p / (1 - p)) (``digit_margin``; unbounded,
so it keeps ranking images that are already right, where p saturates at 1). Within each prompt ``pairs_per_prompt``
random pairs (i, j) are drawn and labelled by a Bradley-Terry model of the reward, P(i preferred) =
sigmoid((r_i - r_j) / ``bt_temperature``) (make_preference_pairs). With BT labels the population DPO objective
is the KL-regularised one whose optimum is p_base exp(r / (bt_temperature beta)) (Rafailov et al. 2023, sec. 4;
Wallace et al. 2023, sec. 4), the optimum RLG's theory is about; deterministic labels on separable pairs have no
finite optimum. The winner's and loser's final DDIM latents are the x_0 of the loss (what the VAE would encode
them to, up to its error). The data depend only on the base and ``data_seed``, so a beta/seed sweep trains on the
same pairs.
Full UNet weights are trained and saved as ``<out_dir>/unet`` (like mhdang/dpo-sd1.5-text2image-v1); with
``lora_rank`` > 0 a LoRA is trained, fused into ``<out_dir>/unet`` (``save="unet"``) or kept as a diffusers LoRA file
(``save="lora"``: ``<out_dir>/pytorch_lora_weights.safetensors``, 0.15 MB at rank 4, as the DDPO models ship).
Resumable: the trained weights, optimiser and random stream are saved to ``<out_dir>/dpo_state.pt`` every ``chunk``
steps and the same call continues from there, with the same result as an uninterrupted run.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import torch

from rlg.zoo import digits as D
from rlg.files import sha256_bytes, sha256_file
from rlg.zoo import resolve_zoo_id
from rlg.zoo.common import save_checkpoint, setup_torch, timer
from rlg.zoo.digits_rl import (GUIDANCE, NUM_STEPS, decode_uint8, digit_rewards, load_base, load_classifier,
                               sample_trajectories)

DEFAULTS = dict(beta=500.0, steps=600, lr=3e-5, batch_pairs=16, n_per_prompt=100, bt_temperature=1.0,
                pairs_per_prompt=100,
                data_seed=0, data_steps=NUM_STEPS, uncond_prob=0.0,
                lora_rank=0, save="unet", chunk=50)
STATE_FILE = "dpo_state.pt"
CACHE_DIR = Path.home() / ".cache" / "rlg-bench" / "zoo"


def make_preference_pairs(base_dir: str, data_seed: int = 0, n_per_prompt: int = DEFAULTS["n_per_prompt"],
                          bt_temperature: float = DEFAULTS["bt_temperature"], classifier: str = "zoo:digits_classifier",
                          data_steps: int = DEFAULTS["data_steps"],
                          pairs_per_prompt: int = DEFAULTS["pairs_per_prompt"], cache: bool = True, log=print
                          ) -> dict[str, torch.Tensor]:
    """{'x_w','x_l': (P, 4, 8, 8) final latents, 'digit': (P,), 'r_w','r_l': (P,) reward (log-odds),
    'p_w','p_l': (P,) digit_prob, 'base_reward', 'base_prob': (10 * n_per_prompt,) of every base sample}.

    Per digit prompt, ``pairs_per_prompt`` pairs of distinct samples are drawn uniformly (with replacement across
    pairs, as images recur in Pick-a-Pic) and ordered by a Bradley-Terry draw, P(i wins) = sigmoid((r_i - r_j) /
    bt_temperature); P = 10 * pairs_per_prompt. Cached under ~/.cache/rlg-bench/zoo by the base's weights hash and
    the arguments when ``cache``."""
    digest = sha256_file(Path(base_dir) / "unet" / "diffusion_pytorch_model.safetensors")
    clf_digest = sha256_bytes(str(resolve_zoo_id(classifier)).encode())[:6]
    key = (f"dpo-pairs-bt-{digest[:12]}-{clf_digest}-{data_seed}-{n_per_prompt}-{bt_temperature}-{data_steps}-"
           f"{pairs_per_prompt}.pt")
    if cache and (CACHE_DIR / key).exists():
        return torch.load(CACHE_DIR / key, weights_only=True)
    gen = setup_torch(data_seed)  # one thread (the machines are shared) before the first forward pass
    parts = load_base(base_dir)
    clf = load_classifier(classifier)
    digits = torch.arange(10).repeat_interleave(n_per_prompt)
    lat, probs, rewards = [], [], []
    for i in range(0, len(digits), 100):
        d = digits[i:i + 100]
        tr = sample_trajectories(parts, parts.unet, d, gen, num_steps=data_steps)
        x0 = tr["latents"][-1]
        lat.append(x0)
        p, r = digit_rewards(decode_uint8(parts, x0), d, clf)
        probs.append(p)
        rewards.append(r)
        log(f"dpo data: {i + len(d)}/{len(digits)} samples")
    lat, probs, rewards = torch.cat(lat), torch.cat(probs).float(), torch.cat(rewards).float()
    win, lose = [], []
    for d in range(10):
        idx = torch.nonzero(digits == d).flatten()
        i = torch.randint(0, len(idx), (pairs_per_prompt,), generator=gen)
        j = (i + torch.randint(1, len(idx), (pairs_per_prompt,), generator=gen)) % len(idx)  # j != i
        i, j = idx[i], idx[j]
        first = torch.rand(pairs_per_prompt, generator=gen) < torch.sigmoid((rewards[i] - rewards[j]) / bt_temperature)
        win.append(torch.where(first, i, j)); lose.append(torch.where(first, j, i))
    win, lose = torch.cat(win), torch.cat(lose)
    data = {"x_w": lat[win], "x_l": lat[lose], "digit": digits[win], "p_w": probs[win], "p_l": probs[lose],
            "r_w": rewards[win], "r_l": rewards[lose], "base_prob": probs, "base_reward": rewards}
    if cache:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        torch.save(data, CACHE_DIR / key)
    return data


def train_dpo(beta: float = DEFAULTS["beta"], seed: int = 0, steps: int = DEFAULTS["steps"],
              out_dir: Path | str = "digits_dpo", base: str = "zoo:digits_base", lr: float = DEFAULTS["lr"],
              batch_pairs: int = DEFAULTS["batch_pairs"], n_per_prompt: int = DEFAULTS["n_per_prompt"],
              bt_temperature: float = DEFAULTS["bt_temperature"], data_seed: int = DEFAULTS["data_seed"],
              classifier: str = "zoo:digits_classifier", data_steps: int = DEFAULTS["data_steps"],
              pairs_per_prompt: int = DEFAULTS["pairs_per_prompt"], uncond_prob: float = DEFAULTS["uncond_prob"],
              lora_rank: int = DEFAULTS["lora_rank"], save: str = DEFAULTS["save"], chunk: int = DEFAULTS["chunk"],
              keep_state: bool = False, cache: bool = True, log=print) -> dict[str, Any]:
    """Diffusion-DPO fine-tune of the base UNet. ``lora_rank`` 0 trains every weight; r > 0 trains a rank-r LoRA
    (alpha r) on the DDPO LoRA targets, the reference being the same network with the adapter off (diffusers'
    research_projects/diffusion_dpo trains a LoRA the same way). ``save``: "unet" writes ``<out_dir>/unet`` (full
    weights, a LoRA fused in); "lora" (needs ``lora_rank`` > 0) writes the adapter alone as
    ``<out_dir>/pytorch_lora_weights.safetensors`` (``rlg.zoo.train_digits_ddpo.save_lora``, rl_kind diffusers_lora).
    Resumes from ``<out_dir>/dpo_state.pt`` (written every ``chunk`` steps; removed at the end unless
    ``keep_state``, so the directory holds only the model); raises ValueError when that state was written with other
    arguments (``steps`` aside: a later call with more steps trains on), or for a bad ``save``/``chunk``.
    Deterministic given (seed, data_seed) on one machine and thread count. Returns the training config and log
    (``seconds`` and ``cpu_seconds`` of this process's training, summed over resumed chunks)."""
    if save not in ("unet", "lora"):
        raise ValueError(f"save={save!r}; use 'unet' (full weights) or 'lora' (the adapter file)")
    if save == "lora" and not lora_rank:
        raise ValueError("save='lora' needs lora_rank > 0 (a full-weight fine-tune has no adapter to save)")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 (steps between resume checkpoints), got {chunk}")
    args = dict(beta=beta, seed=seed, base=base, lr=lr, batch_pairs=batch_pairs, n_per_prompt=n_per_prompt,
                bt_temperature=bt_temperature, data_seed=data_seed, classifier=classifier, data_steps=data_steps,
                pairs_per_prompt=pairs_per_prompt, uncond_prob=uncond_prob, lora_rank=lora_rank)
    base_dir = resolve_zoo_id(base)
    with timer() as t_data:
        data = make_preference_pairs(base_dir, data_seed, n_per_prompt, bt_temperature, classifier, data_steps,
                                     pairs_per_prompt, cache=cache, log=log)
    gen = setup_torch(seed)
    parts = load_base(base_dir)
    if lora_rank:
        from peft import LoraConfig

        from rlg.zoo.train_digits_ddpo import LORA_TARGETS

        policy = parts.unet
        policy.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=LORA_TARGETS,
                                      init_lora_weights="gaussian"))
        params = [p for n, p in policy.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
    else:
        policy = copy.deepcopy(parts.unet).requires_grad_(True)
        params = list(policy.parameters())
    policy.train()

    def ref(*args, **kw):  # the base: a frozen copy, or the policy with its adapter off
        if not lora_rank:
            return parts.unet(*args, **kw)
        policy.disable_adapters()
        try:
            return policy(*args, **kw)
        finally:
            policy.enable_adapters()
    emb = D.encode_prompts((parts.tokenizer, parts.text_encoder), D.PROMPTS + [""])  # row 10: the empty prompt
    abar = parts.scheduler.alphas_cumprod
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    n_pairs = len(data["digit"])
    out = Path(out_dir)
    state_path = out / STATE_FILE
    history, start, seconds, cpu_seconds = [], 0, 0.0, 0.0
    if state_path.exists():
        st = torch.load(state_path, weights_only=True)
        if st["args"] != args:
            raise ValueError(f"{state_path} was written with {st['args']}; delete it or pass the same arguments")
        _load_trained(policy, st["weights"], lora_rank)
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        history, start, seconds, cpu_seconds = st["history"], st["step"], st["seconds"], st["cpu_seconds"]
        log(f"dpo: resumed at step {start} from {state_path}")
    t0, c0 = time.perf_counter(), time.process_time()
    with timer() as t_train:
        for step in range(start, steps):
            idx = torch.randint(0, n_pairs, (batch_pairs,), generator=gen)
            x0 = torch.cat([data["x_w"][idx], data["x_l"][idx]])
            # the empty prompt for a pair with probability uncond_prob (the official --proportion_empty_prompts),
            # so CFG's unconditional branch follows the preferences instead of drifting untrained
            rows = torch.where(torch.rand(batch_pairs, generator=gen) < uncond_prob, 10, data["digit"][idx])
            cond = emb[rows].repeat(2, 1, 1)
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
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % 50 == 0 or step == steps - 1:
                acc = float((inside > 0).float().mean())
                history.append({"step": step, "loss": round(loss.item(), 4), "implicit_acc": acc})
                log(f"dpo step {step} loss {loss.item():.4f} implicit_acc {acc:.2f}")
            if (step + 1) % chunk == 0 or step + 1 == steps:
                out.mkdir(parents=True, exist_ok=True)
                save_checkpoint(state_path, {"args": args, "weights": _trained_state(policy, lora_rank),
                                             "opt": opt.state_dict(), "gen": gen.get_state(), "history": history,
                                             "step": step + 1, "seconds": round(seconds + time.perf_counter() - t0, 1),
                                             "cpu_seconds": round(cpu_seconds + time.process_time() - c0, 1)})
    seconds = round(seconds + time.perf_counter() - t0, 1)
    cpu_seconds = round(cpu_seconds + time.process_time() - c0, 1)
    policy.eval()
    if save == "lora":
        from rlg.zoo.train_digits_ddpo import save_lora

        save_lora(policy, lora_rank, out)
    else:
        if lora_rank:  # fold W + (alpha / r) B A into W, then drop the adapter: a plain UNet2DConditionModel
            policy.fuse_lora(lora_scale=1.0)
            policy.unload_lora()
        policy.register_to_config(_name_or_path=f"{base}/unet")  # the zoo id, not this machine's path
        policy.save_pretrained(str(out / "unet"), safe_serialization=True)
    if not keep_state:
        state_path.unlink(missing_ok=True)
    return {"method": "Diffusion-DPO (Wallace et al. 2023)", "beta": beta, "kl_coefficient": beta, "seed": seed,
            "steps": steps, "lr": lr, "batch_pairs": batch_pairs, "base": base, "reward": "digit_margin",
            "labels": "Bradley-Terry on the log-odds", "n_per_prompt": n_per_prompt, "bt_temperature": bt_temperature,
            "data_seed": data_seed, "data_steps": data_steps,
            "pairs_per_prompt": pairs_per_prompt, "uncond_prob": uncond_prob, "lora_rank": lora_rank,
            **({"lora_alpha": lora_rank, "save": save} if lora_rank else {}),
            "n_pairs": int(n_pairs),
            "pairs_per_digit": torch.bincount(data["digit"], minlength=10).tolist(),
            "pair_digit_prob": {"winner": round(float(data["p_w"].mean()), 4),
                                "loser": round(float(data["p_l"].mean()), 4)},
            "pair_digit_margin": {"winner": round(float(data["r_w"].mean()), 4),
                                  "loser": round(float(data["r_l"].mean()), 4)},
            "base_sample_digit_margin": round(float(data["base_reward"].mean()), 4),
            "sampler": {"scheduler": "DDIM", "steps": NUM_STEPS, "eta": 1.0, "guidance": GUIDANCE},
            "base_sample_digit_prob": round(float(data["base_prob"].mean()), 4),
            "seconds": round(t_data["seconds"] + seconds, 1), "seconds_data": t_data["seconds"],
            "seconds_train": seconds, "cpu_seconds_train": cpu_seconds, "seconds_this_call": t_train["seconds"],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "history": history}


def _trained_state(policy, lora_rank: int) -> dict[str, torch.Tensor]:
    """The trained weights: the adapter's (PEFT keys) for a LoRA, else the whole UNet's."""
    if lora_rank:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(policy)
    return policy.state_dict()


def _load_trained(policy, state: dict[str, torch.Tensor], lora_rank: int) -> None:
    if lora_rank:
        from peft import set_peft_model_state_dict

        res = set_peft_model_state_dict(policy, state)
        if getattr(res, "unexpected_keys", None):
            raise ValueError(f"resume state has adapter keys the model lacks: {res.unexpected_keys[:3]}")
    else:
        policy.load_state_dict(state)
