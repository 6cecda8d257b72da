"""The Diffusion-DPO trainer of the digits zoo (rlg.zoo.train_digits_dpo): a LoRA kept as a diffusers LoRA file
(what the KL-claim retrains ship) and resumption from its state file. Tiny budgets on the shipped base: 20 preference
samples of 2 DDIM steps, 2 pairs per step, no cache."""

from __future__ import annotations

import pytest
import torch

from rlg.zoo import WEIGHTS_DIR

TINY = dict(n_per_prompt=2, pairs_per_prompt=2, data_steps=2, batch_pairs=2, lora_rank=2, lr=1e-3, chunk=1,
            cache=False)


def _need(*models: str) -> None:
    missing = [m for m in models if not (WEIGHTS_DIR / m).exists()]
    if missing:
        pytest.skip(f"zoo weights {missing} absent from {WEIGHTS_DIR}; train them with `python -m rlg.zoo.train "
                    "digits --ship`")


def test_train_dpo_lora_file_resumes_to_the_uninterrupted_result_and_loads_as_a_diffusers_lora(tmp_path):
    """Two steps in one call equal a call of 1 step then a call of 2 (resumed from dpo_state.pt), tensor for tensor;
    the finished directory holds only the LoRA file (keep_state False), which the KL claim reads as a diffusers LoRA
    with one A and one B matrix per targeted layer; other arguments than the state's are refused before training."""
    _need("digits_base", "digits_classifier")
    from safetensors.torch import load_file

    from rlg.kl_claim import _rl_checkpoint
    from rlg.zoo.train_digits_dpo import STATE_FILE, train_dpo

    quiet = lambda m: None  # noqa: E731
    once = train_dpo(beta=500.0, seed=3, steps=2, out_dir=tmp_path / "once", save="lora", log=quiet, **TINY)
    first = train_dpo(beta=500.0, seed=3, steps=1, out_dir=tmp_path / "twice", save="lora", keep_state=True,
                      log=quiet, **TINY)
    assert (tmp_path / "twice" / STATE_FILE).exists() and [h["step"] for h in first["history"]] == [0]
    again = train_dpo(beta=500.0, seed=3, steps=2, out_dir=tmp_path / "twice", save="lora", log=quiet, **TINY)
    assert again["history"] == once["history"] and [h["step"] for h in again["history"]] == [0, 1]
    a = load_file(str(tmp_path / "once" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "twice" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and len(a) == 96 and all(torch.equal(a[k], b[k]) for k in a)
    assert any(bool(v.abs().sum()) for k, v in a.items() if "lora_B" in k)  # trained: B starts at 0
    for d in ("once", "twice"):
        assert sorted(p.name for p in (tmp_path / d).iterdir()) == ["pytorch_lora_weights.safetensors"]
    assert _rl_checkpoint(tmp_path / "once")[1] == "diffusers_lora"
    assert once["save"] == "lora" and once["lora_alpha"] == 2 and once["cpu_seconds_train"] > 0

    train_dpo(beta=500.0, seed=3, steps=1, out_dir=tmp_path / "other", save="lora", keep_state=True, log=quiet,
              **TINY)
    with pytest.raises(ValueError, match=f"{STATE_FILE} was written with"):
        train_dpo(beta=250.0, seed=3, steps=2, out_dir=tmp_path / "other", save="lora", log=quiet, **TINY)


def test_train_dpo_refuses_a_bad_save_before_any_work(tmp_path):
    from rlg.zoo.train_digits_dpo import train_dpo

    with pytest.raises(ValueError, match="save='lora' needs lora_rank > 0"):
        train_dpo(save="lora", lora_rank=0, out_dir=tmp_path)
    with pytest.raises(ValueError, match="use 'unet'.*or 'lora'"):
        train_dpo(save="adapter", lora_rank=4, out_dir=tmp_path)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        train_dpo(chunk=0, out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
