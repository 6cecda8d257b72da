"""What a paper preset costs on one GPU: FLOPs and parameters counted at the real sizes, GPU time ESTIMATED (no GPU
was lent), CPU time and memory MEASURED at the real sizes with random weights (benchmarks/real_shapes.py).

    python benchmarks/preset_costs.py            # the table of docs/presets.md, in seconds

Each preset is composed with Hydra as the CLI would (rlg/conf), and its images, network rows and bytes
are counted from it:

* images = prompts x samples x scales. Prompt counts of the shipped sets (FACTS §4): PickScore test 2048,
  GenEval 553, OCR test 1018, DrawBench 200, HPSv2 benchmark 3200.
* network rows per image = steps x rows per step. At w = 0 and w = 1 one model runs (the base or the RL
  model), at any other w both (RLGDenoiser); each with its CFG branch when CFG is on (FLUX.1-dev is
  guidance-distilled: one row per model). The 7-scale paper grid needs 24/7 = 3.4 rows per step against
  2 for a plain CFG generation (1.7x).
* FLOPs per row: COUNTED with torch.utils.flop_counter on the meta device for one denoiser row at the preset's
  resolution, the models built from their published configurations (benchmarks/real_configs; `python
  benchmarks/real_shapes.py --flops`): SD1.5 UNet 0.803 TFLOP at 512 px, SDXL UNet 6.761 at 1024 px, SD3.5-M
  MMDiT 2.443 at 512 px (77 + 256 text tokens), FLUX.1-dev 74.385 at 1024 px (512 T5 tokens); attention
  included. The former estimate (2 x params x tokens for the MMDiTs) overstated SD3.5-M 2.9x and FLUX 1.7x: each
  stream of a joint block has its own weights, so a token meets about half of them. Text encoders and the VAE
  are left out (a few % at these step counts).
* time = FLOPs / (312 TFLOP/s, an A100's dense fp16/bf16 peak, x MFU), for an MFU of 50% (low end of the
  range) and 25% (high end): still an ESTIMATE; benchmarks/gpu.sh measures it, not yet run.
* parameter counts (billions) COUNTED from the meta-device builds (tests/test_real_shapes.py checks them against
  the published figures): SD1.5 UNet 0.860, CLIP-L text 0.123, VAE 0.084; SDXL UNet 2.567, text encoders
  0.123 + 0.695; SD3.5-M MMDiT 2.243 + its 384x384 position table 0.226 (a buffer), CLIP-L + CLIP-G 0.818,
  T5-XXL 4.762; FLUX.1-dev transformer 11.901, T5-XXL 4.762, CLIP-L 0.123.
* CPU: MEASURED on this project's 2-core machine (one thread, bf16, random weights at the real sizes, 2 steps, two
  scales, the smallest resolution; process CPU seconds per padded row of the harness's 32-row CPU micro-batch),
  scaled to the preset's resolution by the counted FLOP ratio; peak resident memory of that run (SD3 without T5).
* disk = the hub files (fp16/bf16 variants, 2 bytes per parameter; the full-weight RL checkpoints as
  published: DPO and DDPO UNets in fp32) + PNGs (about 0.5 byte per pixel channel: 0.4 MB at 512 px).
* GPU memory = resident weights in the preset's dtype (both denoisers for a full-weight pair, one for a
  LoRA pair) + 3 GB for activations of one 16-row micro-batch (approx.; gpu.sh measures the peak).
"""

from __future__ import annotations

import argparse
from pathlib import Path

PROMPTS = {"flow_grpo_pickscore": 2048, "geneval": 553, "flow_grpo_ocr": 1018, "drawbench": 200, "hpsv2": 3200}
PEAK_TFLOPS, MFU = 312.0, (0.50, 0.25)  # A100 dense fp16/bf16; the MFU range of the estimate
ACTIVATIONS_GB = 3.0
# family: denoiser params (B), other pipeline params (B), TFLOP per denoiser row at the preset's size
# (benchmarks.real_models counts; FLOPs from `python benchmarks/real_shapes.py --flops`)
FAMILIES = {
    "sd15": (0.8595, 0.1231 + 0.0837, 0.803),
    "sdxl": (2.5675, 0.1231 + 0.6947 + 0.0837, 6.761),
    "sd35m": (2.2432 + 0.2265, 0.1237 + 0.6947 + 4.7623 + 0.0838, 2.443),
    "flux": (11.9014, 4.7623 + 0.1231 + 0.0838, 74.385),
}
# preset -> (peak resident GB, CPU seconds per denoiser row at the preset's resolution): benchmarks/real_shapes.py
# --preset <name> on the 2-core machine, one thread, bf16 (docs/performance.md, "Real shapes"); None: not run
MEASURED_CPU: dict[str, tuple[float, float] | None] = {
    "hp_sd15_dpo": (4.85, 5.1),
    "hp_sdxl_spo": (8.10, 44.9),
    "hpsv2_sdxl_spo": (8.10, 44.9),  # the same pair and sampler as hp_sdxl_spo (only the prompts differ)
    "hp_sd35m_flowgrpo": (7.87, 16.2),  # without T5 (4.76B more: +9.5 GB in bf16)
}
# pair name prefix -> (family, GB of the RL download: a full checkpoint as published, or a LoRA file)
PAIRS = {"sd15_dpo": ("sd15", 0.86 * 4), "sd15_spo_lora": ("sd15", 0.003), "sd15_ddpo": ("sd15", 0.86 * 4),
         "sdxl_dpo": ("sdxl", 2.57 * 4), "sdxl_spo_lora": ("sdxl", 0.35), "sd35m_flowgrpo": ("sd35m", 0.1),
         "flux_dancegrpo": ("flux", 12 * 2), "flux_mixgrpo": ("flux", 12 * 2)}
PRESETS = ["hp_sd15_dpo", "hp_sd15_spo", "hp_sdxl_dpo", "hp_sdxl_spo", "hpsv2_sdxl_spo", "hp_sd35m_flowgrpo",
           "geneval_sd35m", "ocr_sd35m", "compress_ddpo", "hp_flux_dancegrpo", "hp_flux_mixgrpo"]


def rows_per_step(scales: list[float], cfg: bool) -> float:
    """Mean denoiser rows per image and step over the grid: one model at w = 0 or 1, both elsewhere."""
    per = [(1 if w in (0.0, 1.0) else 2) * (2 if cfg else 1) for w in scales]
    return sum(per) / len(per)


def estimate(name: str, overrides: tuple[str, ...] = ()) -> dict:
    from hydra import compose, initialize_config_dir

    import rlg.harness.config  # noqa: F401  registers the schema

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "rlg" / "conf"),
                               version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}", *overrides])
    family, rl_gb = next(v for k, v in PAIRS.items() if cfg.pair.name.startswith(k))
    denoiser_b, other_b, tflop_row = FAMILIES[family]
    s = cfg.sampler
    cfg_on = family != "flux" and s.guidance_scale > 1
    n_prompts = PROMPTS[cfg.prompts.source]
    if cfg.prompts.max_prompts:
        n_prompts = min(n_prompts, cfg.prompts.max_prompts)
    images = n_prompts * cfg.prompts.samples_per_prompt * len(cfg.grid.scales)
    rows = images * s.num_inference_steps * rows_per_step(list(cfg.grid.scales), cfg_on)
    hours = [rows * tflop_row / (PEAK_TFLOPS * m) / 3600 for m in MFU]
    full = cfg.pair.rl_kind == "full"
    weights_gb = (denoiser_b + other_b) * 2 + rl_gb
    png_gb = images * s.height * s.width * 3 * 0.5 / 1e9
    gpu_gb = (denoiser_b * (2 if full else 1) + other_b) * 2 + ACTIVATIONS_GB
    return {"preset": name, "images": images, "steps": s.num_inference_steps, "rows_per_image": rows / images,
            "hours": hours, "weights_gb": weights_gb, "png_gb": png_gb, "gpu_gb": gpu_gb,
            "tflop_row": tflop_row, "cpu": MEASURED_CPU.get(name)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="*", default=PRESETS)
    ap.add_argument("--override", nargs="*", default=[],
                    help="Hydra overrides for every preset (e.g. sampler=flowgrpo_eval)")
    args = ap.parse_args()
    print("GPU time ESTIMATED (no GPU measured): counted FLOPs at an A100's 312 TFLOP/s x 50%..25% MFU; CPU column "
          "MEASURED at real sizes (benchmarks/real_shapes.py); see the module docstring")
    print("| preset | images | steps | denoiser rows / image | TFLOP / row (counted) | GPU time (est.) | "
          "disk: weights + PNGs | GPU memory (est.) | CPU, 1 thread: s / row, peak RSS (measured) |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name in args.presets:
        e = estimate(name, tuple(args.override))
        lo, hi = e["hours"]
        cpu = f"{e['cpu'][1]:.1f} s, {e['cpu'][0]:.1f} GB" if e["cpu"] else "not run"
        print(f"| `{name}` | {e['images']:,} | {e['steps']} | {e['rows_per_image']:.0f} | {e['tflop_row']:.2f} | "
              f"{lo:.1f}-{hi:.1f} h | {e['weights_gb']:.0f} GB + {e['png_gb']:.1f} GB | {e['gpu_gb']:.0f} GB | {cpu} |")


if __name__ == "__main__":
    main()
