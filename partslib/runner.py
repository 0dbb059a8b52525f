"""Run the study's notebooks headlessly with papermill, one profile at a time.

    python -m partslib.runner --profile smoke|default|gpu [--only NAME ...] [--dry-run]
                              [--results results] [--retrain] [--reference] [--no-progress]

A profile is ``profiles/<profile>.yaml`` (format: :mod:`partslib.profiles`). The runner adds
``profile``, ``results_dir`` (absolute) and ``data_dir`` to every notebook that declares them.
Notebook ``NN_<stage>.ipynb`` writes its outputs under ``results_dir/<stage>/``
(``metrics.json`` among them). Results flow one way: after EACH stage the runner merges the
stages' metrics into ``results/<profile>/metrics.json`` (keys ``<stage>/<key>``) and rewrites
``results/<profile>/timings.json`` (status ``running``, the stages so far), so a later stage
reads both and never merges anything itself; the executed notebooks go to
``results/<profile>/notebooks/``. When a profile has the summary stage, the runner renders
``report.html`` again after the last stage, from the final metrics and timings.

On a terminal (and not in CI) each stage shows one progress bar: the notebook's cell and the
library's running loop, with its epoch and an estimate of its time left
(:mod:`partslib.progress`); the warnings a notebook showed are logged after its stage.

This module is the command line; nothing in partslib imports it.

A run never overwrites an earlier one: whatever ``results/<profile>/`` holds is moved to
``results/<profile>/previous/<timestamp>/`` first. Only ``checkpoints/`` stays, as a cache that
the training code resumes from when (and only when) its configuration matches; ``--retrain``
moves it away too.

Adding a notebook to the study: put ``notebooks/NN_<stage>.ipynb`` (with a cell tagged
``parameters``) next to the others and add its name to the profiles' ``notebooks`` lists.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from partslib.io import (
    StudyRootError,
    find_root,
    merge_metrics,
    stage_name,
    temp_sibling,
    write_json,
)
from partslib.profiles import RUNNER_PARAMS, Profile, ProfileError, load_profile, validate_profile
from partslib.progress import (
    StageMonitor,
    cell_progress_engine,
    notebook_warnings,
    show_progress,
)

__all__ = [
    "RUNNER_PARAMS",
    "Profile",
    "ProfileError",
    "RunTimings",
    "StageError",
    "archive_previous_run",
    "find_root",
    "load_profile",
    "main",
    "merge_metrics",
    "run_study",
    "stage_name",
    "validate_profile",
]

# Subfolders of results/<profile>/ that are not part of one run's results.
KEEP_DIRS = ("previous", "checkpoints")


class StageError(RuntimeError):
    """A notebook failed; the message names the executed notebook and the failing cell."""


def archive_previous_run(run_dir: Path, include_checkpoints: bool = False,
                         rerun: Sequence[str] | None = None) -> Path | None:
    """Move everything ``run_dir`` holds (but ``previous/`` and, unless asked, ``checkpoints/``)
    to ``run_dir/previous/<timestamp>/``; returns that folder, or None when there was nothing.

    With ``rerun`` (the notebooks of an ``--only`` run) everything is *copied* to the archive
    and only the outputs of those notebooks are cleared, so the run folder keeps the results of
    the stages that are not rerun."""
    if not run_dir.is_dir():
        return None
    keep = {"previous"} if include_checkpoints else set(KEEP_DIRS)
    entries = sorted(p for p in run_dir.iterdir() if p.name not in keep)
    if not entries:
        return None
    stamp = None
    try:  # name the archive after the run it holds, when that run says when it started
        started = json.loads((run_dir / "timings.json").read_text())["started"]
        stamp = _dt.datetime.fromisoformat(started).strftime("%Y%m%d-%H%M%S")
    except Exception:
        newest = max(p.stat().st_mtime for p in entries)
        stamp = _dt.datetime.fromtimestamp(newest).strftime("%Y%m%d-%H%M%S")
    dest = run_dir / "previous" / stamp
    n = 1
    while dest.exists():
        n += 1
        dest = run_dir / "previous" / f"{stamp}-{n}"
    _archive_into(dest, entries, move=rerun is None)
    for name in rerun or ():
        shutil.rmtree(run_dir / stage_name(name), ignore_errors=True)
        (run_dir / "notebooks" / f"{name}.ipynb").unlink(missing_ok=True)
    return dest


def _archive_into(dest: Path, entries: Sequence[Path], move: bool) -> None:
    """Move (or copy) ``entries`` into a hidden sibling of ``dest`` renamed to ``dest`` once
    complete; on any failure what was moved is moved back and the hidden folder removed, so
    the run folder is as it was and no half archive is left. (A process killed mid-way leaves
    what it had moved in ``previous/.<stamp>.partial-*``: hidden, never deleted.)"""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(dest)
    tmp.mkdir()
    moved: list[Path] = []
    try:
        for p in entries:
            if move:
                os.rename(p, tmp / p.name)  # same file system: nothing is copied
                moved.append(p)
            elif p.is_dir():
                shutil.copytree(p, tmp / p.name)
            else:
                shutil.copy2(p, tmp / p.name)
        os.rename(tmp, dest)
    except BaseException:
        for p in moved:
            if (tmp / p.name).exists() and not p.exists():
                os.rename(tmp / p.name, p)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _strip_for_reference(nb_path: Path) -> None:
    """Drop what changes on every run (timings, absolute paths, widget state, images) from a
    reference copy; nbval ignores all of it anyway."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    pm_meta = nb.metadata.get("papermill", {})
    nb.metadata["papermill"] = {"parameters": pm_meta.get("parameters", {})}
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            if "data" in out:
                for key in [k for k in out["data"] if k.startswith("image/") or
                            k in ("text/html", "application/vnd.jupyter.widget-view+json")]:
                    del out["data"][key]
                if not out["data"]:
                    continue
            outputs.append(out)
        cell.outputs = outputs
    nbformat.write(nb, nb_path)


class RunTimings:
    """``timings.json`` of a run, rewritten after every stage.

    While the study runs, ``status`` is ``"running"``, ``stages`` holds the seconds of the stages
    done so far and ``elapsed_seconds`` the time since the start; at the end ``status`` becomes
    ``"ok"``, ``"failed"`` or ``"interrupted"`` and ``total_seconds`` is set. On an ``--only``
    run the stages that are not rerun keep their seconds from the run folder's last timings.
    """

    def __init__(self, path: Path, profile: Profile, plan: Sequence[str],
                 only: bool, kept_stages: dict[str, float] | None = None) -> None:
        self.path, self._order, self._kept = path, list(profile.notebooks), kept_stages or {}
        self._t0 = time.perf_counter()
        self._done: dict[str, float] = {}
        self.data: dict[str, Any] = {
            "profile": profile.name,
            "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "status": "running", "notebooks": list(plan), "stages": {},
            "elapsed_seconds": 0.0, "total_seconds": None,
            "only": list(plan) if only else None,
            "python": sys.version.split()[0], "cpu_count": os.cpu_count()}

    def _write(self) -> None:
        stages = {n: self._done.get(n, self._kept.get(n)) for n in self._order
                  if n in self._done or n in self._kept}
        self.data.update(stages=stages,
                         elapsed_seconds=round(time.perf_counter() - self._t0, 2),
                         updated=_dt.datetime.now().isoformat(timespec="seconds"))
        write_json(self.path, self.data)

    def start(self) -> None:
        self._write()

    def stage_done(self, name: str, seconds: float) -> None:
        self._done[name] = round(seconds, 2)
        self._write()

    def finish(self, status: str, failed: str | None = None) -> None:
        self.data.update(status=status,
                         total_seconds=round(time.perf_counter() - self._t0, 2))
        if failed is not None:
            self.data["failed"] = failed
        self._write()


@dataclass
class _Target:
    """Where one run writes: the run folder, the executed notebooks, the kernels' cwd."""
    run_dir: Path
    nb_out_dir: Path
    exec_cwd: Path
    params: dict[str, str]  # the runner's parameters (profile, results_dir, data_dir)


def _prepare(prof: Profile, plan: Sequence[str], root: Path, results: Path | None,
             data_dir: Path, only: bool, retrain: bool, reference: bool,
             log: Callable[..., None]) -> tuple[_Target, dict[str, float]]:
    """Set the run folder up (archiving the previous run); returns it and, on an ``--only``
    run, the stage seconds of the run folder's last timings."""
    kept: dict[str, float] = {}
    if reference:
        nb_out_dir = root / "tests" / "nb_reference"
        run_dir = nb_out_dir / "_results" / prof.name
        shutil.rmtree(run_dir, ignore_errors=True)  # references start from nothing, as nbval does
        target = _Target(run_dir, nb_out_dir, nb_out_dir,
                         {"profile": prof.name,
                          "results_dir": os.path.relpath(run_dir, nb_out_dir),
                          "data_dir": os.path.relpath(data_dir, nb_out_dir)})
    else:
        run_dir = Path(results or root / "results").resolve() / prof.name
        if only:
            with contextlib.suppress(Exception):
                kept = json.loads((run_dir / "timings.json").read_text())["stages"]
        moved = archive_previous_run(run_dir, include_checkpoints=retrain,
                                     rerun=list(plan) if only else None)
        if moved is not None:
            log(f"previous run of {prof.name} {'copied' if only else 'moved'} to {_rel(moved)}"
                + (f" (outputs of {', '.join(plan)} cleared, the other stages kept)"
                   if only else ""))
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            log(f"reusing checkpoints in {_rel(run_dir / 'checkpoints')} where their "
                f"configuration matches (--retrain trains from scratch)")
        target = _Target(run_dir, run_dir / "notebooks", root / "notebooks",
                         {"profile": prof.name, "results_dir": str(run_dir),
                          "data_dir": str(data_dir)})
    target.run_dir.mkdir(parents=True, exist_ok=True)
    target.nb_out_dir.mkdir(parents=True, exist_ok=True)
    return target, {k: v for k, v in kept.items() if k not in plan}


def _last_stage_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds of each stage in the run folder's last timings (a progress bar's estimate)."""
    try:
        stages = json.loads((run_dir / "timings.json").read_text())["stages"]
        return {str(k): float(v) for k, v in stages.items() if v is not None}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _merge(run_dir: Path, prof: Profile) -> tuple[dict[str, Any], list[str]]:
    """Merge the metrics of every stage present into ``run_dir/metrics.json``."""
    merged, missing = merge_metrics(run_dir, prof.notebooks)
    write_json(run_dir / "metrics.json", merged)
    return merged, missing


def _report_warnings(name: str, out_nb: Path, log: Callable[..., None]) -> None:
    for count, text in notebook_warnings(out_nb):
        log(f"warning in {name} (In [{count}]): {text}")


def _execute(name: str, params: dict[str, Any], notebooks_dir: Path, target: _Target,
             timings: RunTimings, kernel_name: str, execution_timeout: int | None) -> float:
    """Execute one notebook; on failure or interrupt, finish the timings and raise."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    out_nb = target.nb_out_dir / f"{name}.ipynb"
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(notebooks_dir / f"{name}.ipynb"), str(out_nb),
                            parameters=params, kernel_name=kernel_name, cwd=str(target.exec_cwd),
                            engine_name=cell_progress_engine(),
                            progress_bar=False, log_output=False,
                            execution_timeout=execution_timeout,
                            store_widget_state=False, record_timing=False,
                            # the kernel's TCP-without-encryption warning is noise here
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except KeyboardInterrupt:
        timings.stage_done(name, time.perf_counter() - t0)
        timings.finish("interrupted", failed=name)
        raise
    except PapermillExecutionError as e:
        timings.stage_done(name, time.perf_counter() - t0)
        timings.finish("failed", failed=name)
        raise StageError(f"notebook {name} failed after {time.perf_counter() - t0:.1f} s: see "
                         f"{_rel(out_nb)}, cell {e.cell_index} (In [{e.exec_count}]): "
                         f"{e.ename}: {e.evalue}") from None
    return time.perf_counter() - t0


def run_study(profile: str | os.PathLike, *, root: Path | None = None,
              results: Path | None = None, data_dir: Path | None = None,
              only: Sequence[str] | None = None, dry_run: bool = False, retrain: bool = False,
              reference: bool = False, kernel_name: str = "python3",
              execution_timeout: int | None = None,
              log: Callable[..., None] = print, progress: bool | None = None) -> dict[str, Any]:
    """Validate a profile and run its notebooks; returns the merged metrics (``{}`` on dry run).

    ``progress`` draws one bar per stage on stderr (the notebook's cell, the library's running
    loop with its epoch and an estimate of its time left: :mod:`partslib.progress`); default:
    on a terminal, unless ``CI`` is set. Warnings a notebook shows are logged after its stage.

    After each stage, ``metrics.json`` and ``timings.json`` of the run folder are rewritten;
    after the last one, ``report.html`` is rendered when the profile has the ``08_summary``
    stage. ``reference=True`` writes papermill-executed copies for the nbval regression to
    ``tests/nb_reference/`` instead: they are executed from that folder with *relative*
    ``results_dir`` and ``data_dir``, so nbval can re-run them on any checkout. A profile with
    ``seeds`` runs once per seed (see :mod:`partslib.profiles`); the returned metrics are then
    the mean and sd over the seeds.
    """
    try:
        root = find_root(root)
    except StudyRootError as e:
        raise ProfileError(str(e)) from None
    prof = load_profile(profile, root)
    notebooks_dir = root / "notebooks"
    plan = validate_profile(prof, notebooks_dir, only)
    log(f"profile {prof.name}: {len(plan)} notebook(s) {', '.join(plan)}"
        + (f" — {prof.description}" if prof.description else ""))
    if dry_run:
        for name, params in plan.items():
            log(f"  {name}: {json.dumps(params, default=str)}")
        if prof.seeds:
            log(f"  seeds {prof.seeds}: the notebooks run once per seed (common.seed), into "
                f"{prof.name}/seed-<n>/")
        log("dry run: profile is valid, nothing executed")
        return {}

    # kernels inherit this: idle OpenMP threads sleep instead of spinning, which keeps a run on
    # shared or oversubscribed cores from wasting most of its CPU time waiting (no effect on
    # results, only on wall time)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    data = Path(data_dir or root / "data").resolve()
    bars = show_progress() if progress is None else progress
    if prof.seeds and not reference:
        return _run_seeds(prof, notebooks_dir, root, results, data, only, retrain, log,
                          kernel_name=kernel_name, execution_timeout=execution_timeout,
                          progress=bars)
    return _run_plan(prof, plan, notebooks_dir, root, results, data, only, retrain, reference,
                     log, kernel_name=kernel_name, execution_timeout=execution_timeout,
                     progress=bars)


def _run_seeds(prof: Profile, notebooks_dir: Path, root: Path, results: Path | None,
               data_dir: Path, only: Sequence[str] | None, retrain: bool,
               log: Callable[..., None], **kwargs: Any) -> dict[str, Any]:
    """Run the profile once per seed into ``<profile>/seed-<n>/``, then write the mean ± sd
    of every metric over the seeds (:func:`partslib.report.seeds.write_seed_summary`)."""
    from partslib.report.seeds import write_seed_summary

    runs = {}
    for s in prof.seeds:
        sub = replace(prof, name=f"{prof.name}/seed-{s}", common={**prof.common, "seed": s},
                      seeds=[])
        log(f"seed {s} ({prof.seeds.index(s) + 1}/{len(prof.seeds)})")
        plan = validate_profile(sub, notebooks_dir, only)
        runs[s] = _run_plan(sub, plan, notebooks_dir, root, results, data_dir, only, retrain,
                            False, log, **kwargs)
    out = Path(results or root / "results").resolve() / prof.name
    summary = write_seed_summary(out, runs)
    log(f"seeds {prof.seeds}: mean ± sd of {len(summary)} metrics in {_rel(out / 'seeds.csv')}")
    return {f"{k}/{stat}": v for k, mean, sd in zip(summary.index, summary["mean"].tolist(),
                                                     summary["sd"].tolist())
            for stat, v in (("mean", mean), ("sd", sd))}


def _run_plan(prof: Profile, plan: dict[str, dict[str, Any]], notebooks_dir: Path, root: Path,
              results: Path | None, data_dir: Path, only: Sequence[str] | None, retrain: bool,
              reference: bool, log: Callable[..., None], *, kernel_name: str,
              execution_timeout: int | None, progress: bool = False) -> dict[str, Any]:
    """Execute the notebooks of ``plan`` into the profile's run folder (see :func:`run_study`)."""
    import papermill as pm

    last = _last_stage_seconds(Path(results or root / "results").resolve() / prof.name)
    target, kept = _prepare(prof, list(plan), root, results, data_dir, bool(only), retrain,
                            reference, log)
    timings = RunTimings(target.run_dir / "timings.json", prof, list(plan), bool(only), kept)
    timings.start()
    merged, _ = _merge(target.run_dir, prof)  # an --only run's later stages read the kept ones
    for i, (name, params) in enumerate(plan.items(), 1):
        declared = pm.inspect_notebook(str(notebooks_dir / f"{name}.ipynb"))
        params = {**{k: v for k, v in target.params.items() if k in declared}, **params}
        if retrain and "resume" in declared:  # --only --retrain: the copied checkpoints of
            params["resume"] = False          # the rerun stages are not reused either
        label = f"[{i}/{len(plan)}] {name} ..."
        if not progress:
            log(label, end="", flush=True)
        prefix = label if progress else ""  # with a bar, the stage's line is written at its end
        try:
            with (StageMonitor(label, expected=last.get(name)) if progress
                  else contextlib.nullcontext()):
                dt = _execute(name, params, notebooks_dir, target, timings, kernel_name,
                              execution_timeout)
        except KeyboardInterrupt:
            log(f"{prefix} interrupted")
            raise
        except StageError:
            log(f"{prefix} FAILED")
            _report_warnings(name, target.nb_out_dir / f"{name}.ipynb", log)
            raise
        log(f"{prefix} {dt:.1f} s")
        _report_warnings(name, target.nb_out_dir / f"{name}.ipynb", log)
        timings.stage_done(name, dt)
        merged, _ = _merge(target.run_dir, prof)
        if reference:
            _strip_for_reference(target.nb_out_dir / f"{name}.ipynb")
    timings.finish("ok")
    merged, missing = _merge(target.run_dir, prof)
    for name in missing:
        if name in plan:
            log(f"warning: {name} wrote no {stage_name(name)}/metrics.json")
    if not reference and "08_summary" in prof.notebooks:
        from partslib.report import write_report

        log(f"report: {_rel(write_report(target.run_dir))}")
    where = _rel(target.nb_out_dir) if reference else _rel(target.run_dir)
    log(f"done in {timings.data['total_seconds']:.1f} s: {where} "
        f"({len(merged)} metrics in {_rel(target.run_dir / 'metrics.json')})")
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m partslib.runner",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--profile", default="default",
                    help="profile name (profiles/NAME.yaml) or path to a .yaml file")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these notebooks")
    ap.add_argument("--dry-run", action="store_true",
                    help="validate the profile against the notebooks; execute nothing")
    ap.add_argument("--results", type=Path, help="results root (default: ROOT/results)")
    ap.add_argument("--data", type=Path, help="data cache folder (default: ROOT/data)")
    ap.add_argument("--root", type=Path, help="study root holding profiles/ and notebooks/")
    ap.add_argument("--retrain", action="store_true",
                    help="also move checkpoints/ away, so every model trains from scratch")
    ap.add_argument("--reference", action="store_true",
                    help="write the nbval reference copies to tests/nb_reference/")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    ap.add_argument("--no-progress", action="store_true",
                    help="no progress bars (default: bars on a terminal, none when CI is set)")
    args = ap.parse_args(argv)
    try:
        run_study(args.profile, root=args.root, results=args.results, data_dir=args.data,
                  only=args.only, dry_run=args.dry_run, retrain=args.retrain,
                  reference=args.reference, execution_timeout=args.timeout,
                  progress=False if args.no_progress else None)
    except (ProfileError, StageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ProfileError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
