"""RLG-FKC against plain RLG on a zoo pair, paired by noise (seed, prompt, sample): the difference of every metric's
mean with its 95% two-way cluster-bootstrap interval over prompts and seeds (rlg.report.findings.ClusterBootstrap),
and each arm's network rows per image. Run by hand (docs/fkc.md §6 gives the command and the figures):

    python benchmarks/fkc_zoo.py --plain outputs/fkc_measure_plain_s{0,1,2} --fkc outputs/fkc_measure_fkc4_s{0,1,2}

Each directory is an ordinary run (rlg-bench experiment=<preset> seed=<k> ...), the i-th of --plain and of --fkc
made with the same seed."""

from __future__ import annotations

import argparse
import numpy as np
import pandas as pd


def main(argv: list[str] | None = None) -> None:
    from rlg.report.findings import KEY, ClusterBootstrap, load_points

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plain", nargs="+", required=True)
    ap.add_argument("--fkc", nargs="+", required=True)
    ap.add_argument("--resamples", type=int, default=20000)
    a = ap.parse_args(argv)
    if len(a.plain) != len(a.fkc):
        raise SystemExit("give one --fkc run per --plain run (the same seeds, in order)")
    seeds = list(range(len(a.plain)))  # the i-th --plain and --fkc runs share a seed: the pairing key
    plain, higher = load_points(list(zip(seeds, a.plain)))
    fkc, _ = load_points(list(zip(seeds, a.fkc)))
    boot = ClusterBootstrap(pd.MultiIndex.from_frame(plain[KEY]), a.resamples)
    p, f = plain.drop_duplicates(KEY).set_index(KEY), fkc.drop_duplicates(KEY).set_index(KEY)
    print(f"images: plain {len(p)}, fkc {len(f)}; network rows per image: plain {p['cost'].mean():g}, "
          f"fkc {f['cost'].mean():g}")
    for m in sorted(higher):
        if m not in p or m not in f:
            continue
        ea, ra, _ = boot.mean(p[m].astype(float))
        eb, rb, _ = boot.mean(f[m].astype(float))
        d, rd, n = boot.mean((f[m].astype(float) - p[m].astype(float)).dropna())
        ci = lambda r: np.percentile(r[np.isfinite(r)], [2.5, 97.5])  # noqa: E731
        print(f"{m:22s} ({'higher' if higher[m] else 'lower'} better)  plain {ea:+.4f} [{ci(ra)[0]:+.4f}, "
              f"{ci(ra)[1]:+.4f}]  fkc {eb:+.4f} [{ci(rb)[0]:+.4f}, {ci(rb)[1]:+.4f}]  fkc - plain {d:+.4f} "
              f"[{ci(rd)[0]:+.4f}, {ci(rd)[1]:+.4f}]  n={n}")


if __name__ == "__main__":
    main()
