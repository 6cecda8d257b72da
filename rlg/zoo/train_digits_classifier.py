"""Train the digit classifier (reward of the digits zoo) on the train split; test on the held-out split.

Augmentation: random translations of up to 2 px and random contrast, so that generated (VAE-decoded)
digits are read like scans. The held-out features' mean and covariance are saved as the reference
of the Fréchet distance (``rlg.evaluators.digits``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlg.evaluators.digits import DigitClassifier
from rlg.zoo import digits as D
from rlg.zoo.common import setup_torch, timer


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    shifts = torch.randint(-2, 3, (n, 2), generator=gen)
    out = torch.stack([torch.roll(x[i], shifts=(int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2)) for i in range(n)])
    ink = 1 - out  # roll wraps ink round the border rarely: digits have empty margins
    contrast = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen)
    return (1 - (ink * contrast).clamp(0, 1))


def train_classifier(out_dir: Path | str, seed: int = 0, steps: int = 1500, batch_size: int = 64, lr: float = 2e-3,
                     log=print) -> dict[str, Any]:
    """Train, save to ``out_dir`` (model.safetensors, config.json, reference_stats.safetensors); returns info."""
    gen = setup_torch(seed)
    split = D.load_split()
    x, y = D.to_images(split["train_x"]), torch.as_tensor(split["train_y"])
    tx, ty = D.to_images(split["test_x"]), torch.as_tensor(split["test_y"])
    model = DigitClassifier().train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    with timer() as t:
        for step in range(steps):
            idx = torch.randint(0, len(x), (batch_size,), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(_augment(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 500 == 0 or step == steps - 1:
                log(f"classifier step {step} loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        logits = model(tx)
        acc = float((logits.argmax(1) == ty).float().mean())
        p_true = float(logits.softmax(1)[torch.arange(len(ty)), ty].mean())
        feats = model.features(tx).double()
    reference = {"mean": feats.mean(0), "cov": torch.cov(feats.T)}
    model.save(out_dir, reference)
    return {"seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr, "seconds": t["seconds"],
            "heldout_accuracy": round(acc, 4), "heldout_mean_prob_true": round(p_true, 4), "n_heldout": len(ty)}
