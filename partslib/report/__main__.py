"""``python -m partslib.report --profile default [--readme] [--html]``: the headline of a run
against the targets; ``--readme`` rewrites README.md's headline block, ``--html`` rewrites
``results/<profile>/report.html`` from the run folder."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from partslib.report.headline import headline_table, read_run, update_readme
from partslib.report.page import write_report


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m partslib.report",
                                 description="Headline numbers of a study run against the "
                                             "targets, and its HTML report")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--results", default="results", help="results root (default: results)")
    ap.add_argument("--readme", action="store_true", help="rewrite README.md's headline block")
    ap.add_argument("--html", action="store_true",
                    help="rewrite results/PROFILE/report.html from the run folder")
    args = ap.parse_args(argv)
    run_dir = Path(args.results) / args.profile
    if not (run_dir / "metrics.json").exists():
        print(f"error: {run_dir / 'metrics.json'} not found: run scripts/study.sh "
              f"{args.profile} first", file=sys.stderr)
        return 1
    run = read_run(run_dir)
    table = headline_table(run.metrics)
    print(table[["what", "measured", "ceiling", "target", "met"]].to_string(index=False))
    print(f"whole study wall time: {run.wall_note}")
    if args.readme:
        changed = update_readme(Path("README.md"), run.metrics, args.profile)
        print("README.md " + ("updated" if changed else "already up to date"))
    if args.html:
        print(f"report: {write_report(run_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
