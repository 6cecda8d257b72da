"""Benchmark `gpu`: the grid benchmark at realistic shapes on one GPU, in one table (benchmarks/gpu.sh).

Networks are the real diffusers classes with random weights and few layers, at realistic widths:
  sd3   SD3Transformer2DModel at SD3.5-M width (24 heads x 64 = 1536, joint dim 4096, pooled 2048,
        RMS qk-norm, a dual-attention first layer), --layers joint blocks, 512px (64x64 latents,
        1024 image + 333 text tokens)
  sd    UNet2DConditionModel at SD1.5 widths (320/640/1280/1280, cross-attention 768, 8 heads),
        one layer per block (SD1.5 has two), 512px (64x64 latents, 77 text tokens)
each as a full-weight pair (two networks) and a PEFT-LoRA pair (one network, rank-32 adapter on the
attention projections, as the Flow-GRPO / SPO adapters). The pipeline around the network is
simulated (CFG rows [uncond, cond], an Euler step); what is measured is the denoiser:
  harness   RLGDenoiser with a micro-batch size (auto = rlg.denoiser.resolve_micro_batch; 0 = one
            unpadded forward per model and step): all prompts x scales of a call in one call
  floor     the rows the grid needs, one prompt at a time, one unpadded forward per model and step
  official  each scale on its own: base and RL as separate 2-row CFG forwards, every step
For each: images/s, network rows (+ padding), peak memory, and model FLOP utilisation: FLOPs counted
with torch.utils.flop_counter.FlopCounterMode on one row per model (attention included), times the
rows the grid needs (padding is not useful work), over the time and the device's dense peak
(--peak-tflops, or a table of known GPUs). "bit-stable" says whether prompt 0's latents made alone
equal, bit for bit, those made in the full call (harness rows with a fixed micro-batch should).

Also fp32 vs bf16, torch.compile on/off (full pairs at a fixed micro-batch: one graph), and with
>= 2 GPUs a per-rank check (torchrun; see gpu.sh): each rank's harness run must put its denoiser
on cuda:LOCAL_RANK (its peak memory lands there and nowhere else).

    bash benchmarks/gpu.sh [OUT_DIR]                 # on a GPU machine: <= 10 minutes
    python benchmarks/gpu.py --dry-run               # CPU, tiny shapes, no timing claims (the tests run it)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

try:
    from benchmarks import _common as common
except ImportError:  # run as a script: python benchmarks/gpu.py
    import _common as common

GRID = common.PAPER_SCALES
RL_ADAPTER = "rl"
# Dense peak TFLOP/s (no sparsity) by device-name substring: (bf16/fp16 tensor cores, fp32 without TF32).
# Sources: NVIDIA H100/H200 (SXM) and A100 datasheets, L40S / RTX 4090 product pages.
PEAK_TFLOPS = {"H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5), "L40S": (362.0, 91.6),
               "4090": (165.0, 82.6)}


# ---------------------------------------------------------------------------------------------
# FLOP counting
# ---------------------------------------------------------------------------------------------
def _register_cpu_sdpa() -> None:
    """FlopCounterMode counts the CUDA SDPA kernels but not the CPU flash kernel; give it the same
    formula (4 * batch * heads * q_len * kv_len * head_dim: QK^T and AV)."""
    from torch.utils import flop_counter as fc

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in fc.flop_registry or op.default in fc.flop_registry:
        return

    @fc.register_flop_formula(op)
    def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of ``fn(*args, **kwargs)`` as torch.utils.flop_counter counts them (a multiply-add = 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_sdpa()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------
# Networks at realistic (or, for --dry-run, tiny) shapes
# ---------------------------------------------------------------------------------------------
@dataclass
class Shape:
    family: str  # sd | sd3
    latent: tuple[int, int, int]  # (channels, height, width) of one row
    text: tuple[int, int]  # (tokens, dim) of the encoder hidden states
    pooled: int | None  # pooled projection dim (sd3)
    config: dict = field(default_factory=dict)
    lora_targets: tuple[str, ...] = ()


def shape(family: str, dry_run: bool, layers: int) -> Shape:
    if family == "sd3":
        if dry_run:
            cfg = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
                       num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                       pooled_projection_dim=32, pos_embed_max_size=8, qk_norm="rms_norm")
            return Shape("sd3", (4, 8, 8), (8, 32), 32, cfg, ("to_q", "to_k", "to_v", "to_out.0"))
        cfg = dict(sample_size=64, patch_size=2, in_channels=16, out_channels=16, num_layers=layers,
                   attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                   caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                   qk_norm="rms_norm", dual_attention_layers=(0,))
        return Shape("sd3", (16, 64, 64), (333, 4096), 2048, cfg,
                     ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"))
    if dry_run:
        cfg = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8)
        return Shape("sd", (4, 8, 8), (8, 32), None, cfg, ("to_q", "to_k", "to_v", "to_out.0"))
    cfg = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
               layers_per_block=1, cross_attention_dim=768, attention_head_dim=8)
    return Shape("sd", (4, 64, 64), (77, 768), None, cfg, ("to_q", "to_k", "to_v", "to_out.0"))


def build_network(sh: Shape, seed: int, device, dtype):
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    torch.manual_seed(seed)
    cls = SD3Transformer2DModel if sh.family == "sd3" else UNet2DConditionModel
    with torch.device(device):  # initialised where it runs: seconds, not minutes, for ~0.5B parameters
        return cls(**sh.config).to(dtype=dtype).eval()


def build_pair(sh: Shape, kind: str, device, dtype, lora_rank: int):
    """(RLGDenoiser, base network, RL network or None). LoRA: random non-zero B, so RL != base."""
    from peft import LoraConfig

    from rlg.denoiser import RLGDenoiser

    base = build_network(sh, 0, device, dtype)
    if kind == "full":
        rl = build_network(sh, 1, device, dtype)
        return RLGDenoiser(base, rl), base, rl
    base.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=list(sh.lora_targets),
                                init_lora_weights=False), adapter_name=RL_ADAPTER)
    base.to(device, dtype).eval()
    return RLGDenoiser(base, rl_adapter=RL_ADAPTER), base, None


# ---------------------------------------------------------------------------------------------
# The simulated pipeline call and the three ways to run the grid
# ---------------------------------------------------------------------------------------------
class Workload:
    """Prompts x GRID images, ``steps`` Euler steps with CFG; inputs made once, on the device."""

    def __init__(self, sh: Shape, n_prompts: int, steps: int, device, dtype):
        g = torch.Generator().manual_seed(0)
        self.sh, self.n_prompts, self.steps, self.device, self.dtype = sh, n_prompts, steps, device, dtype
        self.noise = torch.randn((n_prompts, *sh.latent), generator=g).to(device, dtype)
        self.cond = torch.randn((n_prompts, *sh.text), generator=g).to(device, dtype)
        self.uncond = torch.randn((1, *sh.text), generator=g).to(device, dtype)
        self.pooled = None if sh.pooled is None else torch.randn((n_prompts, sh.pooled), generator=g).to(device, dtype)
        self.upooled = None if sh.pooled is None else torch.randn((1, sh.pooled), generator=g).to(device, dtype)
        self.timesteps = torch.linspace(1000.0, 1000.0 / steps, steps)

    def inputs(self, prompt_idx: torch.Tensor, x: torch.Tensor, t: float) -> dict:
        """The network's keyword arguments for CFG rows [uncond of every image, cond of every image]."""
        n = x.shape[0]
        emb = torch.cat([self.uncond.expand(n, -1, -1), self.cond[prompt_idx]])
        kw = {"encoder_hidden_states": emb}
        xin = torch.cat([x, x])
        if self.sh.family == "sd3":
            kw["pooled_projections"] = torch.cat([self.upooled.expand(n, -1), self.pooled[prompt_idx]])
            return {"hidden_states": xin, "timestep": torch.full((2 * n,), t, device=self.device), **kw}
        return {"sample": xin, "timestep": torch.tensor(t, device=self.device), **kw}

    def step(self, x, pred_uc, i: int):
        u, c = pred_uc.chunk(2)
        return x - (u + common.CFG * (c - u)) / self.steps


def run_harness(den, wl: Workload, micro_batch, prompts: list[int] | None = None) -> dict:
    """One call with every (prompt, scale) image, as RLGSampler makes it; returns rows and latents."""
    prompts = list(range(wl.n_prompts)) if prompts is None else prompts
    idx = torch.tensor([p for p in prompts for _ in GRID], device=wl.device)
    scales = [w for _ in prompts for w in GRID]
    x = wl.noise[idx]
    den.stats.reset()
    with torch.no_grad(), den.call(scales, wl.steps, micro_batch=micro_batch):
        for i, t in enumerate(wl.timesteps.tolist()):
            x = wl.step(x, den(**wl.inputs(idx, x, t), return_dict=False)[0], i)
    st = den.stats
    return {"rows": st.base_rows + st.rl_rows, "base_rows": st.base_rows, "rl_rows": st.rl_rows,
            "padded_rows": st.padded_rows, "latents": x}


@contextlib.contextmanager
def _tags(net, lora: bool, tags):
    with common.adapter_per_row(net, tags if lora else None):
        yield


def _net_call(net, wl: Workload, idx, x, t, lora: bool, tag: str):
    with _tags(net, lora, [tag] * (2 * x.shape[0])):
        return net(**wl.inputs(idx, x, t), return_dict=False)[0]


def run_floor(den, base, rl, wl: Workload) -> dict:
    """One prompt at a time: the rows the grid needs, one unpadded forward per model and step."""
    lora = rl is None
    rl_net = base if lora else rl
    w = torch.tensor(GRID, device=wl.device, dtype=wl.dtype).view(-1, *[1] * len(wl.sh.latent))
    need_b, need_r = [k for k, s in enumerate(GRID) if s != 1.0], [k for k, s in enumerate(GRID) if s != 0.0]
    rows = {"base_rows": 0, "rl_rows": 0}
    with torch.no_grad():
        for p in range(wl.n_prompts):
            x = wl.noise[p:p + 1].repeat(len(GRID), *[1] * len(wl.sh.latent))
            for i, t in enumerate(wl.timesteps.tolist()):
                xb, xr = (x[:1], x[:1]) if i == 0 else (x[need_b], x[need_r])
                ib = torch.full((xb.shape[0],), p, device=wl.device)
                ir = torch.full((xr.shape[0],), p, device=wl.device)
                if lora:  # base and RL rows in one forward, the adapter chosen per row
                    kb, kr = wl.inputs(ib, xb, t), wl.inputs(ir, xr, t)
                    both = {k: torch.cat([kb[k], kr[k]]) if kb[k].ndim else kb[k] for k in kb}
                    with _tags(base, True, ["__base__"] * 2 * len(xb) + [RL_ADAPTER] * 2 * len(xr)):
                        out = base(**both, return_dict=False)[0]
                    ob, orl = out[:2 * len(xb)], out[2 * len(xb):]
                else:
                    ob = _net_call(base, wl, ib, xb, t, False, "")
                    orl = _net_call(rl_net, wl, ir, xr, t, False, "")
                rows["base_rows"] += 2 * len(xb)
                rows["rl_rows"] += 2 * len(xr)
                ub, cb = ob.chunk(2)
                ur, cr = orl.chunk(2)
                gb, gr = ub + common.CFG * (cb - ub), ur + common.CFG * (cr - ur)
                if i == 0:
                    fb, fr = gb.expand_as(x), gr.expand_as(x)
                else:
                    fb = torch.zeros_like(x).index_copy(0, torch.tensor(need_b, device=wl.device), gb)
                    fr = torch.zeros_like(x).index_copy(0, torch.tensor(need_r, device=wl.device), gr)
                x = x - (fb + w * (fr - fb)) / wl.steps
    return {"rows": rows["base_rows"] + rows["rl_rows"], **rows, "padded_rows": 0}


def run_official(den, base, rl, wl: Workload) -> dict:
    """Each (prompt, scale) on its own: base and RL as separate 2-row CFG forwards at every step."""
    lora = rl is None
    rl_net = base if lora else rl
    n = 0
    with torch.no_grad():
        for p in range(wl.n_prompts):
            idx = torch.tensor([p], device=wl.device)
            for w in GRID:
                x = wl.noise[p:p + 1]
                for i, t in enumerate(wl.timesteps.tolist()):
                    ub, cb = _net_call(base, wl, idx, x, t, lora, "__base__").chunk(2)
                    ur, cr = _net_call(rl_net, wl, idx, x, t, lora, RL_ADAPTER).chunk(2)
                    gb, gr = ub + common.CFG * (cb - ub), ur + common.CFG * (cr - ur)
                    x = x - (gb + w * (gr - gb)) / wl.steps
                    n += 4
    return {"rows": n, "base_rows": n // 2, "rl_rows": n // 2, "padded_rows": 0}


# ---------------------------------------------------------------------------------------------
def row_flops(den, base, rl, wl: Workload) -> tuple[int, int]:
    """FLOPs of one CFG-free row through the base model and through the RL model."""
    lora = rl is None
    idx = torch.tensor([0], device=wl.device)
    kw = wl.inputs(idx, wl.noise[:1], 500.0)
    one = {k: (v[1:] if v.ndim and v.shape[0] == 2 else v) for k, v in kw.items()}  # the cond row only
    with _tags(base, lora, ["__base__"]):
        f_base = count_flops(base, **one, return_dict=False)
    with _tags(base if lora else rl, lora, [RL_ADAPTER]):
        f_rl = count_flops(base if lora else rl, **one, return_dict=False)
    return f_base, f_rl


def peak_tflops(device, dtype, override: float | None) -> float | None:
    if override:
        return override
    if not str(device).startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    for key, (half, fp32) in PEAK_TFLOPS.items():
        if key in name:
            return half if dtype in (torch.bfloat16, torch.float16) else fp32
    return None


@dataclass
class Result:
    model: str
    kind: str
    dtype: str
    compile: bool
    mode: str
    micro_batch: str
    images_per_s: float | None
    seconds: float | None
    rows: int
    padded_rows: int
    peak_mb: float | None
    mfu: float | None
    bit_stable: str
    shape_ok: bool


def bench(args, family: str, kind: str, dtype, compile_: bool, modes: list[tuple[str, object]], deadline: float):
    from rlg.denoiser import resolve_micro_batch

    device = torch.device(args.device)
    sh = shape(family, args.dry_run, args.layers)
    den, base, rl = build_pair(sh, kind, device, dtype, args.lora_rank)
    wl = Workload(sh, args.prompts, args.steps, device, dtype)
    f_base, f_rl = row_flops(den, base, rl, wl)
    if compile_:
        den.base = torch.compile(den.base)
        if den.rl is not None:
            den.rl = torch.compile(den.rl)
        base, rl = den.base, den.rl
    peak = peak_tflops(device, dtype, args.peak_tflops)
    n_images = args.prompts * len(GRID)
    clock = common.Clock(args.device)
    out = []
    for mode, mb in modes:
        if time.time() > deadline:
            print(f"# skipped (time budget): {family}/{kind} {dtype} compile={compile_} {mode} mb={mb}", flush=True)
            continue

        def once():
            if mode == "harness":
                return run_harness(den, wl, mb)
            return (run_floor if mode == "floor" else run_official)(den, base, rl, wl)

        first = once()  # warm-up (compilation, kernel selection); also the shape and bit-stability checks
        shape_ok = tuple(first.get("latents", wl.noise).shape[1:]) == sh.latent
        stable = "-"
        if mode == "harness" and mb != 0:
            alone = run_harness(den, wl, mb, prompts=[0])["latents"]
            stable = "yes" if torch.equal(alone, first["latents"][:len(GRID)]) else "NO"
        seconds = None
        peak_mb = None
        if not args.dry_run:
            times = []
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(args.repeats):
                t0 = clock.now()
                once()
                times.append(clock.now() - t0)
            seconds = statistics.median(times)
            if device.type == "cuda":
                peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        useful = first["base_rows"] * f_base + first["rl_rows"] * f_rl
        mfu = useful / seconds / (peak * 1e12) if seconds and peak else None
        label = ("-" if mode != "harness" else "0" if mb == 0
                 else f"{resolve_micro_batch('auto', device)} (auto)" if mb == "auto" else str(mb))
        r = Result(family, kind, str(dtype).replace("torch.", ""), compile_, mode, label,
                   n_images / seconds if seconds else None, seconds, first["rows"], first["padded_rows"], peak_mb,
                   mfu, stable, shape_ok)
        out.append(r)
        print(row(r), flush=True)
    del den, base, rl
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out, {"row_flops_base": f_base, "row_flops_rl": f_rl}


def row(r: Result) -> str:
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    return (f"| {r.model}/{r.kind} | {r.dtype} | {'on' if r.compile else 'off'} | {r.mode} | {r.micro_batch} | "
            f"{f(r.images_per_s, '.2f')} | {f(r.seconds, '.3f')} | {r.rows} | {r.padded_rows} | "
            f"{f(r.peak_mb, '.0f')} | {f(r.mfu and 100 * r.mfu, '.1f')} | {r.bit_stable} |")


def plan(args) -> list[tuple]:
    """(family, kind, dtype, compile, [(mode, micro_batch)]) in priority order (the budget may cut the tail)."""
    fp32, bf16 = torch.float32, torch.bfloat16
    core = [("harness", "auto"), ("harness", 0), ("floor", None), ("official", None)]
    sweep = [("harness", m) for m in args.micro_batches]
    out = []
    for family in args.models:
        for kind in ("full", "peft_lora"):
            out.append((family, kind, fp32 if args.dry_run else bf16, False, core + (sweep if kind == "full" else [])))
    if args.dry_run:  # one dtype: the shapes, row counts, FLOP counts and bit-stability are what it checks
        return out
    if not args.no_compile:
        for family in args.models:  # a fixed micro-batch is one shape: one compiled graph
            out.append((family, "full", bf16, True, [("harness", "auto"), ("harness", 0)]))
    for family in args.models:  # fp32 (no TF32 matmuls: PyTorch's default) is ~10x slower: the two key modes
        for kind in ("full", "peft_lora"):
            out.append((family, kind, fp32, False, [("harness", "auto"), ("floor", None)]))
    return out


def rank_check(args) -> None:
    """Under torchrun: run the harness (python run.py, in this process) on a tiny pair with device=auto,
    then report on which GPUs this process allocated memory. Rank r must use cuda:LOCAL_RANK only."""
    import runpy
    import tempfile

    local = int(os.environ.get("LOCAL_RANK", 0))
    root = args.run_root or tempfile.mkdtemp(prefix="rlg-rankcheck-")
    argv = ["run.py", "name=rankcheck", f"paths.root={root}", "device=auto", "sampler.num_inference_steps=2",
            "grid.scales=[0,1,2]", "evaluators.selected=[jpeg]", "tracker=none", "report.n_resamples=20"]
    old = sys.argv
    sys.argv = argv
    try:
        runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "run.py"),
                       run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        sys.argv = old
    peaks = {i: torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())}
    used = sorted(i for i, b in peaks.items() if b > 0)
    ok = used == [local]
    line = {"rank": int(os.environ.get("RANK", 0)), "local_rank": local, "gpus_with_memory": used, "ok": ok}
    print(json.dumps(line), flush=True)
    if args.json:
        with open(f"{args.json}.rank{local}.json", "w") as fh:
            json.dump(line, fh)
    if not ok:
        sys.exit(f"rank {local}: the harness allocated on cuda:{used}, expected only cuda:{local}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, one step, no timing")
    ap.add_argument("--device", default=None, help="default: cuda if available (cpu with --dry-run)")
    ap.add_argument("--models", default="sd3,sd", type=lambda v: v.split(","))
    ap.add_argument("--layers", type=int, default=4, help="SD3-like joint blocks")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--micro-batches", default="8,32,64", type=lambda v: [int(m) for m in v.split(",")],
                    help="extra micro-batch sizes swept for full pairs in bf16")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: a table)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="skip what would start after this many seconds")
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--rank-check", action="store_true", help="under torchrun: the per-rank device check")
    ap.add_argument("--run-root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rank_check:
        rank_check(args)
        return {}
    if args.dry_run:
        args.device = args.device or "cpu"
        args.prompts, args.steps, args.repeats, args.lora_rank = 2, 2, 1, 4
        args.micro_batches = [4]
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.dry_run:
        args.budget_s = float("inf")  # the dry run checks every configuration
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()  # casting random-weight networks to bf16 with .to() warns; nothing is loaded
    start = time.time()
    deadline = start + args.budget_s
    print(common.header("gpu benchmark" + (" (DRY RUN: tiny shapes, no timing)" if args.dry_run else ""),
                        args.device, torch.get_num_threads(), common.Clock(args.device).kind))
    if args.device.startswith("cuda"):
        print(f"# {torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU(s)")
    print(f"# grid {GRID}, {args.prompts} prompts, {args.steps} steps, CFG rows; sd3: {args.layers} joint blocks at "
          f"SD3.5-M width, sd: SD1.5 widths 1 layer/block; 512px; LoRA rank {args.lora_rank}; "
          f"medians of {args.repeats}")
    print("| pair | dtype | compile | mode | micro-batch | images/s | s | network rows | padded | peak MB | MFU % "
          "| bit-stable |")
    print("|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|")
    results, flops = [], {}
    for family, kind, dtype, compile_, modes in plan(args):
        res, fl = bench(args, family, kind, dtype, compile_, modes, deadline)
        results += res
        flops[f"{family}/{kind}"] = fl
    print(f"# total {time.time() - start:.0f} s")
    report = {"device": args.device, "results": [asdict(r) for r in results], "row_flops": flops,
              "dry_run": args.dry_run}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
