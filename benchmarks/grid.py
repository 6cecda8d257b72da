"""Benchmark `grid`: sample a 7-scale RLG grid at the cost of the network evaluations it needs.

Compares, on tiny SD1.5-like and SD3-like pairs (full-weight and PEFT LoRA), 8 prompts, 20 steps:
  harness   rlg-bench's RLGSampler on the stock pipeline: micro_batch=null (one fused forward per
            model and step), harness_mb2 (the default: bit-identical images whatever the batch), _mb8
  floor     a hand-written loop that makes only the network calls the grid needs, nothing else
            (text encoded once per prompt, the shared first step once, w=0 / w=1 one model each)
  official  the official RLG approach: each scale on its own, 4 network evaluations per step
            (base and RL as separate CFG forwards), as in the official SD3 script

Each (setup, mode) runs in its own process (clean peak memory), `--repeats` times; medians are
reported. Run by hand:  python benchmarks/grid.py [--repeats 3] [--device cuda] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCALES = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
PROMPTS = [f"a photo of object number {i} on a table, studio light" for i in range(8)]
SEED, CFG, SIZE = 0, 4.5, 32
SETUPS = [("sd", "full"), ("sd", "peft_lora"), ("sd3", "full"), ("sd3", "peft_lora")]
MODES = ["harness", "harness_mb2", "harness_mb8", "floor", "official"]  # harness_mbN: sampler.micro_batch=N


def _load(family, kind, device, dtype, micro_batch=None):
    import torch

    from rlg.pairs import load_pair, tiny_spec

    spec = tiny_spec(family, kind)
    spec.dtype = dtype
    pair = load_pair(spec, micro_batch=micro_batch)
    pair.pipe.to(torch.device(device))
    return pair


def _sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_harness(pair, steps, device, compile_):
    from rlg.sampling import RLGSampler, SamplerSettings, WorkItem

    if compile_:
        _compile(pair)
    sampler = RLGSampler(pair, SamplerSettings(num_inference_steps=steps, guidance_scale=CFG, height=SIZE, width=SIZE))
    pair.denoiser.stats.reset()
    for p, prompt in enumerate(PROMPTS):
        sampler.generate([WorkItem(p, prompt, 0, SEED, w) for w in SCALES])
    st = pair.denoiser.stats
    return st.base_rows + st.rl_rows + st.padded_rows


def _compile(pair):
    import torch

    pair.denoiser.base = torch.compile(pair.denoiser.base)
    if pair.denoiser.rl is not None:
        pair.denoiser.rl = torch.compile(pair.denoiser.rl)


class _Loop:
    """What both hand-written loops share: prompt encoding, noise, one network call, decoding."""

    def __init__(self, pair, steps, device):
        import torch

        self.pair, self.steps, self.device = pair, steps, torch.device(device)
        self.pipe = pair.pipe
        self.sd3 = pair.denoiser_name == "transformer"
        self.net = pair.denoiser.base
        self.rows = 0

    def encode(self, prompt):
        if self.sd3:
            pe, npe, pp, npp = self.pipe.encode_prompt(prompt, prompt, prompt, device=self.device,
                                                       do_classifier_free_guidance=True, negative_prompt="",
                                                       negative_prompt_2="", negative_prompt_3="")
            return pe, npe, pp, npp
        pe, npe = self.pipe.encode_prompt(prompt, self.device, 1, True, negative_prompt="")
        return pe, npe, None, None

    def noise(self, p):
        import torch

        from rlg.sampling import noise_seed

        g = torch.Generator().manual_seed(noise_seed(SEED, p, 0))
        ch = self.net.config.in_channels
        n = SIZE // self.pipe.vae_scale_factor
        return torch.randn((1, ch, n, n), generator=g).to(self.device, self.net.dtype)

    def call(self, model, x, t, emb, pooled, tags=None):
        """One forward over the rows of x (CFG rows included); tags select LoRA per row."""
        import torch

        self.rows += x.shape[0]
        with self.pair.denoiser._adapter_rows(tags):
            if self.sd3:
                return model(hidden_states=x, timestep=t.expand(x.shape[0]).to(self.device), encoder_hidden_states=emb,
                             pooled_projections=pooled, return_dict=False)[0]
            return model(x, t.to(self.device), encoder_hidden_states=emb, return_dict=False)[0]

    def scheduler(self):
        import copy

        s = copy.deepcopy(self.pipe.scheduler)
        s.set_timesteps(self.steps, device=self.device)
        return s

    def decode(self, x):
        vae = self.pipe.vae
        shift = (vae.config.shift_factor or 0.0) if self.sd3 else 0.0
        z = x / vae.config.scaling_factor + shift
        img = vae.decode(z.to(vae.dtype), return_dict=False)[0]
        return ((img / 2 + 0.5).clamp(0, 1) * 255).round().byte().cpu()


def run_floor(pair, steps, device, compile_):
    import torch

    loop = _Loop(pair, steps, device)
    lora = pair.denoiser.is_lora_pair
    base_net, rl_net = pair.denoiser.base, (pair.denoiser.rl or pair.denoiser.base)
    w = torch.tensor(SCALES, device=loop.device).view(-1, 1, 1, 1)
    need_b, need_r = w.flatten() != 1, w.flatten() != 0
    with torch.no_grad():
        for p, prompt in enumerate(PROMPTS):
            pe, npe, pp, npp = loop.encode(prompt)
            sched = loop.scheduler()
            x = loop.noise(p).repeat(len(SCALES), 1, 1, 1)
            for i, t in enumerate(sched.timesteps):
                # rows needing each model (step 0: all scales share the input, so one row each)
                xb, xr = (x[:1], x[:1]) if i == 0 else (x[need_b], x[need_r])
                nb, nr = xb.shape[0], xr.shape[0]

                def cfg_rows(xs, n):
                    return (torch.cat([xs, xs]), torch.cat([npe.expand(n, -1, -1), pe.expand(n, -1, -1)]),
                            None if pp is None else torch.cat([npp.expand(n, -1), pp.expand(n, -1)]))

                (ib, eb, qb), (ir, er, qr) = cfg_rows(xb, nb), cfg_rows(xr, nr)
                if lora:  # one forward, per-row adapter
                    out = loop.call(base_net, torch.cat([ib, ir]), t, torch.cat([eb, er]),
                                    None if qb is None else torch.cat([qb, qr]),
                                    ["__base__"] * 2 * nb + ["rl"] * 2 * nr)
                    ob, orl = out[: 2 * nb], out[2 * nb:]
                else:
                    ob, orl = loop.call(base_net, ib, t, eb, qb), loop.call(rl_net, ir, t, er, qr)
                ub, cb = ob.chunk(2)
                ur, cr = orl.chunk(2)
                pb, pr = ub + CFG * (cb - ub), ur + CFG * (cr - ur)
                full_b = pb.expand(len(SCALES), -1, -1, -1) if i == 0 else torch.zeros_like(x).index_copy(
                    0, torch.nonzero(need_b).flatten(), pb)
                full_r = pr.expand(len(SCALES), -1, -1, -1) if i == 0 else torch.zeros_like(x).index_copy(
                    0, torch.nonzero(need_r).flatten(), pr)
                pred = full_b + w * (full_r - full_b)
                x = sched.step(pred, t, x, return_dict=False)[0]
            torch.cat([loop.decode(x[k:k + 1]) for k in range(len(SCALES))])
    return loop.rows


def run_official(pair, steps, device, compile_):
    import torch

    loop = _Loop(pair, steps, device)
    lora = pair.denoiser.is_lora_pair
    base_net, rl_net = pair.denoiser.base, (pair.denoiser.rl or pair.denoiser.base)
    with torch.no_grad():
        for p, prompt in enumerate(PROMPTS):
            for w in SCALES:  # each scale its own generation (the official script is run per scale)
                pe, npe, pp, npp = loop.encode(prompt)
                sched = loop.scheduler()
                x = loop.noise(p)
                emb = torch.cat([npe, pe])
                pooled = None if pp is None else torch.cat([npp, pp])
                for t in sched.timesteps:
                    xi = torch.cat([x, x])
                    ob = loop.call(base_net, xi, t, emb, pooled, ["__base__"] * 2 if lora else None)
                    orl = loop.call(rl_net, xi, t, emb, pooled, ["rl"] * 2 if lora else None)
                    ub, cb = ob.chunk(2)
                    ur, cr = orl.chunk(2)
                    pb, pr = ub + CFG * (cb - ub), ur + CFG * (cr - ur)
                    x = sched.step(pb + w * (pr - pb), t, x, return_dict=False)[0]
                loop.decode(x)
    return loop.rows


def minimum_rows(steps: int) -> int:
    """Network rows a 7-scale grid needs per prompt: the shared first step (2 models x 2 CFG rows),
    then w=0 and w=1 one model each, the other scales both."""
    per_step = 2 * (1 + 1 + 2 * (len(SCALES) - 2))
    return len(PROMPTS) * (4 + (steps - 1) * per_step)


def single(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    micro_batch = int(args.mode.split("_mb")[1]) if "_mb" in args.mode else None
    pair = _load(args.family, args.kind, args.device, args.dtype, micro_batch=micro_batch)
    fn = run_harness if args.mode.startswith("harness") else {"floor": run_floor, "official": run_official}[args.mode]
    fn(pair, 2, args.device, args.compile)  # warm-up (and compilation)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    _sync(args.device)
    t0 = time.perf_counter()
    rows = fn(pair, args.steps, args.device, False)
    _sync(args.device)
    dt = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"seconds": dt, "rows": rows, "peak_mb": peak}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--compile", action="store_true", help="torch.compile the denoiser(s)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--setups", default=",".join(f"{f}:{k}" for f, k in SETUPS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--family")
    ap.add_argument("--kind")
    ap.add_argument("--mode")
    args = ap.parse_args()
    if args.single:
        print(json.dumps(single(args)))
        return

    import diffusers
    import peft
    import torch

    print(f"# grid benchmark  {time.strftime('%Y-%m-%d %H:%M')}  python {platform.python_version()}  torch {torch.__version__}"
          f"  diffusers {diffusers.__version__}  peft {peft.__version__}")
    print(f"# machine: {platform.machine()} {os.cpu_count()} cpus, device={args.device}, dtype={args.dtype}, "
          f"threads={args.threads}, compile={args.compile}")
    print(f"# grid {SCALES}, {len(PROMPTS)} prompts, {args.steps} steps, {SIZE}px, CFG {CFG}; medians of {args.repeats}")
    print("| pair | mode | images/s | s (median) | network rows | rows / minimum | time / floor | peak MB |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    n_images = len(PROMPTS) * len(SCALES)
    minimum = minimum_rows(args.steps)
    for setup in args.setups.split(","):
        family, kind = setup.split(":")
        results = {}
        for mode in args.modes.split(","):
            runs = []
            for _ in range(args.repeats):  # interleave-free but each run is a fresh process
                cmd = [sys.executable, __file__, "--single", "--family", family, "--kind", kind, "--mode", mode,
                       "--steps", str(args.steps), "--device", args.device, "--dtype", args.dtype,
                       "--threads", str(args.threads)] + (["--compile"] if args.compile else [])
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            results[mode] = {"seconds": statistics.median(r["seconds"] for r in runs), "rows": runs[0]["rows"],
                             "peak_mb": max(r["peak_mb"] for r in runs)}
        floor = results.get("floor", {}).get("seconds")
        for mode, r in results.items():
            ratio = f"{r['seconds'] / floor:.2f}" if floor else "-"
            print(f"| {family}/{kind} | {mode} | {n_images / r['seconds']:.2f} | {r['seconds']:.2f} | {r['rows']} | "
                  f"{r['rows'] / minimum:.2f} | {ratio} | {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
