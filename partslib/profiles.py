"""Study profiles: ``profiles/<profile>.yaml`` read, and checked against the notebooks.

A profile is::

    description: one line
    notebooks: [01_data, 02_classifier]   # run in this order
    common:                               # given to every notebook that declares the name
      seed: 0
    02_classifier:                        # given to that notebook only
      epochs: 14

Two optional keys: ``extends: default`` starts from another profile (its notebooks, common and
sections; this file's values replace or extend them, section by section), and ``seeds: [0, 1,
2]`` runs the whole profile once per seed (``common.seed`` set to each; the runner writes
``results/<profile>/seed-<n>/`` and the mean ± sd of every metric over the seeds).

The runner (:mod:`partslib.runner`) sets ``profile``, ``results_dir`` and ``data_dir`` itself.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RUNNER_PARAMS", "Profile", "ProfileError", "load_profile", "validate_profile"]

RUNNER_PARAMS = ("profile", "results_dir", "data_dir")
_RESERVED_KEYS = ("notebooks", "common", "description", "extends", "seeds")


class ProfileError(ValueError):
    """The profile file is malformed or does not fit the notebooks (all problems, one per line)."""


@dataclass
class Profile:
    name: str
    path: Path
    notebooks: list[str]
    common: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    seeds: list[int] = field(default_factory=list)

    def parameters(self, notebook: str, declared: Sequence[str]) -> dict[str, Any]:
        """Parameters for ``notebook``: the common ones it declares, then its own section."""
        params = {k: v for k, v in self.common.items() if k in declared}
        params.update(self.sections.get(notebook, {}))
        return params


def _profile_path(profile: str | os.PathLike, root: Path) -> Path:
    p = Path(profile)
    path = p if p.suffix in (".yaml", ".yml") else root / "profiles" / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(f.stem for f in (root / "profiles").glob("*.yaml"))
        raise ProfileError(f"profile {str(profile)!r} not found: no file {path} "
                           f"(known profiles: {', '.join(known) or 'none'})")
    return path


def _read_raw(path: Path, root: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The profile's mapping with ``extends`` resolved (the base first, then this file)."""
    if path in chain:
        raise ProfileError(f"{path}: 'extends' makes a cycle: "
                           f"{' -> '.join(str(p) for p in (*chain, path))}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ProfileError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: expected a mapping with 'notebooks' and 'common', "
                           f"got {type(raw).__name__}")
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    if not isinstance(base_name, str):
        raise ProfileError(f"{path}: 'extends' must name a profile, got {base_name!r}")
    merged = _read_raw(_profile_path(base_name, root), root, (*chain, path))
    merged.pop("description", None)
    for key, value in raw.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    for key in [k for k in merged if k not in _RESERVED_KEYS and k not in merged["notebooks"]]:
        del merged[key]  # a section of a base notebook this profile does not run
    return merged


def _check_seeds(seeds: Any, path: Path) -> list[int]:
    if seeds is None:
        return []
    if not isinstance(seeds, list) or not seeds or \
            not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ProfileError(f"{path}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ProfileError(f"{path}: 'seeds' lists a seed twice: {seeds}")
    return list(seeds)


def load_profile(profile: str | os.PathLike, root: Path) -> Profile:
    """Read ``profiles/<profile>.yaml`` (or a path to a .yaml file) and check its structure."""
    path = _profile_path(profile, root)
    raw = _read_raw(path, root)
    errors = []
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
                   sections=sections, description=str(raw.get("description", "")),
                   seeds=_check_seeds(raw.get("seeds"), path))


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
