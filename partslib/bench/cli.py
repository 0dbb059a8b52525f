"""``python -m partslib.bench``: the benchmark's command line."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import torch

from partslib.bench.cases import DEFAULT_METHODS, DEFAULT_SIZES, METHODS, build_case
from partslib.bench.memory import child_memory
from partslib.bench.outputs import format_table, write_outputs
from partslib.bench.timing import BenchConfig, profile_ops, run_bench

__all__ = ["main"]

_DESCRIPTION = "Performance benchmark, table T4: explanation cost vs forward pass and peers."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m partslib.bench", description=_DESCRIPTION)
    p.add_argument("--profile", default="default",
                   help="writes results/<profile>/ (default: default)")
    p.add_argument("--results-dir", default=None, help="instead of results/<profile>/")
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS,
                   help="default: all but captum-shapley and pdm-shapley (slow; name them "
                        "to time them)")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds per size (>= 10)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, nargs="+", default=[64],
                   help="batch size, one for all sizes or one per size (e.g. 64 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--captum-baseline", choices=("blur", "zero"), default="blur")
    p.add_argument("--no-memory", action="store_true", help="skip the per-method subprocesses")
    p.add_argument("--memory-per-process", action="store_true",
                   help="one subprocess per method for peak memory (default: one per size)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--ops", action="store_true",
                   help="also print torch.profiler op tables of forward and pdm-region-soft")
    p.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m partslib.bench``: run the benchmark, write its outputs, print the table
    (with ``--child-memory``: measure peak memory in this process and print it as JSON)."""
    args = _parser().parse_args(argv)
    if args.results_dir is None:
        from partslib.io import find_root

        args.results_dir = str(find_root() / "results" / args.profile)
    if args.child_memory:
        print(json.dumps(child_memory(args.child_memory.split(","), args.sizes[0], args.batch[0],
                                       args.results_dir, args.seed, args.threads,
                                       args.captum_baseline)))
        return 0
    cfg = BenchConfig(results_dir=args.results_dir, sizes=tuple(args.sizes),
                      methods=tuple(args.methods), repeats=args.repeats, warmup=args.warmup,
                      threads=args.threads,
                      batch=tuple(args.batch),
                      seed=args.seed,
                      captum_baseline=args.captum_baseline,
                      memory=False if args.no_memory else
                      ("process" if args.memory_per_process else True),
                      progress=not args.no_progress)
    payload = run_bench(cfg)
    js, tc = write_outputs(cfg.results_dir, payload)
    print(format_table(payload))
    print(f"wrote {js} and {tc}")
    if args.ops:
        torch.set_num_threads(cfg.threads)
        for size in cfg.sizes:
            print(profile_ops(build_case(size, cfg.batches[size], cfg.results_dir, cfg.seed)))
    return 0
