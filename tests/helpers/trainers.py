"""Stand-in trainers with a known answer, called as rlg.kl_claim calls a zoo trainer ("module:function")."""

from __future__ import annotations

from pathlib import Path


def shifted_unet(beta: float, seed: int, out_dir: Path, base_dir: str, steps: int | None = None,
                 per_seed: float = 0.0) -> dict:
    """The base UNet at ``base_dir`` with every weight moved along one fixed random direction by 0.02 / beta (a
    larger move for a smaller beta, as a KL-regularised fine-tune would), times (1 + ``per_seed`` x seed): with the
    default 0 it ignores ``seed``; it ignores ``steps``."""
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(base_dir), subfolder="unet")
    g = torch.Generator().manual_seed(123)  # one direction for every beta and seed
    with torch.no_grad():
        for p in unet.parameters():
            p.add_((0.02 / beta) * (1 + per_seed * seed) * (p.std() if p.numel() > 1 else 1.0)
                   * torch.randn(p.shape, generator=g))
    unet.save_pretrained(str(Path(out_dir) / "unet"))
    return {"kl_coefficient": beta}


def bytes_lora(beta: float, seed: int, out_dir: Path, steps: int | None = None, fail_at: list | None = None) -> dict:
    """A stand-in "LoRA": ``pytorch_lora_weights.safetensors`` holding the text "beta seed". Appends "beta seed" to
    ``<out_dir>/../calls.txt`` (which models were trained, in order). ``fail_at`` [beta, seed]: writes a partial file
    and raises KeyboardInterrupt (a run cut short)."""
    out_dir = Path(out_dir)
    if fail_at is not None and [beta, seed] == list(fail_at):
        (out_dir / "pytorch_lora_weights.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt
    with open(out_dir.parent / "calls.txt", "a") as f:
        f.write(f"{beta!r} {seed}\n")
    (out_dir / "pytorch_lora_weights.safetensors").write_bytes(f"{beta!r} {seed}".encode())
    return {"history": [{"iter": 0, "reward_mean": -1.0}]}
