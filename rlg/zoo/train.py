"""Retrain the zoo from scratch: ``python -m rlg.zoo.train digits|text|geneval|all [--out DIR] [--ship] [--only a,b]``.

Without --ship the models go to a fresh directory (default outputs/zoo_retrain/<time>) and each is
compared with the shipped model's manifest metrics within the task's tolerances; --ship overwrites
rlg/zoo/weights and the manifest. Not part of CI: each model takes minutes on CPU (1 torch thread,
override with RLG_ZOO_THREADS).
"""

from __future__ import annotations

import argparse
import json
import sys

from rlg.registry import resolve

# task -> "module:function"; the function takes (out, ship, only, log[, eval_samples]) and returns a report
TASKS = {"digits": "rlg.zoo.train_digits:run", "text": "rlg.zoo.train_text:run",
         "geneval": "rlg.zoo.train_geneval:run"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlg.zoo.train", description=__doc__)
    ap.add_argument("task", choices=sorted(TASKS) + ["all"])
    ap.add_argument("--out", default=None, help="output directory (default outputs/zoo_retrain/<time>)")
    ap.add_argument("--ship", action="store_true", help="write into rlg/zoo/weights and the manifest")
    ap.add_argument("--only", default=None, help="comma-separated model names")
    ap.add_argument("--eval-samples", type=int, default=None,
                    help="samples per prompt when measuring pairs (default: each task's own: digits as the shipped "
                         "measurement, so an identical model must measure identically; text 25)")
    args = ap.parse_args(argv)
    tasks = sorted(TASKS) if args.task == "all" else [args.task]
    report, ok = {}, True
    for task in tasks:
        samples = {} if args.eval_samples is None else {"eval_samples": args.eval_samples}
        rep = resolve(TASKS[task])(
            out=args.out, ship=args.ship, only=args.only.split(",") if args.only else None,
            log=lambda m: print(m, flush=True), **samples)
        report[task] = rep
        for model, r in rep.items():
            for metric, c in r.get("reproduction", {}).items():
                ok &= c.get("ok") is not False
                verdict = "n/a" if c.get("ok") is None else "OK" if c["ok"] else "FAIL"
                print(f"{task}/{model} {metric}: shipped {c.get('shipped')} retrained {c.get('retrained')} "
                      f"tol {c.get('tolerance')} -> {verdict}")
    print(json.dumps({"reproduced": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
