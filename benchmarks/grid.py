"""Benchmark `grid`: sample an RLG grid at the cost of the network evaluations it needs.

Default mode, on tiny SD1.5-like and SD3-like pairs (full weights and PEFT LoRA), 8 prompts x the
paper's 7 scales:
  harness           rlg-bench's RLGSampler on the stock pipeline at the harness defaults
                    (sampler.micro_batch, sampler.batch_size): images bit-identical whatever the batch
  harness_unpadded  the same calls with micro_batch=0: one forward per model and step (fastest, but
                    an image then depends on its batch)
  harness_old       the previous defaults (micro_batch=2, batch_size=8), for the record
  floor             a hand-written loop that makes only the network calls the grid needs, one prompt
                    at a time (text encoded once per prompt, the shared first step once per model,
                    w=0 / w=1 one model each, one forward per model and step)
  official          the official approach: each scale on its own, 4 network evaluations per step
                    (base and RL as separate CFG forwards), as in the official SD3 script

Scaling mode (--scaling): grid size 1, 3, 7, 13 scales x prompt counts; network rows and time of
the harness (defaults), the floor and the official approach; writes a figure (--figure).

Modes run interleaved in one process (repeat r runs every mode once), after a warm-up of each; the
clock is process CPU time on a CPU (one thread by default: robust to other jobs on shared cores) and
wall time on a GPU. Medians are reported. Run by hand:
    python benchmarks/grid.py [--repeats 3] [--steps 10]
    python benchmarks/grid.py --scaling [--prompts 1,8] [--figure benchmarks/figures/scaling.png]
    python benchmarks/grid.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import sys

try:
    from benchmarks import _common as common
except ImportError:  # run as a script: python benchmarks/grid.py
    import _common as common

MODES = ["harness", "harness_unpadded", "harness_old", "floor", "official"]
SCALING_MODES = ["harness", "floor", "official"]
OLD_DEFAULTS = (2, 8)  # (micro_batch, batch_size) before issue 14


def run_mode(pair, mode: str, texts, grid, steps: int, args) -> dict:
    micro_batch, batch_size = args.micro_batch, args.batch_size
    if mode == "harness":
        return common.run_harness(pair, texts, grid, steps, micro_batch, batch_size)
    if mode == "harness_unpadded":
        return common.run_harness(pair, texts, grid, steps, 0, batch_size)
    if mode == "harness_old":
        return common.run_harness(pair, texts, grid, steps, *OLD_DEFAULTS)
    fn = {"floor": common.run_floor, "official": common.run_official}[mode]
    return fn(pair, texts, grid, steps, args.device)


def measure(pair, modes: list[str], texts, grid, args) -> dict[str, dict]:
    """Median seconds (and rows, peak memory) per mode; repeats interleave the modes."""
    import torch

    clock = common.Clock(args.device, args.clock)
    for mode in modes:  # warm-up (kernel selection, allocator, caches)
        run_mode(pair, mode, texts[:1], grid, 2, args)
    times: dict[str, list[float]] = {m: [] for m in modes}
    out: dict[str, dict] = {}
    for _ in range(args.repeats):
        for mode in modes:
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            t0 = clock.now()
            res = run_mode(pair, mode, texts, grid, args.steps, args)
            times[mode].append(clock.now() - t0)
            out[mode] = {"rows": res["rows"], "padded_rows": res["padded_rows"],
                         "peak_mb": common.peak_mb(args.device) if args.device.startswith("cuda") else None}
    for mode in modes:
        out[mode]["seconds"] = statistics.median(times[mode])
        out[mode]["all"] = times[mode]
    return out


def main_table(args) -> None:
    texts, grid = common.prompts(args.n_prompts), common.PAPER_SCALES
    minimum = common.minimum_rows(grid, args.steps, len(texts))
    print(f"# grid {grid}, {len(texts)} prompts, {args.steps} steps, {common.SIZE}px, CFG {common.CFG}; "
          f"harness micro_batch={args.micro_batch!r} batch_size={args.batch_size}; medians of {args.repeats}")
    print("| pair | mode | images/s | s (median) | network rows | rows / minimum | padded rows | time / floor "
          "| time / unpadded | peak MB |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    modes = args.modes.split(",")
    for setup in args.setups.split(","):
        family, kind = setup.split(":")
        pair = common.load(family, kind, args.device, args.dtype)
        if args.compile:
            compile_pair(pair)
        res = measure(pair, modes, texts, grid, args)
        floor = res.get("floor", {}).get("seconds")
        unpadded = res.get("harness_unpadded", {}).get("seconds")
        for mode, r in res.items():
            ratio = f"{r['seconds'] / floor:.2f}" if floor else "-"
            ratio_u = f"{r['seconds'] / unpadded:.2f}" if unpadded else "-"
            peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "-"
            print(f"| {family}/{kind} | {mode} | {len(texts) * len(grid) / r['seconds']:.2f} | {r['seconds']:.2f} | "
                  f"{r['rows']} | {r['rows'] / minimum:.2f} | {r['padded_rows']} | {ratio} | {ratio_u} | {peak} |",
                  flush=True)
        if args.verbose:
            print(f"#   all {setup}: " + ", ".join(f"{m}={[round(t, 2) for t in r['all']]}" for m, r in res.items()))


def scaling(args) -> None:
    family, kind = args.setups.split(",")[0].split(":")
    counts = [int(n) for n in args.scale_counts.split(",")]
    prompt_counts = [int(n) for n in args.prompts.split(",")]
    pair = common.load(family, kind, args.device, args.dtype)
    print(f"# scaling: {family}/{kind}, {args.steps} steps, scales evenly spaced in [0, 3] (1 scale: 1.5); harness "
          f"micro_batch={args.micro_batch!r} batch_size={args.batch_size}; medians of {args.repeats}")
    print("| scales | prompts | minimum rows | harness rows (+ padding) | official rows | harness s | floor s "
          "| official s | harness / floor | official / floor | official / harness |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    table = []
    for n_prompts in prompt_counts:
        for n in counts:
            grid, texts = common.scales(n), common.prompts(n_prompts)
            res = measure(pair, SCALING_MODES, texts, grid, args)
            row = {"scales": n, "prompts": n_prompts, "minimum": common.minimum_rows(grid, args.steps, n_prompts),
                   **{f"{m}_rows": res[m]["rows"] for m in SCALING_MODES}, "padded": res["harness"]["padded_rows"],
                   **{f"{m}_s": res[m]["seconds"] for m in SCALING_MODES}}
            table.append(row)
            print(f"| {n} | {n_prompts} | {row['minimum']} | {row['harness_rows']} (+{row['padded']}) | "
                  f"{row['official_rows']} | "
                  f"{row['harness_s']:.2f} | {row['floor_s']:.2f} | {row['official_s']:.2f} | "
                  f"{row['harness_s'] / row['floor_s']:.2f} | {row['official_s'] / row['floor_s']:.2f} | "
                  f"{row['official_s'] / row['harness_s']:.2f} |", flush=True)
    if args.figure:
        figure(table, args)


def figure(table: list[dict], args) -> None:
    """Left: network rows per prompt vs grid size (official, minimum, harness). Right: time / floor,
    one line per prompt count (the harness fills its calls with more groups as prompts grow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(8.5, 3.3))
    first = [r for r in table if r["prompts"] == table[0]["prompts"]]
    x = [r["scales"] for r in first]
    per = lambda r, k: r[k] / r["prompts"]  # noqa: E731
    a.plot(x, [per(r, "official_rows") for r in first], "s-", color="C1", label="official (per scale)")
    a.plot(x, [per(r, "minimum") for r in first], "k--", label="minimum")
    a.plot(x, [per(r, "harness_rows") for r in first], "o", color="C0", label="harness")
    a.set(xlabel="scales in the grid", ylabel="network rows per prompt", title=f"work ({args.steps} steps)")
    for i, n in enumerate(sorted({r["prompts"] for r in table})):
        rows = [r for r in table if r["prompts"] == n]
        xs = [r["scales"] for r in rows]
        b.plot(xs, [r["official_s"] / r["floor_s"] for r in rows], "s-", color="C1", alpha=0.5 + 0.5 * i,
               label=f"official, {n} prompt(s)")
        b.plot(xs, [r["harness_s"] / r["floor_s"] for r in rows], "o-", color="C0", alpha=0.5 + 0.5 * i,
               label=f"harness, {n} prompt(s)")
    b.axhline(1.0, color="k", ls="--", label="floor")
    b.set(xlabel="scales in the grid", ylabel="time / floor", title="time (CPU, tiny SD3-like LoRA pair)")
    for ax in (a, b):
        ax.set_xticks(x)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.figure, dpi=110)
    print(f"# figure: {args.figure}")


def compile_pair(pair) -> None:
    import torch

    pair.denoiser.base = torch.compile(pair.denoiser.base)
    if pair.denoiser.rl is not None:
        pair.denoiser.rl = torch.compile(pair.denoiser.rl)


def main(argv=None) -> None:
    micro_batch, batch_size = common.harness_defaults()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--n-prompts", type=int, default=8, help="prompts in the default mode")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--compile", action="store_true", help="torch.compile the denoiser(s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on shared cores)")
    ap.add_argument("--clock", default="auto", choices=["auto", "cpu", "wall"],
                    help="auto: process CPU time on a CPU, wall time on a GPU")
    ap.add_argument("--setups", default=",".join(f"{f}:{k}" for f, k in common.SETUPS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--micro-batch", default=micro_batch, type=lambda v: v if v == "auto" else int(v),
                    help=f"harness sampler.micro_batch (default: the harness's, {micro_batch!r})")
    ap.add_argument("--batch-size", type=int, default=batch_size,
                    help=f"harness sampler.batch_size (default: the harness's, {batch_size})")
    ap.add_argument("--scaling", action="store_true", help="sweep grid size and prompt count (first setup only)")
    ap.add_argument("--scale-counts", default="1,3,7,13")
    ap.add_argument("--prompts", default="1,8", help="prompt counts of the scaling mode")
    ap.add_argument("--figure", default=None, help="scaling mode: write the figure here (png)")
    ap.add_argument("--verbose", action="store_true", help="print every repeat's time")
    args = ap.parse_args(argv)
    if args.scaling and args.setups == ",".join(f"{f}:{k}" for f, k in common.SETUPS):
        args.setups = "sd3:peft_lora"  # the fastest tiny pair: the sweep is about counts, not the network

    import torch

    torch.set_num_threads(args.threads)
    print(common.header("grid benchmark", args.device, args.threads, common.Clock(args.device, args.clock).kind))
    if args.scaling:
        scaling(args)
    else:
        main_table(args)


if __name__ == "__main__":
    main(sys.argv[1:])
