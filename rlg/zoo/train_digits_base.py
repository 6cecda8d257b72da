"""Train the digits base pipeline from scratch: the VAE, then the text-conditional UNet with its text encoder.

VAE: ``AutoencoderKL`` trained on the train split with an L1+L2 reconstruction loss and a small KL
term (weight ``kl_weight``; SD's VAE uses 1e-6 plus perceptual and GAN terms, which an 8x8-detail
data set does not need). Its ``scaling_factor`` is set to 1 / std of the training latents, as for SD1.5.

UNet: epsilon prediction on the scaled-linear DDPM schedule (diffusers' train_text_to_image.py
recipe): x_t = sqrt(abar_t) x_0 + sqrt(1-abar_t) eps, loss ||eps - eps_theta(x_t, t, c)||^2, with the
prompt dropped to "" with probability ``uncond_prob`` so classifier-free guidance works. The tiny
CLIPTextModel's weights get the same loss's gradient (LDM trains its text encoder tau_theta jointly with the
UNet the same way: Rombach et al. 2022, sec. 3.3), so c carries the digit.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from rlg.zoo import digits as D
from rlg.zoo.common import setup_torch, timer

UNET_STEPS = 2000


def train_vae(seed: int = 0, steps: int = 300, batch_size: int = 32, lr: float = 2e-3, kl_weight: float = 1e-5,
              log=print) -> tuple[Any, dict[str, Any]]:
    """Returns (vae with scaling_factor set, info dict)."""
    gen = setup_torch(seed)
    data = D.to_images(D.load_split()["train_x"])
    vae = D.build_vae(seed).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    with timer() as t:
        for step in range(steps):
            idx = torch.randint(0, len(data), (batch_size,), generator=gen)
            x = data[idx] * 2 - 1
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
            rec = vae.decode(z).sample
            loss_rec = (rec - x).abs().mean() + ((rec - x) ** 2).mean()
            loss = loss_rec + kl_weight * post.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 100 == 0 or step == steps - 1:
                log(f"vae step {step} rec {loss_rec.item():.4f}")
    vae.eval()
    with torch.no_grad():
        lat = torch.cat([vae.encode(data[i:i + 256] * 2 - 1).latent_dist.mean for i in range(0, len(data), 256)])
        test = D.to_images(D.load_split()["test_x"])
        rec = vae.decode(vae.encode(test * 2 - 1).latent_dist.mean).sample
        test_mse = float(((rec.clamp(-1, 1) + 1) / 2 - test).pow(2).mean())
    vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    return vae, {"seconds": t["seconds"], "steps": steps, "batch_size": batch_size, "lr": lr, "kl_weight": kl_weight,
                 "heldout_recon_mse": round(test_mse, 6), "scaling_factor": float(1.0 / lat.std())}


def train_unet(vae, tokenizer, text_encoder, seed: int = 0, steps: int = UNET_STEPS, batch_size: int = 48,
               lr: float = 1e-3, uncond_prob: float = 0.1, ema_decay: float = 0.999, log=print
               ) -> tuple[Any, Any, dict[str, Any]]:
    """Train the UNet and the text encoder together. Returns (EMA UNet, EMA text encoder, info).

    The text encoder (a stock tiny ``CLIPTextModel``) is trained by the same denoising loss: its prompt
    embeddings are recomputed at every step for the 11 prompts (10 digits and the empty one), so the digit token
    gets a meaning the UNet can read. A frozen random encoder left the prompts nearly indistinguishable (the
    previous base drew the prompted digit 35% of the time). The EMA covers both, so they stay matched."""
    gen = setup_torch(seed)
    split = D.load_split()
    images, labels = D.to_images(split["train_x"]), torch.as_tensor(split["train_y"])
    with torch.no_grad():
        post = vae.encode(images * 2 - 1).latent_dist
        mean, std = post.mean, post.std
    ids = tokenizer(D.PROMPTS + [""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids  # row 10 = unconditional
    sf = vae.config.scaling_factor
    noise_sched = D.train_scheduler()
    abar = noise_sched.alphas_cumprod
    unet = D.build_unet(seed).train()
    text_encoder.train().requires_grad_(True)
    models = torch.nn.ModuleList([unet, text_encoder])
    ema = copy.deepcopy(models).eval().requires_grad_(False)
    opt = torch.optim.AdamW(models.parameters(), lr=lr, weight_decay=1e-2)
    warm = 100
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item()))
    with timer() as t:
        for step in range(steps):
            idx = torch.randint(0, len(images), (batch_size,), generator=gen)
            x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * sf
            cond = labels[idx].clone()
            cond[torch.rand(batch_size, generator=gen) < uncond_prob] = 10
            tt = torch.randint(0, noise_sched.config.num_train_timesteps, (batch_size,), generator=gen)
            eps = torch.randn(x0.shape, generator=gen)
            a = abar[tt].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
            emb = text_encoder(ids)[0]
            pred = unet(xt, tt, encoder_hidden_states=emb[cond]).sample
            loss = ((pred - eps) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                d = min(ema_decay, (1 + step) / (10 + step))
                for pe, p in zip(ema.parameters(), models.parameters()):
                    pe.lerp_(p, 1 - d)
            if step % 100 == 0 or step == steps - 1:
                log(f"unet step {step} loss {loss.item():.4f}")
    return ema[0], ema[1], {"seconds": t["seconds"], "steps": steps, "batch_size": batch_size, "lr": lr,
                 "uncond_prob": uncond_prob, "ema_decay": ema_decay, "final_loss": round(loss.item(), 5)}


def train_base(out_dir: Path | str, seed: int = 0, vae_steps: int = 300, unet_steps: int = UNET_STEPS, log=print
               ) -> dict[str, Any]:
    """Train VAE, then UNet + text encoder, and save the StableDiffusionPipeline to ``out_dir`` (hub layout).
    Returns the config/info."""
    tokenizer = D.build_tokenizer()
    text_encoder = D.build_text_encoder(tokenizer, seed=0)
    vae, vae_info = train_vae(seed=seed, steps=vae_steps, log=log)
    vae.requires_grad_(False)
    unet, text_encoder, unet_info = train_unet(vae, tokenizer, text_encoder, seed=seed, steps=unet_steps, log=log)
    pipe = D.assemble_pipeline(vae, text_encoder, tokenizer, unet)
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    return {"seed": seed, "vae": vae_info, "unet": unet_info,
            "text_encoder": "tiny CLIPTextModel (hidden 32, 2 layers), trained with the UNet (EMA)",
            "seconds": round(vae_info["seconds"] + unet_info["seconds"], 1)}


if __name__ == "__main__":  # quick manual run: python -m rlg.zoo.train_digits_base OUT [unet_steps]
    import sys

    info = train_base(sys.argv[1], unet_steps=int(sys.argv[2]) if len(sys.argv) > 2 else UNET_STEPS)
    print(info)
