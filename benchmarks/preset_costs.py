"""What a paper preset costs on one GPU: an ESTIMATE from counts, not a measurement (no GPU was lent).

    python benchmarks/preset_costs.py            # the table of docs/presets.md, in seconds

Each preset is composed with Hydra as the CLI would (rlg/conf), and its images, network rows and bytes
are counted from it:

* images = prompts x samples x scales. Prompt counts of the shipped sets (FACTS §4): PickScore test 2048,
  GenEval 553, OCR test 1018, DrawBench 200, HPSv2 benchmark 3200.
* network rows per image = steps x rows per step. At w = 0 and w = 1 one model runs (the base or the RL
  model), at any other w both (RLGDenoiser); each with its CFG branch when CFG is on (FLUX.1-dev is
  guidance-distilled: one row per model). The 7-scale paper grid needs 24/7 = 3.4 rows per step against
  2 for a plain CFG generation (1.7x).
* FLOPs per row: SD1.5's UNet at 512 px does 339 GMACs per forward (BK-SDM, Kim et al. 2023, Table 1:
  0.68 TFLOP); SDXL's UNet is scaled from it by parameters x latent positions (approx.); the MMDiT
  transformers by 2 x params x tokens plus attention 4 x tokens^2 x width x layers (SD3.5-M at 512 px:
  1024 image + 333 text tokens, width 1536, 24 layers; FLUX.1-dev at 1024 px: 4096 + 512 tokens, width
  3072, 57 blocks). Text encoders and the VAE are left out (a few % at these step counts).
* time = FLOPs / (312 TFLOP/s, an A100's dense fp16/bf16 peak, x MFU), for an MFU of 50% (low end of the
  range) and 25% (high end). The project's own measure of this is benchmarks/gpu.sh, not yet run.
* parameter counts (billions) from the model cards / configs: SD1.5 UNet 0.86, CLIP-L text 0.123, VAE
  0.084; SDXL UNet 2.57, text encoders 0.123 + 0.695; SD3.5-M MMDiT 2.5, CLIP-L + CLIP-G 0.82, T5-XXL
  4.76; FLUX.1-dev transformer 12, T5-XXL 4.76, CLIP-L 0.123.
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
FAMILIES = {
    "sd15": (0.86, 0.123 + 0.084, 0.678),
    "sdxl": (2.57, 0.123 + 0.695 + 0.084, 0.678 * (2.57 / 0.86) * (128 * 128) / (64 * 64)),
    "sd35m": (2.5, 0.82 + 4.76 + 0.084, (2 * 2.5e9 * 1357 + 4 * 1357 ** 2 * 1536 * 24) / 1e12),
    "flux": (12.0, 4.76 + 0.123 + 0.084, (2 * 12e9 * 4608 + 4 * 4608 ** 2 * 3072 * 57) / 1e12),
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
            "hours": hours, "weights_gb": weights_gb, "png_gb": png_gb, "gpu_gb": gpu_gb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="*", default=PRESETS)
    ap.add_argument("--override", nargs="*", default=[],
                    help="Hydra overrides for every preset (e.g. sampler=flowgrpo_eval)")
    args = ap.parse_args()
    print("ESTIMATE (no GPU measured): A100 fp16/bf16 peak 312 TFLOP/s at 50%..25% MFU; see the module docstring")
    print("| preset | images | steps | denoiser rows / image | time (est.) | disk: weights + PNGs (est.) | "
          "GPU memory (est.) |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for name in args.presets:
        e = estimate(name, tuple(args.override))
        lo, hi = e["hours"]
        print(f"| `{name}` | {e['images']:,} | {e['steps']} | {e['rows_per_image']:.0f} | {lo:.1f}-{hi:.1f} h | "
              f"{e['weights_gb']:.0f} GB + {e['png_gb']:.1f} GB | {e['gpu_gb']:.0f} GB |")


if __name__ == "__main__":
    main()
