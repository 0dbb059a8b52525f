#!/usr/bin/env python
"""Screenshot a study report in headless Chromium, to look at what a reader sees first.

    python scripts/screenshot_report.py [results/default/report.html] [--out report.png]
                                        [--size 1400,2200]

Needs Debian's ``chromium`` (or ``chromium-browser`` / ``google-chrome``) on the PATH; without
one it prints a message and exits 0, so it can sit in any make target.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--hide-scrollbars"]


def screenshot(html: Path, out: Path, size: str = "1400,2200", timeout: float = 120) -> Path:
    """Render ``html`` in headless Chromium at ``size`` ("width,height") into the PNG ``out``."""
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        raise FileNotFoundError(f"no {' / '.join(BROWSERS)} on the PATH "
                                f"(Debian: apt-get install -y chromium)")
    if not html.is_file():
        raise FileNotFoundError(f"{html} does not exist: render it with "
                                f"`python -m partslib.report --profile PROFILE --html`")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile_dir:  # a fresh profile: no state, no prompts
        subprocess.run([browser, *FLAGS, f"--user-data-dir={profile_dir}",
                        f"--screenshot={out.resolve()}", f"--window-size={size}",
                        html.resolve().as_uri()],
                       check=True, capture_output=True, timeout=timeout)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("html", nargs="?", type=Path, default=Path("results/default/report.html"))
    ap.add_argument("--out", type=Path, default=Path("report.png"))
    ap.add_argument("--size", default="1400,2200", help="window WIDTH,HEIGHT in pixels")
    args = ap.parse_args(argv)
    try:
        print(f"screenshot: {screenshot(args.html, args.out, args.size)}")
    except FileNotFoundError as e:
        print(f"skipped: {e}")
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
