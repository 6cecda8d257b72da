"""Benchmark `sweep`: a 7-scale grid end to end with scoring, harness vs the official workflow.

  harness   one command: `python run.py ...` (generate all scales with the pair loaded once, score
            with JPEG + OCR + a tiny CLIP scorer loaded once and batched, and write the report)
  official  the official workflow: for each scale a process that loads the pair and generates its
            images (4 network evaluations per step), then for each scale a scoring process that
            loads the evaluators and scores its images one at a time

Tiny SD1.5-like pair with a PEFT LoRA, 8 prompts, 20 steps, on the CPU. Run by hand:
    python benchmarks/sweep.py [--repeats 3] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SCALES = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
PROMPTS = [f'A sign that says "WORD{i}"' for i in range(8)]
SEED, CFG, SIZE = 0, 4.5, 32


def official_generate(scale: float, steps: int, out: Path) -> None:
    """One scale, as the official script does: load the pair, 4 evaluations per step, save PNGs."""
    import torch
    from PIL import Image

    from benchmarks.grid import _Loop, _load

    pair = _load("sd", "peft_lora", "cpu", "float32")
    loop = _Loop(pair, steps, "cpu")
    net = pair.denoiser.base
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for p, prompt in enumerate(PROMPTS):
            pe, npe, _, _ = loop.encode(prompt)
            sched = loop.scheduler()
            x = loop.noise(p)
            emb = torch.cat([npe, pe])
            for t in sched.timesteps:
                xi = torch.cat([x, x])
                ub, cb = loop.call(net, xi, t, emb, None, ["__base__"] * 2).chunk(2)
                ur, cr = loop.call(net, xi, t, emb, None, ["rl"] * 2).chunk(2)
                pb, pr = ub + CFG * (cb - ub), ur + CFG * (cr - ur)
                x = sched.step(pb + scale * (pr - pb), t, x, return_dict=False)[0]
            img = loop.decode(x)[0].permute(1, 2, 0).numpy()
            Image.fromarray(img).save(out / f"{p:05d}.png")  # the official per-process counter naming


def official_score(images: Path, clip_dir: str) -> None:
    """One scale's scoring script: load every evaluator, score the images one at a time."""
    from PIL import Image

    from rlg.evaluators.base import Sample, get_evaluator

    evs = [get_evaluator("jpeg"), get_evaluator("ocr"), get_evaluator("clip_score", model=clip_dir, offline=True)]
    rows = []
    for i, path in enumerate(sorted(images.glob("*.png"))):
        s = Sample(key=path.stem, image=Image.open(path).convert("RGB"), prompt=PROMPTS[i])
        for ev in evs:
            rows.append(ev.score([s])[0])
    (images / "scores.txt").write_text(repr(rows))


def timed(cmds: list[list[str]], env) -> float:
    t0 = time.perf_counter()
    for cmd in cmds:
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--micro-batch", default="null", help="harness sampler.micro_batch (null = one fused forward)")
    ap.add_argument("--official-generate", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--official-score", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--clip", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.official_generate is not None:
        return official_generate(args.official_generate, args.steps, Path(args.out))
    if args.official_score:
        return official_score(Path(args.official_score), args.clip)

    import torch

    from tests.helpers.scorers import save_tiny_hf_clip
    from rlg.pairs import tiny_spec

    tiny_spec("sd", "peft_lora")  # build the fixture once, outside the timings
    env = {**os.environ, "OMP_NUM_THREADS": str(min(2, os.cpu_count() or 1)), "HF_HUB_OFFLINE": "1"}
    print(f"# sweep benchmark  {time.strftime('%Y-%m-%d %H:%M')}  python {platform.python_version()}  torch {torch.__version__}")
    print(f"# machine: {platform.machine()} {os.cpu_count()} cpus; tiny SD1.5-like pair + PEFT LoRA; grid {SCALES}; "
          f"{len(PROMPTS)} prompts; {args.steps} steps; JPEG + OCR (EasyOCR) + tiny CLIP score; medians of {args.repeats}; "
          f"harness sampler.micro_batch={args.micro_batch}")
    harness, official = [], []
    with tempfile.TemporaryDirectory() as tmp:
        clip_dir = str(save_tiny_hf_clip(Path(tmp) / "tiny-clip"))
        prompts = "[" + ",".join(f"'{p}'" for p in PROMPTS) + "]"
        for r in range(args.repeats):
            cmd = [sys.executable, "run.py", f"name=sweep{r}", f"paths.root={tmp}/runs", "pair=tiny_sd_peft",
                   "grid=paper", f"sampler.num_inference_steps={args.steps}", f"sampler.micro_batch={args.micro_batch}",
                   "prompts=tiny",
                   f"prompts.items={prompts}", "evaluators.selected=[jpeg,ocr,clip_score]",
                   f"+evaluators.options.clip_score={{model:{clip_dir},offline:true}}", "tracker=none",
                   "report.n_resamples=200"]
            harness.append(timed([cmd], env))
            out = Path(tmp) / f"official{r}"
            gen = [[sys.executable, __file__, "--official-generate", str(w), "--steps", str(args.steps),
                    "--out", str(out / f"w{w}")] for w in SCALES]
            score = [[sys.executable, __file__, "--official-score", str(out / f"w{w}"), "--clip", clip_dir]
                     for w in SCALES]
            official.append(timed(gen + score, env))
            print(f"  repeat {r}: harness {harness[-1]:.1f} s, official {official[-1]:.1f} s", flush=True)
    h, o = statistics.median(harness), statistics.median(official)
    print("| workflow | wall s (median) | images | ratio official / harness |")
    print("|---|--:|--:|--:|")
    print(f"| harness (one command, incl. report) | {h:.1f} | {len(SCALES) * len(PROMPTS)} | |")
    print(f"| official (7 generate + 7 score processes) | {o:.1f} | {len(SCALES) * len(PROMPTS)} | {o / h:.2f} |")


if __name__ == "__main__":
    main()
