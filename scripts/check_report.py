"""Crawl a built mibench report in headless Chromium and fail on any problem.

Usage: ``python scripts/check_report.py OUT_ROOT [--screenshots DIR]``

Build the report first (``mibench report``). Every page reachable from ``OUT_ROOT/index.html`` is
opened from a local HTTP server; console errors, failed requests, broken images, dangling links
and tables that differ from their CSV are listed (see
:func:`mibench_lib.studies.report.check_site`). Exit status 0 when there is none, 1 otherwise.
Chromium is Debian's ``/usr/bin/chromium`` (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mibench_lib.studies.report import CHROMIUM, check_site


def main(argv: list[str] | None = None) -> int:
    """Check the site; print each problem on its own line; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_root", type=Path, help="the outputs folder holding index.html")
    parser.add_argument(
        "--screenshots", type=Path, default=None, help="save a full-page PNG of each page here"
    )
    parser.add_argument("--chromium", default=CHROMIUM, help=f"browser binary (default {CHROMIUM})")
    args = parser.parse_args(argv)
    try:
        problems = check_site(
            args.out_root, screenshot_dir=args.screenshots, executable_path=args.chromium
        )
    except FileNotFoundError as err:
        print(f"check_report: {err}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem)
    if problems:
        print(f"check_report: {len(problems)} problem(s) in {args.out_root}", file=sys.stderr)
        return 1
    shots = f"; screenshots in {args.screenshots}" if args.screenshots else ""
    print(f"check_report: {args.out_root} is sound{shots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
