"""Step-aware Preference Optimization (SPO; Liang et al. 2024, arXiv 2406.04314) on the digits base, a LoRA.

Semantics of the public code (RockeyCoss/SPO @ 27a8642 : spo_training_and_inference/train_scripts/train_spo.py,
spo/custom_diffusers/multi_sample_pipeline.py, spo/preference_models/compare_funcs.py, configs/basic_config.py),
reimplemented here:

Sampling (no gradient, the current policy, DDIM ``NUM_STEPS`` steps, eta 1, CFG ``GUIDANCE``): the first
``divert_start`` steps draw one x_{t-1} per prompt. From step ``divert_start`` on, ``k`` candidates x_{t-1}^1..k are
drawn from the same x_t (the same Gaussian p(x_{t-1} | x_t), k independent noises). Each candidate is judged by the
step-aware preference model on the policy's prediction of x_0 from it at the next timestep (at the last step, on the
candidate x_0 itself); the best and worst are the win and lose x_{t-1} of that step when the softmax of their two
scores differs by more than ``threshold`` (``preference_score_compare``); the trajectory continues from a uniformly
random candidate (not the winner), from which k new candidates are drawn.

Step-aware preference model (:class:`DigitStepPreference`): the zoo's digit classifier on the predicted x_0 decoded by
the VAE exactly as the pipeline decodes (uint8), scored by the log-odds of the prompted digit, ``digit_margin``
(rlg.evaluators.digits.log_odds). SPO fine-tunes PickScore to judge noisy steps; here the x_0 prediction is what
makes the judge step-aware. digit_margin is the reward of the Diffusion-DPO pair (zoo_digits_dpo), so the two
preference methods are compared on one reward; digit_prob would saturate at 1.000 on this base and rank nothing.
On log-odds the softmax threshold 0.3 means a score gap of 2 artanh(0.3) = 0.62 nats.

Loss, per recorded (x_t, x_{t-1}^w, x_{t-1}^l) with the policy's and the frozen base's CFG epsilon at x_t:
    log r = clamp(exp(log p_theta(x_{t-1} | x_t) - log p_ref(x_{t-1} | x_t)), 1 - eps, 1 + eps) (log of it)
    loss  = -log sigmoid(beta * (log r_w - log r_l))
with log p the DDIM Gaussian density AVERAGED over the latent's dimensions (SPO's ddim_step_with_logprob, like
ddpo-pytorch; rlg.zoo.digits_rl sums). beta 10, eps 0.1, threshold 0.3, divert_start 4, LoRA r 4 alpha 4, AdamW
weight decay 1e-4 and gradient clip 1.0 are SPO's SD1.5 defaults; k 4 is its SD1.5 checkpoint's
``num_sample_each_step``. The zoo's LoRA targets (rlg.zoo.train_digits_ddpo.LORA_TARGETS: attention, projections and
feed-forward) replace SPO's attention-only targets, and lr / batch / iterations are the zoo's CPU budget.

Saved as a diffusers-format LoRA, ``<out_dir>/pytorch_lora_weights.safetensors`` (as the SPO SD1.5 LoRA checkpoint),
loaded by rlg.pairs with rl_kind=diffusers_lora. Resumable: ``<out_dir>/spo_state.pt`` is written after every
``chunk`` iterations and the same call continues from it, with the same result as an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from rlg.zoo import digits as D
from rlg.zoo import resolve_zoo_id
from rlg.zoo.common import save_checkpoint, setup_torch
from rlg.zoo.digits_rl import (ETA, GUIDANCE, NUM_STEPS, cfg_eps, decode_uint8, digit_rewards, load_base,
                               load_classifier, step_coefficients)
from rlg.zoo.train_digits_ddpo import LORA_TARGETS, save_lora

DEFAULTS = dict(beta=10.0, clip_eps=0.1, k=4, divert_start=4, threshold=0.3, rank=4, lr=1e-3, batch_size=10,
                train_batch=32, steps=10, chunk=10, weight_decay=1e-4)
STATE_FILE = "spo_state.pt"
# The shipped model's recipe (train_spo keyword arguments beyond beta and seed). 10 iterations (100 trajectories,
# ~1,300 step pairs) at lr 1e-3: measured at sampling seed 0, 3 samples per prompt, the adapter after 5 iterations
# gave w = 1 - w = 0 +1.96 (7.4 paired SE) and w = 2 - w = 1 +1.43 (6.2 SE); after 10, +4.26 (7.5 SE) and +2.04
# (4.0 SE); after 20, +7.48 (6.9 SE) and +0.62 (0.8 SE, saturated) with KID 0.52 at w = 1 and 1.96 at w = 2.
SHIPPED = dict(steps=10)


class DigitStepPreference:
    """Step-aware preference model: ``__call__(x0_latents (N, 4, 8, 8) float32, digits (N,) long) -> (N,)`` float32
    log-odds of the prompted digit (digit_margin) of the classifier on the VAE-decoded uint8 images of the predicted
    x_0 (rlg.zoo.digits_rl.decode_uint8, digit_rewards)."""

    def __init__(self, parts, classifier):
        self.parts, self.classifier = parts, classifier

    @torch.no_grad()
    def __call__(self, x0: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
        return digit_rewards(decode_uint8(self.parts, x0), digits, self.classifier)[1].float()


def compare_candidates(scores: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPO's preference_score_compare. ``scores`` (k, B) of k candidates for B states -> (win (B,), lose (B,)
    candidate indices, valid (B,) bool): win = argmax, lose = argmin, valid where softmax([s_win, s_lose])[0] -
    softmax(...)[1] = tanh((s_win - s_lose) / 2) > ``threshold``."""
    order = torch.argsort(scores, dim=0, descending=True, stable=True)
    win, lose = order[0], order[-1]
    cols = torch.arange(scores.shape[1])
    pair = torch.stack([scores[win, cols], scores[lose, cols]]).softmax(0)
    return win, lose, pair[0] - pair[1] > threshold


def transition_log_prob(x_prev: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log N(x_prev; mean, sigma^2 I) AVERAGED over the latent's dimensions (SPO's ddim_step_with_logprob) -> (N,).
    ``x_prev``, ``mean`` (N, ...); ``sigma`` (N,) per-row standard deviations (> 0)."""
    s = sigma.view(-1, *([1] * (x_prev.dim() - 1)))
    lp = -((x_prev.detach() - mean) ** 2) / (2 * s**2) - torch.log(s) - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(1)


def spo_loss(logp_w: torch.Tensor, logp_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float,
             clip_eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPO's step loss (module docstring) on (N,) log-probs of the win and lose transitions under the policy and the
    reference -> (mean loss (), ratio_w (N,), ratio_l (N,)), the ratios clamped to [1 - clip_eps, 1 + clip_eps]
    (a clamped ratio passes no gradient)."""
    ratio_w = torch.clamp(torch.exp(logp_w - ref_w), 1 - clip_eps, 1 + clip_eps)
    ratio_l = torch.clamp(torch.exp(logp_l - ref_l), 1 - clip_eps, 1 + clip_eps)
    loss = -torch.nn.functional.logsigmoid(beta * torch.log(ratio_w) - beta * torch.log(ratio_l)).mean()
    return loss, ratio_w, ratio_l


@torch.no_grad()
def sample_step_pairs(parts, unet, pref, digits: torch.Tensor, gen: torch.Generator, k: int, divert_start: int,
                      threshold: float, num_steps: int = NUM_STEPS, eta: float = ETA, guidance: float = GUIDANCE
                      ) -> dict[str, torch.Tensor]:
    """SPO's multi-sample trajectories for ``digits`` (B,). Returns {'x_t': (P, 4, 8, 8), 'x_w', 'x_l': (P, 4, 8, 8),
    'step': (P,) DDIM step index i of the x_t -> x_{t-1} transition, 'digit': (P,), 'final_score': (k * B,) the
    preference scores of the last step's candidates (x_0 samples of the policy), 'valid_frac': ()} with P the
    transitions whose win/lose gap passed ``threshold``. Raises ValueError unless 0 <= divert_start < num_steps,
    k >= 2 and eta > 0."""
    if not 0 <= divert_start < num_steps or k < 2 or eta <= 0:
        raise ValueError(f"divert_start {divert_start} must lie in [0, {num_steps}), k {k} >= 2 and eta {eta} > 0")
    b = len(digits)
    emb = D.encode_prompts((parts.tokenizer, parts.text_encoder), D.PROMPTS + [""])
    cond, uncond = emb[digits], emb[10:11].expand(b, -1, -1)
    cond_k, uncond_k = cond.repeat(k, 1, 1), uncond.repeat(k, 1, 1)
    coefs = step_coefficients(parts.scheduler, num_steps, eta)
    abar = parts.scheduler.alphas_cumprod
    x = torch.randn((b, 4, D.LATENT_SIZE, D.LATENT_SIZE), generator=gen)
    for c in coefs[:divert_start]:
        mean = c["A"] * x + c["C"] * cfg_eps(unet, x, c["t"], cond, uncond, guidance)
        x = mean + c["sigma"] * torch.randn(x.shape, generator=gen)
    c = coefs[divert_start]
    mean = c["A"] * x + c["C"] * cfg_eps(unet, x, c["t"], cond, uncond, guidance)
    out = {key: [] for key in ("x_t", "x_w", "x_l", "step", "digit")}
    n_seen = 0
    for i in range(divert_start, num_steps):
        c = coefs[i]
        cand = mean.unsqueeze(0) + c["sigma"] * torch.randn((k, *x.shape), generator=gen)  # (k, B, ...) from one x_t
        flat = cand.flatten(0, 1)
        if i + 1 < num_steps:  # judge each candidate by the policy's x_0 prediction at the next timestep
            nxt = coefs[i + 1]
            eps = cfg_eps(unet, flat, nxt["t"], cond_k, uncond_k, guidance)
            a = abar[nxt["t"]]
            x0 = (flat - (1 - a).sqrt() * eps) / a.sqrt()
        else:
            x0 = flat
        scores = pref(x0, digits.repeat(k)).view(k, b)
        win, lose, valid = compare_candidates(scores, threshold)
        cols = torch.arange(b)
        for key, v in (("x_t", x), ("x_w", cand[win, cols]), ("x_l", cand[lose, cols]),
                       ("step", torch.full((b,), i)), ("digit", digits)):
            out[key].append(v[valid])
        n_seen += b
        if i + 1 < num_steps:  # continue from a random candidate, as SPO does
            pick = torch.randint(0, k, (b,), generator=gen)
            x = cand[pick, cols]
            mean = nxt["A"] * x + nxt["C"] * eps.view(k, b, *eps.shape[1:])[pick, cols]
    res = {key: torch.cat(v) for key, v in out.items()}
    res["final_score"] = scores.flatten()
    res["valid_frac"] = torch.tensor(len(res["step"]) / n_seen)
    return res


def train_spo(beta: float = DEFAULTS["beta"], seed: int = 0, steps: int = DEFAULTS["steps"],
              out_dir: Path | str = "digits_spo", base: str = "zoo:digits_base",
              classifier: str = "zoo:digits_classifier", lr: float = DEFAULTS["lr"],
              batch_size: int = DEFAULTS["batch_size"], train_batch: int = DEFAULTS["train_batch"],
              k: int = DEFAULTS["k"], divert_start: int = DEFAULTS["divert_start"],
              threshold: float = DEFAULTS["threshold"], clip_eps: float = DEFAULTS["clip_eps"],
              rank: int = DEFAULTS["rank"], weight_decay: float = DEFAULTS["weight_decay"],
              chunk: int = DEFAULTS["chunk"], num_steps: int = NUM_STEPS, keep_state: bool = True,
              snapshot_steps: tuple[int, ...] = (), log=print) -> dict[str, Any]:
    """SPO LoRA fine-tune of the digits base (module docstring); ``steps`` sampling iterations, each of
    ``batch_size`` prompts (a balanced cycle over the 10 digits) followed by one pass over its recorded transitions
    in shuffled minibatches of ``train_batch`` (one optimizer step each). Writes
    ``<out_dir>/pytorch_lora_weights.safetensors`` at the end and resumes from ``<out_dir>/spo_state.pt`` (written
    every ``chunk`` iterations, with the adapter so far; a later call with a larger ``steps`` trains on; removed at the
    end unless ``keep_state``, so the directory holds only the LoRA); raises ValueError when that state was written
    with other arguments (``steps`` aside). ``snapshot_steps``: also save the adapter after those iterations to
    ``<out_dir>/iter<k>`` (each equal to a run of k iterations). Deterministic given ``seed`` on one machine and
    thread count. Returns the training config and log (per iteration: pairs kept, their share, the mean preference
    score of the last step's candidates, loss, share of pairs with ratio_w > ratio_l, share of clamped ratio_w)."""
    from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict

    args = dict(beta=beta, seed=seed, steps=steps, base=base, classifier=classifier, lr=lr, batch_size=batch_size,
                train_batch=train_batch, k=k, divert_start=divert_start, threshold=threshold, clip_eps=clip_eps,
                rank=rank, weight_decay=weight_decay, num_steps=num_steps)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = setup_torch(seed)
    parts = load_base(resolve_zoo_id(base))
    pref = DigitStepPreference(parts, load_classifier(classifier))
    unet = parts.unet
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, init_lora_weights="gaussian"))
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    coefs = step_coefficients(parts.scheduler, num_steps, ETA)
    coef = {key: torch.tensor([c[key] for c in coefs], dtype=torch.float32) for key in ("A", "C", "sigma")}
    ts = torch.tensor([c["t"] for c in coefs])
    emb = D.encode_prompts((parts.tokenizer, parts.text_encoder), D.PROMPTS + [""])
    history, start, seconds = [], 0, 0.0
    state_path = out / STATE_FILE
    if state_path.exists():
        st = torch.load(state_path, weights_only=True)
        if st["args"] != {**args, "steps": st["args"]["steps"]}:
            raise ValueError(f"{state_path} was written with {st['args']}; delete it or pass the same arguments")
        set_peft_model_state_dict(unet, st["lora"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        history, start, seconds = st["history"], st["iter"], st["seconds"]
        log(f"spo: resumed at iteration {start} from {state_path}")

    def eps_at(x, step, digit):  # CFG epsilon with per-row timesteps
        n = len(x)
        u = unet(torch.cat([x, x]), ts[step].repeat(2), encoder_hidden_states=torch.cat(
            [emb[10:11].expand(n, -1, -1), emb[digit]])).sample
        e_u, e_c = u.chunk(2)
        return e_u + GUIDANCE * (e_c - e_u)

    t0 = time.perf_counter()  # wall seconds accumulate over resumed chunks
    for it in range(start, steps):
        digits = (torch.arange(batch_size) + it * batch_size) % 10
        unet.eval()
        data = sample_step_pairs(parts, unet, pref, digits, gen, k, divert_start, threshold, num_steps)
        unet.train()
        n = len(data["step"])
        perm = torch.randperm(n, generator=gen)
        losses, acc, clipped = [], [], []
        for s in range(0, n, train_batch):
            idx = perm[s:s + train_batch]
            x_t, step, digit = data["x_t"][idx], data["step"][idx], data["digit"][idx]
            shape = (-1, 1, 1, 1)
            eps = eps_at(x_t, step, digit)
            with torch.no_grad():
                unet.disable_adapters()
                eps_ref = eps_at(x_t, step, digit)
                unet.enable_adapters()
            mean = coef["A"][step].view(shape) * x_t + coef["C"][step].view(shape) * eps
            mean_ref = coef["A"][step].view(shape) * x_t + coef["C"][step].view(shape) * eps_ref
            sig = coef["sigma"][step]
            loss, r_w, r_l = spo_loss(transition_log_prob(data["x_w"][idx], mean, sig),
                                      transition_log_prob(data["x_l"][idx], mean, sig),
                                      transition_log_prob(data["x_w"][idx], mean_ref, sig),
                                      transition_log_prob(data["x_l"][idx], mean_ref, sig), beta, clip_eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            acc.append(float((r_w > r_l).float().mean()))
            clipped.append(float(((r_w - 1).abs() >= clip_eps - 1e-6).float().mean()))
        history.append({"iter": it, "pairs": n, "valid_frac": round(float(data["valid_frac"]), 4),
                        "final_score": round(float(data["final_score"].mean()), 4),
                        "loss": round(sum(losses) / max(len(losses), 1), 4),
                        "ratio_acc": round(sum(acc) / max(len(acc), 1), 4),
                        "clipped_w": round(sum(clipped) / max(len(clipped), 1), 4)})
        log(f"spo iter {it} {history[-1]}")
        if it + 1 in snapshot_steps:
            unet.eval()
            save_lora(unet, rank, out / f"iter{it + 1}")
        if (it + 1) % chunk == 0 or it + 1 == steps:
            unet.eval()
            save_lora(unet, rank, out)
            save_checkpoint(state_path, {"args": args, "lora": get_peft_model_state_dict(unet), "opt": opt.state_dict(),
                                         "gen": gen.get_state(), "history": history, "iter": it + 1,
                                         "seconds": round(seconds + time.perf_counter() - t0, 1)})
    seconds = round(seconds + time.perf_counter() - t0, 1)
    unet.eval()
    save_lora(unet, rank, out)
    if not keep_state:
        state_path.unlink(missing_ok=True)
    return {"method": "SPO (Liang et al. 2024), step-aware preference on DDIM eta=1 transitions", **args,
            "kl_coefficient": beta, "lora_alpha": rank, "lora_targets": LORA_TARGETS, "reward": "digit_margin",
            "preference_model": "digit classifier on the VAE-decoded x_0 prediction, log-odds (digit_margin)",
            "sampler": {"scheduler": "DDIM", "steps": num_steps, "eta": ETA, "guidance": GUIDANCE},
            "seconds": round(seconds, 1), "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "history": history}
