"""Stand-in trainers with a known answer, called as rlg.kl_claim calls a zoo trainer ("module:function")."""

from __future__ import annotations

from pathlib import Path


def shifted_unet(beta: float, seed: int, out_dir: Path, base_dir: str, steps: int | None = None) -> dict:
    """The base UNet at ``base_dir`` with every weight moved along one fixed random direction by 0.02 / beta (a
    larger move for a smaller beta, as a KL-regularised fine-tune would); ignores ``seed`` and ``steps``."""
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(base_dir), subfolder="unet")
    g = torch.Generator().manual_seed(123)  # one direction for every beta and seed
    with torch.no_grad():
        for p in unet.parameters():
            p.add_((0.02 / beta) * (p.std() if p.numel() > 1 else 1.0) * torch.randn(p.shape, generator=g))
    unet.save_pretrained(str(Path(out_dir) / "unet"))
    return {"kl_coefficient": beta}
