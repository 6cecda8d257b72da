"""Benchmark `quickstart`: where the default job's time goes, end to end on the trained zoo (issue 14).

Runs what a new user runs, `rlg-bench` with no arguments (experiment=quickstart: the digits zoo base +
its DDPO LoRA, 10 prompts x 8 samples x 5 scales, DDIM 20 steps; digit_prob, digit_fd and JPEG; the
report), as three invocations into one fresh directory, one per stage (stage=generate, evaluate,
report), and prints each stage's wall time and its process CPU time, then the start-up cost that each
invocation pays (a `stage=evaluate` rerun on the finished store, where every score is cached: imports,
config, build, lock, evaluator loading) and each stage's time net of it.

With `--profile` (needs `pip install py-spy`, a sampling profiler: it does not slow the job the way
cProfile does) the whole job runs once more under py-spy and its samples are split into the network
(UNet/transformer forwards, LoRA included), the VAE decode, the scheduler and the mix, PNG writing,
scoring, the report and imports.

Run by hand:  python benchmarks/quickstart.py [--profile] [--threads N]
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import _common as common  # noqa: E402

# py-spy frame substrings -> category; the first match in a stack wins (most specific first)
CATEGORIES = [
    ("VAE decode", "autoencoder_kl.py"),
    ("network (UNet / transformer forward)", "unet_2d_condition.py"),
    ("network (UNet / transformer forward)", "transformer_sd3.py"),
    ("PNG writing", "PngImagePlugin"),
    ("scheduler step", "scheduling_"),
    ("text encoding", "encode_prompt"),
    ("RLG mix and packing", "rlg/denoiser.py"),
    ("scoring", "rlg/evaluators/"),
    ("scoring", "rlg/zoo/digits_eval.py"),
    ("report (tables, figures)", "rlg/report/"),
    ("loading the pair", "from_pretrained"),
    ("imports", "_find_and_load"),
]


def run(args: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one `rlg-bench` invocation; raises on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env, capture_output=True,
                         text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"rlg-bench {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def categorise(raw: Path) -> dict[str, float]:
    """Shares of py-spy's raw (collapsed) samples per CATEGORIES entry; the rest is 'other'."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        counts[next((name for name, pattern in CATEGORIES if pattern in stack), "other")] += int(n)
    total = sum(counts.values()) or 1
    return {name: n / total for name, n in counts.most_common()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", action="store_true", help="also run under py-spy and split the time")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = ap.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    print(common.header("quickstart benchmark", "cpu", args.threads or "default", "wall + child cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = [f"paths.root={tmp / 'runs'}", "tracker=none"]
        rows = []
        for stage in ("generate", "evaluate", "report"):
            rows.append((stage, *run([*base, f"stage={stage}"], tmp, env)))
        start_wall, start_cpu = run([*base, "stage=evaluate"], tmp, env)  # all cached: start-up alone
        net = [(stage, wall - start_wall, cpu - start_cpu) for stage, wall, cpu in rows]
        total = start_wall + sum(w for _, w, _ in net)  # one invocation pays the start-up once
        print("| stage | wall s | cpu s | net of start-up: wall s | cpu s | share of a one-invocation job |")
        print("|---|--:|--:|--:|--:|--:|")
        for (stage, wall, cpu), (_, nwall, ncpu) in zip(rows, net):
            print(f"| {stage} | {wall:.1f} | {cpu:.1f} | {nwall:.1f} | {ncpu:.1f} | {nwall / total:.0%} |")
        print(f"| start-up (imports, config, build, lock, evaluators) | {start_wall:.1f} | {start_cpu:.1f} | | | "
              f"{start_wall / total:.0%} |")
        if args.profile:
            # the venv's own py-spy when the venv is not on PATH
            spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
            if spy is None:
                raise SystemExit("--profile needs py-spy: pip install py-spy")
            raw = tmp / "profile.txt"
            cmd = [spy, "record", "-r", "50", "-f", "raw", "-o", str(raw), "--", sys.executable,
                   str(ROOT / "run.py"), f"paths.root={tmp / 'profiled'}", "tracker=none"]
            out = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"py-spy failed ({out.returncode}):\n{out.stderr[-3000:]}")
            print("\n| where the whole job's samples fall (py-spy, 50 Hz) | share |")
            print("|---|--:|")
            for name, share in categorise(raw).items():
                print(f"| {name} | {share:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
