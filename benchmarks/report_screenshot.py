"""Screenshot a report's first screen in headless Chromium, to check what a reader sees first.

    python benchmarks/report_screenshot.py outputs/quickstart/report/index.html --out first_screen.png
    python benchmarks/report_screenshot.py outputs/quickstart/report/images.html --size 1400x900

Needs a Chromium or Chrome binary (``apt-get install chromium``; or --browser PATH). The default
window is 1400x900 CSS pixels: a laptop's first screen. Prints the PNG path; exits 2 with one line
when no browser is found. tests/test_report.py runs the same function on a synthetic report (and
skips, naming this fix, when no browser is installed).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str | None:
    """The first headless-capable Chromium-family binary on PATH, or None."""
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def screenshot(page: Path, out: Path, size: tuple[int, int] = (1400, 900), browser: str | None = None,
               timeout: float = 120.0) -> Path:
    """Render ``page`` (a local HTML file) at ``size`` and write the PNG to ``out``. Raises FileNotFoundError
    when no browser is found, subprocess.CalledProcessError when it fails."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium/Chrome found; install one (apt-get install chromium) or pass --browser")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: no user state, no first-run dialogs
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                        f"--screenshot={out}", Path(page).resolve().as_uri()],
                       check=True, capture_output=True, timeout=timeout)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path, help="an HTML file, e.g. outputs/quickstart/report/index.html")
    parser.add_argument("--out", type=Path, default=Path("first_screen.png"))
    parser.add_argument("--size", default="1400x900", help="window WIDTHxHEIGHT in CSS pixels")
    parser.add_argument("--browser", default=None, help="path of a Chromium/Chrome binary")
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    try:
        print(screenshot(args.page, args.out, (w, h), args.browser))
    except FileNotFoundError as exc:
        print(f"report_screenshot: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
