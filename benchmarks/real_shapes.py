"""Benchmark `real_shapes`: a paper preset end to end at the real model size, random weights (issue 35).

    python benchmarks/real_shapes.py --preset hp_sd15_dpo          # one preset (GBs of memory: run one at a time)
    python benchmarks/real_shapes.py --flops                       # FLOPs per denoiser row of every preset (meta)

The preset is composed with Hydra as the CLI would (rlg/conf). Its base model is built from the published
configuration (benchmarks/real_configs, benchmarks.real_models.real_pipeline) with random weights in --dtype
(bf16 by default: the CPU runs it), the RL checkpoint in its upstream form (benchmarks.real_models.UPSTREAM_ADAPTERS):
a second random denoiser for a full-weight kind, an adapter saved in the upstream layout and loaded by rlg.pairs' own
loader (load_diffusers_lora / load_peft_lora, via rlg.pairs.from_pipeline) for a LoRA kind. SD3 runs without T5
(text_encoder_3=None, tokenizer_3=None: diffusers' documented way; the prompt's T5 tokens are zeros, so the
transformer still sees 77 + 256 text tokens). Then one prompt, two scales (both models run at each), --steps
steps at the smallest size the pipeline accepts (--size to change), through rlg.grid.generate_grid with the
preset's own sampler settings.

Reported: parameters per component, peak resident memory (ru_maxrss), seconds per network evaluation (one forward
of one denoiser network: the full pair's base and RL nets, or the LoRA pair's one mixed-adapter forward; wall and
process-CPU seconds, the latter robust to other jobs on a shared machine with one thread) and CPU seconds per
row, and FLOPs per row counted with torch.utils.flop_counter on the meta device at the run size and at the
preset's size (no memory), so the measured time can be scaled to the preset's resolution by FLOPs.

Why a script and not a Hydra `debug=` preset: load_pair reads checkpoints from disk; a preset would first have to
write 2-24 GB of random weights in hub layout. The script builds them in memory and keeps the preset's sampler,
the upstream adapter layouts and rlg.pairs' adapter loaders.

FLUX.1-dev (12B transformer + 4.8B T5) does not fit a 24 GB machine in bf16: --preset hp_flux_* refuses unless
--allow-large; its structure and adapter mapping are checked on the meta device (tests/test_real_shapes.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

PRESETS = ["hp_sd15_dpo", "hp_sd15_spo", "compress_ddpo", "hp_sdxl_dpo", "hp_sdxl_spo", "hpsv2_sdxl_spo",
           "hp_sd35m_flowgrpo", "geneval_sd35m", "ocr_sd35m", "hp_flux_dancegrpo", "hp_flux_mixgrpo"]
# the smallest image side each pipeline accepts: the UNet's downsamplings (SD1.5: 3, SDXL: 2) or the
# transformer's patch (2; FLUX packs 2x2 latents) times the VAE's factor 8
MIN_SIZE = {"sd15": 64, "sdxl": 32, "sd35m": 16, "flux": 16}
SCALES = (0.5, 1.5)  # two scales, neither 0 nor 1: both models run at every step
LARGE = ("flux",)


def compose(preset: str, overrides: tuple[str, ...] = ()):
    """The preset's config as the CLI composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import rlg.harness.config  # noqa: F401  registers the schema

    conf_dir = Path(__file__).resolve().parents[1] / "rlg" / "conf"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return hydra_compose("config", overrides=[f"experiment={preset}", *overrides])


def model_of(cfg) -> str:
    from benchmarks import real_models as R

    return R.adapter_for_pair(cfg.pair.name, cfg.pair.rl_kind).model


# ---------------------------------------------------------------------------------------------
# FLOPs (meta device: shapes only)
# ---------------------------------------------------------------------------------------------
def row_inputs(model: str, size: int, dtype=torch.float32) -> dict:
    """Keyword inputs of one denoiser row (one image, one CFG branch) at ``size`` px, on the meta device.
    Text lengths as the pipelines make them: 77 CLIP tokens; SD3 77 + 256 (T5 zeros when T5 is left out);
    FLUX 512 T5 tokens."""
    lat = size // 8
    with torch.device("meta"):
        t = torch.ones(1, dtype=dtype)
        if model == "sd15":
            return dict(sample=torch.ones(1, 4, lat, lat, dtype=dtype), timestep=t,
                        encoder_hidden_states=torch.ones(1, 77, 768, dtype=dtype))
        if model == "sdxl":
            return dict(sample=torch.ones(1, 4, lat, lat, dtype=dtype), timestep=t,
                        encoder_hidden_states=torch.ones(1, 77, 2048, dtype=dtype),
                        added_cond_kwargs={"text_embeds": torch.ones(1, 1280, dtype=dtype),
                                           "time_ids": torch.ones(1, 6, dtype=dtype)})
        if model == "sd35m":
            return dict(hidden_states=torch.ones(1, 16, lat, lat, dtype=dtype), timestep=t,
                        encoder_hidden_states=torch.ones(1, 77 + 256, 4096, dtype=dtype),
                        pooled_projections=torch.ones(1, 2048, dtype=dtype))
        n = (lat // 2) ** 2
        return dict(hidden_states=torch.ones(1, n, 64, dtype=dtype), timestep=t, guidance=t,
                    encoder_hidden_states=torch.ones(1, 512, 4096, dtype=dtype),
                    pooled_projections=torch.ones(1, 768, dtype=dtype), img_ids=torch.ones(n, 3, dtype=dtype),
                    txt_ids=torch.ones(512, 3, dtype=dtype))


def row_flops(model: str, size: int) -> int:
    """FLOPs of one denoiser forward on one row at ``size`` px (torch.utils.flop_counter on the meta device:
    matmuls, convolutions and attention; a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks import real_models as R

    net = R.build(model, R.DENOISER[model])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(**row_inputs(model, size))
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
class NetClock:
    """Wall and CPU seconds and rows of every forward of the given networks (forward hooks)."""

    def __init__(self, nets):
        self.calls: list[dict] = []
        self._start: dict[int, tuple[float, float]] = {}
        for net in nets:
            net.register_forward_pre_hook(self._pre, with_kwargs=True)
            net.register_forward_hook(self._post, with_kwargs=True)

    @staticmethod
    def _sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def _pre(self, module, args, kwargs):
        self._sync()
        self._start[id(module)] = (time.perf_counter(), time.process_time())

    def _post(self, module, args, kwargs, out):
        self._sync()
        w0, c0 = self._start.pop(id(module))
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        self.calls.append({"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0,
                           "rows": int(x.shape[0])})


def run(preset: str, *, steps: int, size: int | None, dtype_name: str, allow_large: bool, prompt: str,
        device: str = "cpu", micro_batch: int | None = None) -> dict:
    from benchmarks import real_models as R
    from rlg.grid import generate_grid
    from rlg.harness.build import sampler_settings
    from rlg.pairs import from_pipeline, torch_dtype

    cfg = compose(preset)
    model = model_of(cfg)
    if model in LARGE and not allow_large:
        raise SystemExit(f"{preset}: FLUX.1-dev (12B transformer, 4.8B T5; x2 for a full-weight pair) does not fit "
                         "24 GB in bf16; its structure is checked on the meta device (tests/test_real_shapes.py). "
                         "Pass --allow-large on a machine with the memory")
    adapter = R.adapter_for_pair(cfg.pair.name, cfg.pair.rl_kind)
    dtype = torch_dtype(dtype_name)
    size = size or MIN_SIZE[model]
    skip = ("text_encoder_3", "tokenizer_3") if model == "sd35m" else ()
    t0 = time.perf_counter()
    pipe = R.real_pipeline(model, dtype=dtype, skip=skip, vae="vae_fp16_fix" if cfg.pair.vae else "vae")
    name = R.DENOISER[model]
    params = {comp: R.count(getattr(pipe, comp)) for comp in ("unet", "transformer", "vae", "text_encoder",
                                                                "text_encoder_2", "text_encoder_3")
              if getattr(pipe, comp, None) is not None}
    with tempfile.TemporaryDirectory() as tmp:
        if adapter.rl_kind == "full":
            rl = R.build(model, name, random=True, dtype=dtype, seed=1)
            params["rl_" + name] = R.count(rl)
            pair = from_pipeline(pipe, rl=rl, name=cfg.pair.name)
        else:
            saver = R.empty_weights(R.build(model, name, dtype=dtype))
            R.save_upstream_adapter(adapter, saver, Path(tmp))
            del saver
            target = Path(tmp) / adapter.weight_name if adapter.weight_name else Path(tmp)
            pair = from_pipeline(pipe, rl=str(target), name=cfg.pair.name)
            params["rl_lora"] = sum(p.numel() for n, p in getattr(pipe, name).base.named_parameters() if "lora_" in n)
        if device != "cpu":
            pair.pipe.to(device)
        build_s = time.perf_counter() - t0
        nets = [pair.denoiser.base] + ([pair.denoiser.rl] if pair.denoiser.rl is not None else [])
        clock = NetClock(nets)
        s = sampler_settings(cfg.sampler)
        kw = {f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.name != "extra"}
        kw.update(s.extra)
        kw.update(num_inference_steps=steps, height=size, width=size)
        if micro_batch is not None:  # 0: one unpadded forward per model and step
            kw["micro_batch"] = micro_batch
        t1 = time.perf_counter()
        generate_grid(pair, [prompt], SCALES, output="np", **kw)
        run_s = time.perf_counter() - t1
    calls = clock.calls
    rows = sum(c["rows"] for c in calls)
    flops_run, flops_preset = row_flops(model, size), row_flops(model, int(cfg.sampler.height))
    s_row = sum(c["cpu_s"] for c in calls) / rows  # process CPU seconds: robust to other jobs on a shared machine
    return {
        "preset": preset, "pair": cfg.pair.name, "rl_kind": adapter.rl_kind, "model": model, "dtype": dtype_name,
        "device": device, "threads": torch.get_num_threads(), "size": size, "preset_size": int(cfg.sampler.height),
        "steps": steps, "scales": list(SCALES), "micro_batch": kw.get("micro_batch"), "left_out": list(skip),
        "params": params,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "build_s": build_s,
        "generate_s": run_s, "network_evaluations": len(calls), "rows": rows,
        "s_per_evaluation": sum(c["wall_s"] for c in calls) / len(calls),
        "cpu_s_per_evaluation": sum(c["cpu_s"] for c in calls) / len(calls), "s_per_row": s_row,
        "row_gflop_run": flops_run / 1e9, "row_tflop_preset": flops_preset / 1e12,
        "s_per_row_preset_by_flops": s_row * flops_preset / flops_run,
    }


def cached(preset: str) -> bool:
    """Whether the preset's real checkpoints are in the local HF cache (gpu.sh then runs it for real, offline)."""
    from huggingface_hub import try_to_load_from_cache

    p = compose(preset).pair

    def has(ck, filename: str) -> bool:
        return ck is None or isinstance(try_to_load_from_cache(ck.id, filename, revision=ck.revision), str)

    rl = p.rl.weight_name or ("adapter_config.json" if p.rl_kind == "peft_lora" else
                              f"{p.rl.subfolder}/config.json" if p.rl.subfolder else "model_index.json")
    return has(p.base, "model_index.json") and has(p.rl, rl) and has(p.vae, "config.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=PRESETS)
    ap.add_argument("--flops", action="store_true", help="print each preset's FLOPs per denoiser row and exit")
    ap.add_argument("--cached", action="store_true", help="print the presets whose real checkpoints are in the HF "
                    "cache and exit")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--size", type=int, default=None, help="image side in px (default: the smallest accepted)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompt", default="a photo of a red cube on a blue sphere")
    ap.add_argument("--allow-large", action="store_true")
    ap.add_argument("--micro-batch", type=int, default=None,
                    help="rows per denoiser forward (default: the preset's; 0: unpadded, one forward per model and "
                    "step). SD3 at 16 px has 333 text tokens per row: the padded CPU micro-batch of 32 costs ~20 TFLOP")
    ap.add_argument("--json", type=Path, help="append the result as one JSON line")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.flops:
        seen = {}
        for p in PRESETS:
            cfg = compose(p)
            key = (model_of(cfg), int(cfg.sampler.height))
            if key not in seen:
                seen[key] = row_flops(*key) / 1e12
            print(f"{p}: {key[0]} at {key[1]} px: {seen[key]:.3f} TFLOP per denoiser row")
        return
    if args.cached:
        print(" ".join(p for p in PRESETS if cached(p)))
        return
    if not args.preset:
        ap.error("--preset, --flops or --cached")
    r = run(args.preset, steps=args.steps, size=args.size, dtype_name=args.dtype, allow_large=args.allow_large,
            prompt=args.prompt, device=args.device, micro_batch=args.micro_batch)
    print(json.dumps(r, indent=1))
    print(f"| `{r['preset']}` | {r['model']} {r['rl_kind']} | {sum(r['params'].values()) / 1e9:.2f} B | "
          f"{r['peak_rss_gb']:.1f} GB | {r['size']} px x{r['steps']} steps | {r['cpu_s_per_evaluation']:.2f} s "
          f"({r['rows'] / r['network_evaluations']:.0f} rows) | {r['row_tflop_preset']:.2f} TFLOP at "
          f"{r['preset_size']} px | {r['s_per_row_preset_by_flops']:.1f} s |")
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    sys.exit(main())
