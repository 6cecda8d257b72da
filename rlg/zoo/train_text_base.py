"""Train a zoo SD3-like base pipeline from scratch: a small VAE, then a rectified-flow transformer.

The data come from a task module (``task``: rlg.zoo.text, the default, or rlg.zoo.geneval) with ``vae_data(n, seed)``
(uint8 (n, 32, 64, 3)), ``flow_data(n, seed)`` (images and int64 prompt indices), ``PROMPTS``,
``MAX_SEQUENCE_LENGTH`` (T5 tokens the prompts are encoded with) and ``TRAIN_TEXT_ENCODERS`` (False: the random text
encoders stay frozen, as the text task; True: trained with the transformer); the architecture is rlg.zoo.text's for
both. Resumable: with ``resume=True`` the VAE is saved to ``<out_dir>.partial/vae`` and the
transformer's state (weights, EMA, optimiser, generator, losses) to ``<out_dir>.partial/flow.pt`` every
``checkpoint_every`` steps; the same call continues from there (the result equals an uninterrupted run's).

Deterministic given the seed (one torch thread; data from a seeded numpy Generator). Run through
``python -m rlg.zoo.train text`` (or ``python -m rlg.zoo.train_text_base OUT_DIR``).

Flow matching as SD3 (Esser et al. 2024, rectified flow): x_t = (1 - sigma) x0 + sigma eps, the transformer
predicts v = eps - x0 at timestep 1000 sigma, sigma ~ logit-normal(0, 1); 10% of prompts are replaced by ""
so classifier-free guidance works with the pipeline's default negative prompt "". The weights kept are an
EMA (decay 0.995: a horizon of ~200 steps; 0.999 averaged in the early, unreadable weights of a 1000-2000 step run)
of the trained ones.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rlg.zoo import text as T
from rlg.zoo.common import save_checkpoint


def train_vae(seed: int, steps: int, n_images: int = 2048, batch: int = 16, log=print, task=T):
    """AutoencoderKL on the task's images; loss MSE(recon, x) + 1e-6 KL (a nearly deterministic autoencoder).
    Returns (vae with scaling/shift factors set, metrics)."""
    torch.manual_seed(seed)
    images = task.vae_data(n_images, seed + 101)
    x_all = T.to_tensor(images)
    vae = T.build_vae(seed).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(len(x_all), (batch,), generator=gen)
        x = x_all[idx]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        mse = torch.mean((rec - x) ** 2)
        loss = mse + 1e-6 * post.kl().mean()
        for g in opt.param_groups:  # cosine decay
            g["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step} mse {mse.item():.5f} ({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(x_all[i:i + 256]).latent_dist.mean for i in range(0, len(x_all), 256)])
        shift = float(z.mean())
        scale = float(1 / (z - shift).std())
        held = T.to_tensor(task.vae_data(256, seed + 202))
        rec = vae.decode(vae.encode(held).latent_dist.mean).sample
        held_mse = float(torch.mean((rec - held) ** 2))
    vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    return vae, {"vae_steps": steps, "vae_heldout_mse": held_mse, "vae_seconds": time.time() - t0,
                 "scaling_factor": scale, "shift_factor": shift}


def encode(pipe, prompts: list[str], max_sequence_length: int = T.MAX_SEQUENCE_LENGTH
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds (n, 16 + max_sequence_length, 64), pooled (n, 64)) exactly as the pipeline computes them,
    with gradients to the text encoders (for training them jointly with the transformer)."""
    pe, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None,
                                          do_classifier_free_guidance=False, max_sequence_length=max_sequence_length)
    return pe, pooled


@torch.no_grad()
def prompt_embeddings(pipe, prompts: list[str], max_sequence_length: int = T.MAX_SEQUENCE_LENGTH
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """encode() without gradients: (prompt_embeds (n, 16 + max_sequence_length, 64), pooled (n, 64))."""
    return encode(pipe, prompts, max_sequence_length)


def train_transformer(pipe, seed: int, steps: int, n_images: int = 8192, batch: int = 32, lr: float = 1e-3,
                      p_uncond: float = 0.1, ema_decay: float = 0.995, warmup: int = 100, log=print,
                      on_snapshot=None, snapshot_steps=(), task=T, checkpoint: Path | None = None,
                      checkpoint_every: int = 100):
    """Rectified-flow training of ``pipe.transformer`` on VAE latents of the task's images; returns (EMA model,
    metrics). When the task's ``TRAIN_TEXT_ENCODERS`` is true, the three text encoders are trained jointly (same
    optimiser, clipping and EMA; the prompts are encoded with gradients at every step) and the EMA model is a
    ModuleDict {"transformer", "text_encoder", "text_encoder_2", "text_encoder_3"}; the prompts are encoded with
    the task's ``MAX_SEQUENCE_LENGTH`` T5 tokens.

    ``on_snapshot(step, ema, metrics)`` is called after each step count in ``snapshot_steps``: nothing in the run
    depends on ``steps`` (constant LR after warm-up), so a snapshot at N equals the result of a run with N steps.
    ``checkpoint``: a file the state is saved to every ``checkpoint_every`` steps and resumed from if present."""
    torch.manual_seed(seed)
    images, words = task.flow_data(n_images, seed + 303)
    vae = pipe.vae
    with torch.no_grad():
        x = T.to_tensor(images)
        z = torch.cat([vae.encode(x[i:i + 256]).latent_dist.mean for i in range(0, len(x), 256)])
        z = (z - vae.config.shift_factor) * vae.config.scaling_factor
    msl, joint = task.MAX_SEQUENCE_LENGTH, task.TRAIN_TEXT_ENCODERS
    texts = list(task.PROMPTS) + [""]
    pe, pooled = prompt_embeddings(pipe, texts, msl)
    uncond = len(task.PROMPTS)
    words_t = torch.from_numpy(words)
    model = pipe.transformer.train()
    if joint:  # encoders stay in eval mode (T5's dropout off) but get gradients
        model = torch.nn.ModuleDict({"transformer": model, **{k: getattr(pipe, k).requires_grad_(True)
                                                             for k in TEXT_ENCODERS}})
    flow = model["transformer"] if joint else model
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    t0, losses, start, spent = time.time(), [], 0, 0.0
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        losses, start, spent = state["losses"], state["step"], state["seconds"]
        t0 -= spent
        log(f"flow: resumed at step {start} from {checkpoint}")

    def metrics(n: int) -> dict:
        return {"flow_steps": n, "flow_final_loss": float(np.mean(losses[max(0, n - 200):n])),
                "flow_seconds": time.time() - t0, "flow_batch": batch, "flow_lr": lr, "p_uncond": p_uncond,
                "ema_decay": ema_decay, "flow_warmup": warmup, "flow_images": n_images,
                "max_sequence_length": msl, "text_encoders_trained": bool(joint)}

    for step in range(start, steps):
        idx = torch.randint(len(z), (batch,), generator=gen)
        x0 = z[idx]
        cond = torch.where(torch.rand(batch, generator=gen) < p_uncond, uncond, words_t[idx])
        sigma = torch.sigmoid(torch.randn(batch, generator=gen))
        eps = torch.randn(x0.shape, generator=gen)
        s = sigma[:, None, None, None]
        xt = (1 - s) * x0 + s * eps
        if joint:  # all prompts once (41 short texts through tiny encoders), then index
            pe, pooled = encode(pipe, texts, msl)
        v = flow(hidden_states=xt, encoder_hidden_states=pe[cond], pooled_projections=pooled[cond],
                 timestep=sigma * 1000).sample
        loss = torch.mean((v - (eps - x0)) ** 2)
        warm = min(1.0, (step + 1) / warmup)
        for g in opt.param_groups:
            g["lr"] = lr * warm
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(ema_decay, (1 + step) / (10 + step))
            for pe_, p in zip(ema.parameters(), model.parameters()):
                pe_.lerp_(p, 1 - d)
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"flow step {step} loss {np.mean(losses[-100:]):.4f} ({time.time() - t0:.0f}s)")
        if on_snapshot is not None and step + 1 in snapshot_steps and step + 1 < steps:
            on_snapshot(step + 1, ema, metrics(step + 1))
        if checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save_checkpoint(checkpoint, {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                                         "gen": gen.get_state(), "losses": losses, "step": step + 1,
                                         "seconds": time.time() - t0})

    return ema, metrics(steps)


TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def train_base(seed: int, out_dir: Path, vae_steps: int = 300, flow_steps: int = 1000, log=print,
               snapshot_steps=(), task=T, resume: bool = False, **flow_kw) -> dict:
    """VAE, then transformer; saves a StableDiffusion3Pipeline (safetensors, hub layout) to ``out_dir``.

    ``snapshot_steps``: also save the pipeline after these transformer step counts to ``<out_dir>_flow<N>`` (for
    choosing the step count; each equals a run with ``flow_steps=N``). ``resume``: checkpoint into
    ``<out_dir>.partial`` and continue from it (removed when the run finishes). ``flow_kw``: train_transformer's
    hyper-parameters (n_images, batch, lr, ...)."""
    import shutil

    from diffusers import AutoencoderKL

    torch.set_num_threads(T.threads())
    t0 = time.time()
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    if resume and (partial / "vae" / "config.json").exists():
        vae = AutoencoderKL.from_pretrained(str(partial / "vae"))
        m_vae = json.loads((partial / "vae_metrics.json").read_text())
        log(f"vae: resumed from {partial / 'vae'}")
    else:
        vae, m_vae = train_vae(seed, vae_steps, log=log, task=task)
        if resume:
            vae.save_pretrained(str(partial / "vae"), safe_serialization=True)
            (partial / "vae_metrics.json").write_text(json.dumps(m_vae))
    pipe = T.assemble(T.build_transformer(seed), vae.requires_grad_(False),
                      T.build_text_encoders(seed, task.MAX_SEQUENCE_LENGTH))

    def save(ema, m_flow: dict, path: Path) -> dict:
        if task.TRAIN_TEXT_ENCODERS:  # the EMA ModuleDict of train_transformer
            encoders = {k: ema[k] if k in TEXT_ENCODERS else getattr(pipe, k) for k in T.ENCODER_KEYS}
            out = T.assemble(ema["transformer"], pipe.vae, encoders)
        else:
            out = T.assemble(ema, pipe.vae, {k: getattr(pipe, k) for k in T.ENCODER_KEYS})
        out.save_pretrained(path, safe_serialization=True)
        metrics = {**m_vae, **m_flow, "seconds": time.time() - t0}
        (path / "train_metrics.json").write_text(json.dumps(metrics, indent=1))
        return metrics

    def snapshot(n: int, ema, m_flow: dict) -> None:
        save(ema, m_flow, out_dir.with_name(f"{out_dir.name}_flow{n}"))

    ema, m_flow = train_transformer(pipe, seed, flow_steps, log=log, snapshot_steps=snapshot_steps,
                                    on_snapshot=snapshot, task=task,
                                    checkpoint=partial / "flow.pt" if resume else None, **flow_kw)
    metrics = save(ema, m_flow, out_dir)
    if resume:
        shutil.rmtree(partial)
    return metrics


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else T.BASE_DIR
    vs = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    fs = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    snaps = tuple(int(n) for n in sys.argv[4].split(",")) if len(sys.argv) > 4 else ()
    print(json.dumps(train_base(0, out, vae_steps=vs, flow_steps=fs, snapshot_steps=snaps), indent=1), flush=True)
