"""What a venv's versions change against the lock: `pip freeze | python constraints/changes.py constraints/tested.txt`.

Prints one line per package whose version differs, one per package only in the venv (new) and one per package
only in the lock (gone), then a count; exit status 0 either way (a report, not a check). Names are compared
the PEP 503 way (case, '-', '_' and '.' do not matter). Used by `make setup-latest`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def pins(lines) -> dict[str, tuple[str, str]]:
    """``{normalised name: (name as written, version)}`` of the ``name==version`` lines (comments skipped)."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = (part.strip() for part in line.split("==", 1))
            out[re.sub(r"[-_.]+", "-", name).lower()] = (name, version)
    return out


def changes(locked: dict[str, tuple[str, str]], now: dict[str, tuple[str, str]]) -> list[str]:
    rows = []
    for key in sorted(locked.keys() | now.keys()):
        if key not in now:
            rows.append(f"  {locked[key][0]}: {locked[key][1]} -> (not installed)")
        elif key not in locked:
            rows.append(f"  {now[key][0]}: (not in the lock) -> {now[key][1]}")
        elif locked[key][1] != now[key][1]:
            rows.append(f"  {now[key][0]}: {locked[key][1]} -> {now[key][1]}")
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: pip freeze | python constraints/changes.py constraints/tested.txt", file=sys.stderr)
        return 2
    lock = Path(argv[0])
    rows = changes(pins(lock.read_text().splitlines()), pins(sys.stdin))
    print(f"{len(rows)} package(s) differ from {lock}" + (":" if rows else ""))
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
