"""Run the study's notebooks headlessly with papermill, one profile at a time.

    python -m partslib.study --profile smoke|default|gpu [--only NAME ...] [--dry-run]
                             [--results results] [--retrain] [--reference]

A profile is ``profiles/<profile>.yaml``::

    description: one line
    notebooks: [01_data, 02_classifier]   # run in this order
    common:                               # given to every notebook that declares the name
      seed: 0
    02_classifier:                        # given to that notebook only
      epochs: 14

The runner adds ``profile``, ``results_dir`` (absolute) and ``data_dir`` to every notebook that
declares them. Notebook ``NN_<stage>.ipynb`` writes its outputs under ``results_dir/<stage>/``
(``metrics.json`` among them); the runner merges those into ``results/<profile>/metrics.json``
with keys ``<stage>/<key>``, writes the executed notebooks to ``results/<profile>/notebooks/``
and the stage durations to ``results/<profile>/timings.json``.

A run never overwrites an earlier one: whatever ``results/<profile>/`` holds is moved to
``results/<profile>/previous/<timestamp>/`` first. Only ``checkpoints/`` stays, as a cache that
the training code resumes from when (and only when) its configuration matches; ``--retrain``
moves it away too.

Adding a notebook to the study: put ``notebooks/NN_<stage>.ipynb`` (with a cell tagged
``parameters``) next to the others and add its name to the profiles' ``notebooks`` lists.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import difflib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Profile", "ProfileError", "StageError", "load_profile", "validate_profile",
           "run_study", "stage_name", "archive_previous_run", "merge_metrics", "main"]

RUNNER_PARAMS = ("profile", "results_dir", "data_dir")
# Subfolders of results/<profile>/ that are not part of one run's results.
KEEP_DIRS = ("previous", "checkpoints")
_RESERVED_KEYS = ("notebooks", "common", "description")


class ProfileError(ValueError):
    """The profile file is malformed or does not fit the notebooks (all problems, one per line)."""


class StageError(RuntimeError):
    """A notebook failed; the message names the executed notebook and the failing cell."""


@dataclass
class Profile:
    name: str
    path: Path
    notebooks: list[str]
    common: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""

    def parameters(self, notebook: str, declared: Sequence[str]) -> dict[str, Any]:
        """Parameters for ``notebook``: the common ones it declares, then its own section."""
        params = {k: v for k, v in self.common.items() if k in declared}
        params.update(self.sections.get(notebook, {}))
        return params


def stage_name(notebook: str) -> str:
    """``"02_classifier"`` -> ``"classifier"``: the folder and metric prefix of a notebook."""
    return re.sub(r"^\d+[_-]", "", notebook)


def find_root(start: Path | None = None) -> Path:
    """The study root: the first of ``start`` (default cwd) and the source checkout of partslib
    that holds a ``profiles/`` folder."""
    candidates = [Path(start or Path.cwd()).resolve(), Path(__file__).resolve().parents[1]]
    for c in candidates:
        if (c / "profiles").is_dir():
            return c
    raise ProfileError(f"no profiles/ folder in {candidates[0]} or {candidates[1]}; run from the "
                       f"repository root or pass --root")


def load_profile(profile: str | os.PathLike, root: Path) -> Profile:
    """Read ``profiles/<profile>.yaml`` (or a path to a .yaml file) and check its structure."""
    p = Path(profile)
    path = p if p.suffix in (".yaml", ".yml") else root / "profiles" / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(f.stem for f in (root / "profiles").glob("*.yaml"))
        raise ProfileError(f"profile {str(profile)!r} not found: no file {path} "
                           f"(known profiles: {', '.join(known) or 'none'})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ProfileError(f"{path} is not valid YAML: {e}") from e
    errors = []
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: expected a mapping with 'notebooks' and 'common', "
                           f"got {type(raw).__name__}")
    notebooks = raw.get("notebooks")
    if not isinstance(notebooks, list) or not notebooks or \
            not all(isinstance(n, str) for n in notebooks):
        errors.append(f"{path}: 'notebooks' must be a non-empty list of notebook names")
        notebooks = []
    elif len(set(notebooks)) != len(notebooks):
        errors.append(f"{path}: 'notebooks' lists a notebook twice: {notebooks}")
    common = raw.get("common") or {}
    if not isinstance(common, dict):
        errors.append(f"{path}: 'common' must be a mapping of parameter: value")
        common = {}
    sections = {}
    for key, value in raw.items():
        if key in _RESERVED_KEYS:
            continue
        if key not in notebooks:
            hint = _suggest(key, notebooks)
            errors.append(f"{path}: section {key!r} is not a notebook of this profile's "
                          f"'notebooks' list{hint}")
            continue
        if not isinstance(value, dict):
            errors.append(f"{path}: section {key!r} must be a mapping of parameter: value")
            continue
        sections[key] = value
    for where, params in [("common", common), *sections.items()]:
        for k in params:
            if k in RUNNER_PARAMS:
                errors.append(f"{path}: {where}.{k} is set by the runner, not by a profile "
                              f"(use --results / --data)")
    if errors:
        raise ProfileError("\n".join(errors))
    return Profile(name=path.stem, path=path, notebooks=list(notebooks), common=dict(common),
                   sections=sections, description=str(raw.get("description", "")))


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# Types a parameter's annotation admits, by annotation base name.
_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
          "list": (list,), "tuple": (list,), "dict": (dict,)}


def _type_problem(value: Any, annotation: str) -> str | None:
    base = annotation.split("[")[0].strip()
    allowed = _TYPES.get(base)
    if allowed is None or value is None:
        return None
    if isinstance(value, bool) and bool not in allowed:
        return f"is {value!r} (bool), the notebook declares {annotation}"
    if not isinstance(value, allowed):
        hint = ""
        if isinstance(value, str) and base == "float":
            hint = " (YAML reads 3e-3 as a string: write 0.003 or 3.0e-3)"
        return f"is {value!r} ({type(value).__name__}), the notebook declares {annotation}{hint}"
    return None


def validate_profile(profile: Profile, notebooks_dir: Path,
                     only: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Check that every notebook exists and declares every parameter the profile sets for it.

    Returns ``{notebook: parameters from the profile}`` for the notebooks to run; raises
    :class:`ProfileError` listing every problem found.
    """
    import papermill as pm

    errors, declared_by = [], {}
    for name in only or ():
        if name not in profile.notebooks:
            errors.append(f"--only {name}: not in the notebooks of profile {profile.name!r} "
                          f"({', '.join(profile.notebooks)}){_suggest(name, profile.notebooks)}")
    for name in profile.notebooks:
        nb_path = notebooks_dir / f"{name}.ipynb"
        if not nb_path.is_file():
            errors.append(f"{profile.path}: notebook {name!r} does not exist (looked for "
                          f"{nb_path})")
            continue
        try:
            declared = pm.inspect_notebook(str(nb_path))
        except Exception as e:  # unreadable notebook
            errors.append(f"{nb_path}: cannot be read as a notebook ({type(e).__name__}: {e})")
            continue
        if not declared:
            errors.append(f"{nb_path}: has no cell tagged 'parameters' (or it declares nothing)")
        declared_by[name] = declared
        for key, value in profile.sections.get(name, {}).items():
            if key not in declared:
                errors.append(f"{profile.path}: {name}.{key}: unknown parameter; the parameters "
                              f"cell of {nb_path} declares {', '.join(declared) or 'nothing'}"
                              f"{_suggest(key, list(declared))}")
                continue
            problem = _type_problem(value, declared[key]["inferred_type_name"])
            if problem:
                errors.append(f"{profile.path}: {name}.{key} {problem}")
    if len(declared_by) == len(profile.notebooks):  # every notebook was readable
        all_declared = {k for d in declared_by.values() for k in d}
        for key, value in profile.common.items():
            if key not in all_declared:
                errors.append(f"{profile.path}: common.{key}: no notebook of the profile declares "
                              f"this parameter{_suggest(key, sorted(all_declared))}")
            for name, declared in declared_by.items():
                if key in declared:
                    problem = _type_problem(value, declared[key]["inferred_type_name"])
                    if problem:
                        errors.append(f"{profile.path}: common.{key} {problem} ({name})")
                        break
    if errors:
        raise ProfileError("\n".join(errors))
    selected = [n for n in profile.notebooks if not only or n in only]
    return {n: profile.parameters(n, list(declared_by[n])) for n in selected}


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
    dest.mkdir(parents=True)
    for p in entries:
        if rerun is None:
            shutil.move(str(p), str(dest / p.name))
        elif p.is_dir():
            shutil.copytree(p, dest / p.name)
        else:
            shutil.copy2(p, dest / p.name)
    for name in rerun or ():
        shutil.rmtree(run_dir / stage_name(name), ignore_errors=True)
        (run_dir / "notebooks" / f"{name}.ipynb").unlink(missing_ok=True)
    return dest


def _flatten(d: dict, prefix: str) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}/{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def merge_metrics(run_dir: Path, notebooks: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``{"<stage>/<key>": value}`` from ``run_dir/<stage>/metrics.json`` of each notebook, and
    the notebooks that wrote none."""
    merged, missing = {}, []
    for name in notebooks:
        stage = stage_name(name)
        path = run_dir / stage / "metrics.json"
        if not path.is_file():
            missing.append(name)
            continue
        merged.update(_flatten(json.loads(path.read_text()), stage))
    return merged, missing


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


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


def run_study(profile: str | os.PathLike, *, root: Path | None = None,
              results: Path | None = None, data_dir: Path | None = None,
              only: Sequence[str] | None = None, dry_run: bool = False, retrain: bool = False,
              reference: bool = False, kernel_name: str = "python3",
              execution_timeout: int | None = None, log=print) -> dict[str, Any]:
    """Validate a profile and run its notebooks; returns the merged metrics (``{}`` on dry run).

    ``reference=True`` writes papermill-executed copies for the nbval regression to
    ``tests/nb_reference/`` instead: they are executed from that folder with *relative*
    ``results_dir`` and ``data_dir``, so nbval can re-run them on any checkout.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    root = find_root(root)
    prof = load_profile(profile, root)
    notebooks_dir = root / "notebooks"
    plan = validate_profile(prof, notebooks_dir, only)
    log(f"profile {prof.name}: {len(plan)} notebook(s) {', '.join(plan)}"
        + (f" — {prof.description}" if prof.description else ""))
    if dry_run:
        for name, params in plan.items():
            log(f"  {name}: {json.dumps(params, default=str)}")
        log("dry run: profile is valid, nothing executed")
        return {}

    # kernels inherit this: idle OpenMP threads sleep instead of spinning, which keeps a run on
    # shared or oversubscribed cores from wasting most of its CPU time waiting (no effect on
    # results, only on wall time)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    data_dir = Path(data_dir or root / "data").resolve()
    if reference:
        nb_out_dir = root / "tests" / "nb_reference"
        exec_cwd = nb_out_dir
        results_root = nb_out_dir / "_results"
        run_dir = results_root / prof.name
        shutil.rmtree(run_dir, ignore_errors=True)  # references start from nothing, as nbval does
        runner_params = {"profile": prof.name,
                         "results_dir": os.path.relpath(run_dir, exec_cwd),
                         "data_dir": os.path.relpath(data_dir, exec_cwd)}
    else:
        results_root = Path(results or root / "results").resolve()
        run_dir = results_root / prof.name
        previous_stages = {}
        if only:
            try:
                previous_stages = json.loads((run_dir / "timings.json").read_text())["stages"]
            except Exception:
                previous_stages = {}
        moved = archive_previous_run(run_dir, include_checkpoints=retrain,
                                     rerun=list(plan) if only else None)
        if moved is not None:
            log(f"previous run of {prof.name} {'copied' if only else 'moved'} to {_rel(moved)}"
                + (f" (outputs of {', '.join(plan)} cleared, the other stages kept)"
                   if only else ""))
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            log(f"reusing checkpoints in {_rel(run_dir / 'checkpoints')} where their "
                f"configuration matches (--retrain trains from scratch)")
        nb_out_dir = run_dir / "notebooks"
        exec_cwd = notebooks_dir
        runner_params = {"profile": prof.name, "results_dir": str(run_dir),
                         "data_dir": str(data_dir)}
    run_dir.mkdir(parents=True, exist_ok=True)
    nb_out_dir.mkdir(parents=True, exist_ok=True)

    timings = {"profile": prof.name, "started": _dt.datetime.now().isoformat(timespec="seconds"),
               "status": "running", "stages": {}, "total_seconds": None,
               "only": list(plan) if only else None,
               "python": sys.version.split()[0], "cpu_count": os.cpu_count()}
    t_run = time.perf_counter()
    for i, (name, params) in enumerate(plan.items(), 1):
        declared = pm.inspect_notebook(str(notebooks_dir / f"{name}.ipynb"))
        params = {**{k: v for k, v in runner_params.items() if k in declared}, **params}
        out_nb = nb_out_dir / f"{name}.ipynb"
        log(f"[{i}/{len(plan)}] {name} ...", end="", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(notebooks_dir / f"{name}.ipynb"), str(out_nb),
                                parameters=params, kernel_name=kernel_name, cwd=str(exec_cwd),
                                progress_bar=False, log_output=False,
                                execution_timeout=execution_timeout,
                                store_widget_state=False, record_timing=False,
                                # the kernel's TCP-without-encryption warning is noise here
                                extra_arguments=["--IPKernelApp.log_level=ERROR"])
        except KeyboardInterrupt:
            timings["stages"][name] = round(time.perf_counter() - t0, 2)
            timings.update(status="interrupted", failed=name,
                           total_seconds=round(time.perf_counter() - t_run, 2))
            _write_json(run_dir / "timings.json", timings)
            log(" interrupted")
            raise
        except PapermillExecutionError as e:
            dt = time.perf_counter() - t0
            log(f" FAILED after {dt:.1f} s")
            timings["stages"][name] = round(dt, 2)
            timings.update(status="failed", failed=name,
                           total_seconds=round(time.perf_counter() - t_run, 2))
            _write_json(run_dir / "timings.json", timings)
            raise StageError(f"notebook {name} failed: see {_rel(out_nb)}, cell {e.cell_index} "
                             f"(In [{e.exec_count}]): {e.ename}: {e.evalue}") from None
        dt = time.perf_counter() - t0
        timings["stages"][name] = round(dt, 2)
        log(f" {dt:.1f} s")
        if reference:
            _strip_for_reference(out_nb)
    timings.update(status="ok", total_seconds=round(time.perf_counter() - t_run, 2))
    if only and not reference:  # keep the stage times of the stages that were not rerun
        timings["stages"] = {n: timings["stages"].get(n, previous_stages.get(n))
                             for n in prof.notebooks
                             if n in timings["stages"] or n in previous_stages}
    _write_json(run_dir / "timings.json", timings)
    merged, missing = merge_metrics(run_dir, list(prof.notebooks) if only else list(plan))
    for name in missing:
        log(f"warning: {name} wrote no {stage_name(name)}/metrics.json")
    _write_json(run_dir / "metrics.json", merged)
    summary_nb = nb_out_dir / "08_summary.ipynb"
    if not reference and "08_summary" in plan and summary_nb.exists():
        from partslib.report import export_html

        log(f"report: {_rel(export_html(summary_nb, run_dir / 'report.html'))}")
    where = _rel(nb_out_dir) if reference else _rel(run_dir)
    log(f"done in {timings['total_seconds']:.1f} s: {where} "
        f"({len(merged)} metrics in {_rel(run_dir / 'metrics.json')})")
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m partslib.study", description=__doc__.split("\n")[0])
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
    args = ap.parse_args(argv)
    try:
        run_study(args.profile, root=args.root, results=args.results, data_dir=args.data,
                  only=args.only, dry_run=args.dry_run, retrain=args.retrain,
                  reference=args.reference, execution_timeout=args.timeout)
    except (ProfileError, StageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ProfileError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
