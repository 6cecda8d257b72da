"""Benchmark `sweep`: an RLG grid end to end with scoring, the harness at its defaults vs the official workflow.

  harness   one command at the harness's defaults (`python run.py ...`: sampler.micro_batch and
            sampler.batch_size as shipped): generate every scale with the pair loaded once, score with
            JPEG + OCR + a tiny CLIP scorer loaded once and batched, write the report
  official  the official workflow: for each scale a process that loads the pair and generates its
            images (4 network evaluations per step), then for each scale a scoring process that loads
            the evaluators and scores its images one at a time

Tiny SD1.5-like pair with a PEFT LoRA, on the CPU. Both wall time and the CPU time of the child
processes are reported (on shared cores the CPU time is the steadier of the two); the ratio is
official / harness. Run by hand:
    python benchmarks/sweep.py --quick            # 4 prompts x 3 scales, 6 steps, 1 repeat: a few minutes
    python benchmarks/sweep.py [--repeats 3] [--steps 20]     # 8 prompts x the paper's 7 scales
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from benchmarks import _common as common
except ImportError:  # run as a script: python benchmarks/sweep.py
    import _common as common

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tiny scorer builders live with the tests (tests/helpers), in a clone


def texts(n: int) -> list[str]:
    return [f'A sign that says "WORD{i}"' for i in range(n)]  # OCR-style, so every evaluator applies


def official_generate(scale: float, steps: int, n_prompts: int, out: Path) -> None:
    """One scale, as the official script does: load the pair, 4 evaluations per step, save PNGs."""
    import torch
    from PIL import Image

    torch.set_num_threads(1)
    pair = common.load("sd", "peft_lora")
    loop = common.Loop(pair, steps, "cpu")
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for p, prompt in enumerate(texts(n_prompts)):
            pe, npe, _, _ = loop.encode(prompt)
            sched = loop.scheduler()
            x = loop.noise(p)
            emb = torch.cat([npe, pe])
            for t in sched.timesteps:
                xi = torch.cat([x, x])
                ub, cb = loop.call(loop.base_net, xi, t, emb, None, ["__base__"] * 2).chunk(2)
                ur, cr = loop.call(loop.rl_net, xi, t, emb, None, [loop.rl_tag] * 2).chunk(2)
                pb, pr = ub + common.CFG * (cb - ub), ur + common.CFG * (cr - ur)
                x = sched.step(pb + scale * (pr - pb), t, x, return_dict=False)[0]
            img = loop.decode(x)[0].permute(1, 2, 0).numpy()
            Image.fromarray(img).save(out / f"{p:05d}.png")  # the official per-process counter naming


def official_score(images: Path, clip_dir: str, n_prompts: int) -> None:
    """One scale's scoring script: load every evaluator, score the images one at a time."""
    from PIL import Image

    from rlg.evaluators.base import Sample, get_evaluator

    evs = [get_evaluator("jpeg"), get_evaluator("ocr"), get_evaluator("clip_score", model=clip_dir, offline=True)]
    prompts = texts(n_prompts)
    rows = []
    for i, path in enumerate(sorted(images.glob("*.png"))):
        s = Sample(key=path.stem, image=Image.open(path).convert("RGB"), prompt=prompts[i])
        for ev in evs:
            rows.append(ev.score([s])[0])
    (images / "scores.txt").write_text(repr(rows))


def timed(cmds: list[list[str]], env) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child processes) of running ``cmds`` one after another."""
    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    for cmd in cmds:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t0, (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 prompts x 3 scales, 6 steps, 1 repeat")
    ap.add_argument("--repeats", type=int, default=None, help="default 3 (--quick: 1)")
    ap.add_argument("--steps", type=int, default=None, help="default 20 (--quick: 6)")
    ap.add_argument("--prompts", type=int, default=None, help="default 8 (--quick: 4)")
    ap.add_argument("--scales", type=int, default=None, help="grid size, evenly spaced in [0, 3] (default 7: the "
                                                              "paper's grid; --quick: 3)")
    ap.add_argument("--official-generate", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--official-score", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--clip", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    quick = args.quick
    args.repeats = args.repeats or (1 if quick else 3)
    args.steps = args.steps or (6 if quick else 20)
    args.prompts = args.prompts or (4 if quick else 8)
    args.scales = args.scales or (3 if quick else 7)
    if args.official_generate is not None:
        return official_generate(args.official_generate, args.steps, args.prompts, Path(args.out))
    if args.official_score:
        return official_score(Path(args.official_score), args.clip, args.prompts)

    from rlg.pairs import tiny_spec
    from tests.helpers.scorers import save_tiny_hf_clip

    tiny_spec("sd", "peft_lora")  # build the fixture once, outside the timings
    grid = common.scales(args.scales)
    micro_batch, batch_size = common.harness_defaults()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    print(common.header("sweep benchmark", "cpu", 1, "wall + children's cpu"))
    print(f"# tiny SD1.5-like pair + PEFT LoRA; grid {grid}; {args.prompts} prompts; {args.steps} steps; JPEG + OCR "
          f"(EasyOCR) + tiny CLIP score; medians of {args.repeats}; harness at its defaults (micro_batch="
          f"{micro_batch!r}, batch_size={batch_size})")
    harness, official = [], []
    with tempfile.TemporaryDirectory() as tmp:
        clip_dir = str(save_tiny_hf_clip(Path(tmp) / "tiny-clip"))
        prompts = "[" + ",".join(f"'{p}'" for p in texts(args.prompts)) + "]"
        scales = "[" + ",".join(str(w) for w in grid) + "]"
        for r in range(args.repeats):
            cmd = [sys.executable, "run.py", f"name=sweep{r}", f"paths.root={tmp}/runs", "pair=tiny_sd_peft",
                   f"grid.scales={scales}", f"sampler.num_inference_steps={args.steps}", "prompts=tiny",
                   f"prompts.items={prompts}", "evaluators.selected=[jpeg,ocr,clip_score]",
                   f"+evaluators.options.clip_score={{model:{clip_dir},offline:true}}", "tracker=none",
                   "report.n_resamples=200"]
            harness.append(timed([cmd], env))
            out = Path(tmp) / f"official{r}"
            common_args = ["--steps", str(args.steps), "--prompts", str(args.prompts)]
            gen = [[sys.executable, __file__, "--official-generate", str(w), *common_args, "--out", str(out / f"w{w}")]
                   for w in grid]
            score = [[sys.executable, __file__, "--official-score", str(out / f"w{w}"), "--clip", clip_dir,
                      *common_args] for w in grid]
            official.append(timed(gen + score, env))
            print(f"  repeat {r}: harness {harness[-1][0]:.1f} s wall / {harness[-1][1]:.1f} s cpu, official "
                  f"{official[-1][0]:.1f} s wall / {official[-1][1]:.1f} s cpu", flush=True)
    hw, hc = statistics.median(h[0] for h in harness), statistics.median(h[1] for h in harness)
    ow, oc = statistics.median(o[0] for o in official), statistics.median(o[1] for o in official)
    n = len(grid) * args.prompts
    print("| workflow | images | wall s | cpu s | official / harness (wall) | official / harness (cpu) |")
    print("|---|--:|--:|--:|--:|--:|")
    print(f"| harness (one command at its defaults, incl. report) | {n} | {hw:.1f} | {hc:.1f} | | |")
    print(f"| official ({len(grid)} generate + {len(grid)} score processes) | {n} | {ow:.1f} | {oc:.1f} | "
          f"{ow / hw:.2f} | {oc / hc:.2f} |")
    print(f"official / harness: {ow / hw:.2f}x wall, {oc / hc:.2f}x cpu")


if __name__ == "__main__":
    main(sys.argv[1:])
