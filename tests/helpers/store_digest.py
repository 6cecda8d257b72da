"""Hash what a run directory stores that must not depend on when or where it ran.

usage: python tests/helpers/store_digest.py RUN_DIR [RUN_DIR_B]   (two dirs: print the differing entries)

Hashed (one sha256 per entry):
  images/**.png, ANY other binary/text file under the run except the exclusions below: raw bytes
  rows/<table>/*.parquet: all parts of a table concatenated, volatile columns dropped, rows sorted by every
      remaining column, hashed as canonical JSON lines (part file names and row order are not content)
  meta.json: each invocation minus volatile keys
  .hydra/config.yaml, .hydra/overrides.yaml: raw bytes
  report/**: raw bytes with the index's "Written <date time>" line and the run id masked, except PDFs (matplotlib stamps CreationDate) hashed with the date line removed;
      listed separately because the report is expected to change where the task changes it
Excluded, and why:
  run_id (random per run), .lock/.meta.lock/.compact.lock (empty lock files), rlg-bench.log (timestamps, timings),
  .hydra/hydra.yaml (Hydra's runtime block: cwd, output dir, time), wandb/ (tracker's own files)
  parquet columns run_id (random), written_ns (clock), wall_s (clock)
  meta.json keys run_id, invocation (random), started, finished (clock), timings (clock), git_commit,
      git_dirty, platform, python, versions, omp_wait_policy (where it ran; the CLI sets PASSIVE on a busy machine), report.files/index/index_html (absolute paths
      are the same across runs here, kept: only volatile keys dropped)
"""
import hashlib
import json
import re
import sys
from pathlib import Path

import pandas as pd

SKIP_FILES = {"run_id", ".lock", ".meta.lock", ".compact.lock", "rlg-bench.log", ".hydra/hydra.yaml"}
SKIP_DIRS = ("wandb/",)
VOLATILE_COLUMNS = {"run_id", "written_ns", "wall_s"}
VOLATILE_META = {"run_id", "invocation", "started", "finished", "timings", "git_commit", "git_dirty",
                 "platform", "python", "versions", "omp_wait_policy"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canon(value):
    if isinstance(value, float) and value != value:
        return "nan"
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _scrub_ids(obj, run_id):
    text = json.dumps(obj, sort_keys=True, default=str)
    return text.replace(run_id, "<run_id>") if run_id else text


def hash_run(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    run_id = (root / "run_id").read_text().strip() if (root / "run_id").exists() else ""
    tables: dict[str, list[Path]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in SKIP_FILES or rel.startswith(SKIP_DIRS) or path.name.endswith(".lock"):
            continue
        if rel.startswith("rows/") and rel.endswith(".parquet"):
            tables.setdefault(rel.split("/")[1], []).append(path)
        elif rel == "meta.json":
            meta = json.loads(path.read_text())
            invs = [{k: v for k, v in inv.items() if k not in VOLATILE_META} for inv in meta.get("invocations", [])]
            rest = {k: v for k, v in meta.items() if k != "invocations"}
            out[rel] = _sha(_scrub_ids([rest, invs], run_id).encode())
        elif path.suffix == ".pdf":
            out[rel] = _sha(re.sub(rb"/CreationDate \([^)]*\)", b"", path.read_bytes()))
        else:
            data = path.read_bytes()
            if run_id and path.suffix in (".md", ".html", ".json", ".csv", ".tex", ".txt"):
                data = data.replace(run_id.encode(), b"<run_id>")
            data = re.sub(rb"Written \d{4}-\d\d-\d\d \d\d:\d\d", b"Written <time>", data)  # the page's clock line
            out[rel] = _sha(data)
    for table, parts in tables.items():
        df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        df = df.drop(columns=[c for c in df.columns if c in VOLATILE_COLUMNS])
        df = df[sorted(df.columns)]
        lines = sorted(json.dumps({c: _canon(v) for c, v in zip(df.columns, row)}, sort_keys=True, default=str)
                       for row in df.itertuples(index=False, name=None))
        out[f"rows/{table} ({len(lines)} rows)"] = _sha("\n".join(lines).encode())
    return out


def main(argv):
    a = hash_run(Path(argv[1]))
    if len(argv) == 2:
        for k, v in a.items():
            print(v, k)
        return 0
    b = hash_run(Path(argv[2]))
    store = lambda k: not k.startswith("report/")
    for part, keep in (("store", store), ("report", lambda k: not store(k))):
        keys = sorted(k for k in set(a) | set(b) if keep(k))
        diff = [k for k in keys if a.get(k) != b.get(k)]
        print(f"{part}: {len(keys)} entries, " + ("byte-identical" if not diff else f"{len(diff)} differ:"))
        for k in diff:
            print("   ", k, "only in A" if k not in b else "only in B" if k not in a else "differs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
