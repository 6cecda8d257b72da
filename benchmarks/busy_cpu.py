"""The quickstart's generation on a busy CPU: idle vs a fixed background load, torch threads x OpenMP wait policy.

    python benchmarks/busy_cpu.py                    # 4 prompts x 4 samples x 5 scales = 80 images per cell
    python benchmarks/busy_cpu.py --prompts 2 --load 4 --repeats 2
    python benchmarks/busy_cpu.py --only idle --repeats 3 --timeout 60   # the idle rows alone: ~4 min when idle

Each cell is one fresh process that builds the quickstart job as ``rlg-bench`` does
(``rlg.harness.api.job``), loads the pair, warms up with one 2-image call and times the sampling of the
job's images in the harness's own pipeline calls (``rlg.grid.pack_calls``), with ``OMP_NUM_THREADS`` = 1
or 2 and ``OMP_WAIT_POLICY`` unset (libgomp's default: threads spin for a while before sleeping) or
``PASSIVE`` (they sleep at once), first on the machine as it is ("idle"), then with ``--load`` background
processes that each spin one core (plain Python busy loops, started before the cell and stopped after it;
each also stops itself after ``--load-limit-s``). The figure is images per second of sampling (no
start-up, loading or PNG writing), with the 1-minute load average before and after each cell
(``os.getloadavg``), so every figure states the load it was measured under.

The question it answers: which default (threads, wait policy) degrades gracefully under load without
slowing the idle case by more than a few percent. The table is in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELLS = [(1, None), (1, "PASSIVE"), (2, None), (2, "PASSIVE")]
IDLE_LOAD = 0.25  # 1-minute load average per core above which the machine does not count as idle


def _spin(deadline: float) -> None:
    x = 0
    while time.time() < deadline:
        x += 1


class BackgroundLoad:
    """``n`` processes that each keep one core busy until stopped or for at most ``limit_s`` seconds."""

    def __init__(self, n: int, limit_s: float):
        self.n, self.limit_s, self.procs = n, limit_s, []

    def __enter__(self) -> "BackgroundLoad":
        deadline = time.time() + self.limit_s
        self.procs = [mp.Process(target=_spin, args=(deadline,), daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        time.sleep(2.0)  # let the scheduler see them before the measured process starts
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(5)


# One cell: build the quickstart job as the CLI does (rlg.harness.api.job), load the pair, warm up with one
# call, then time the sampling of every (prompt, sample, w) image of the job in the harness's own pipeline calls.
CELL = """
import json, sys, time, torch
from rlg.grid import pack_calls
from rlg.harness import stages
from rlg.harness.api import job as make_job
from rlg.sampling import RLGSampler
job = make_job(*sys.argv[1:])
t0 = time.perf_counter()
pair = stages.PAIRS.get(job)
sampler = RLGSampler(pair, job.sampler)
load_s = time.perf_counter() - t0
items = [it for group in stages.work_groups(job) for _, it in group]
batches = pack_calls([[it] for it in items], job.config.sampler.batch_size)
sampler.generate(batches[0][:2])  # warm-up: first-call allocations and lazy initialisation
t0 = time.perf_counter()
for b in batches:
    sampler.generate(b)
gen_s = time.perf_counter() - t0
print(json.dumps({"load_s": load_s, "generate_s": gen_s, "images": len(items),
                  "torch_threads": torch.get_num_threads()}))
"""


def run_cell(threads: int, policy: str | None, prompts: int, samples: int, timeout: float) -> dict:
    """One quickstart generation in a fresh process; returns its timings and the load around it."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, "-c", CELL, "experiment=quickstart", "tracker=none",
           f"prompts.max_prompts={prompts}", f"prompts.samples_per_prompt={samples}"]
    load_before = os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # the cell is slower than the time box: recorded as such, not dropped
        return {"threads": threads, "policy": policy or "default", "timed_out_s": timeout, "img_per_s": 0.0,
                "generate_s": None, "load_before": load_before, "load_after": os.getloadavg()[0]}
    load_after = os.getloadavg()[0]
    if proc.returncode != 0:
        raise RuntimeError(f"cell threads={threads} policy={policy} failed:\n{proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"threads": threads, "policy": policy or "default", **r, "img_per_s": r["images"] / r["generate_s"],
            "load_before": load_before, "load_after": load_after}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--load", type=int, default=None, help="background spinning processes (default: 2 x cores)")
    ap.add_argument("--load-limit-s", type=float, default=600.0, help="each load process stops itself after this")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600.0, help="per cell (start-up included); a slower cell "
                    "is reported as timed out")
    ap.add_argument("--only", choices=("idle", "loaded"), default=None, help="run one condition only")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    n_load = args.load if args.load is not None else 2 * cores
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {cores} logical cores, "
          f"python {platform.python_version()}; {args.prompts} prompts x {args.samples} samples x 5 scales per cell; "
          f"background load = {n_load} spinning processes")
    load_now = os.getloadavg()[0]
    if args.only != "loaded" and load_now > IDLE_LOAD * cores:  # the idle rows would not be idle rows
        print(f"# WARNING: the 1-minute load average is {load_now:.1f} on {cores} cores (> {IDLE_LOAD} per core): the "
              "machine is not idle, so the 'idle' rows measure whatever else runs; rerun when it is quiet")
    rows = []
    for _ in range(args.repeats):
        for condition in [c for c in ("idle", "loaded") if args.only in (None, c)]:
            for threads, policy in CELLS:
                n = n_load if condition == "loaded" else 0
                with BackgroundLoad(n, args.load_limit_s):
                    r = run_cell(threads, policy, args.prompts, args.samples, args.timeout)
                r["condition"] = condition
                rows.append(r)
                took = (f"generate {r['generate_s']:7.1f} s" if r.get("generate_s") is not None
                        else f"timed out after {r['timed_out_s']:.0f} s (start-up included)")
                print(f"{condition:6s} threads={threads} OMP_WAIT_POLICY={r['policy']:8s} "
                      f"{r['img_per_s']:6.2f} img/s  {took}  (load {r['load_before']:.1f} -> {r['load_after']:.1f})",
                      flush=True)
    print("\n| threads | OMP_WAIT_POLICY | idle img/s (load) | loaded img/s (load) | loaded / idle |")
    print("|--:|---|--:|--:|--:|")
    for threads, policy in CELLS:
        pol = policy or "default"
        cell = {c: [r for r in rows if r["threads"] == threads and r["policy"] == pol and r["condition"] == c]
                for c in ("idle", "loaded")}
        med = {c: sorted(r["img_per_s"] for r in v)[len(v) // 2] for c, v in cell.items() if v}
        load = {c: sum(r["load_before"] for r in v) / len(v) for c, v in cell.items() if v}
        shown = {c: f"{med[c]:.2f} ({load[c]:.1f})" if c in med else "–" for c in ("idle", "loaded")}
        ratio = f"{med['loaded'] / med['idle']:.2f}" if len(med) == 2 and med["idle"] else "–"
        print(f"| {threads} | {pol} | {shown['idle']} | {shown['loaded']} | {ratio} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
