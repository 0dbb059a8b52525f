"""One source for every default: the stage configs and the notebooks' parameter cells equal the
default study's profile (``profiles/default.yaml``).

A notebook that the default profile does not run (the real-photo notebooks) is checked against
the profile that runs it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
import yaml

from partslib.config import ClassifierConfig, DataConfig, HeadConfig, PDMConfig

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "profiles").glob("*.yaml")}
DEFAULT = PROFILES["default"]
# run settings, not defaults of the study: where it runs, whether bars are drawn and whether the
# interactive explorer is shown (on in JupyterLab, off in headless runs)
NOT_DEFAULTS = {"profile", "results_dir", "data_dir", "progress", "interactive"}
# profile knobs that are not stage configuration: where a stage runs, and what else a stage
# trains beside its model (also_features_only: the PDM without the image step, for T1)
RUN_KNOBS = {"device", "also_features_only"}
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _config_values(section: dict, config, prefix: str = "") -> dict[str, tuple]:
    """{profile name: (profile value, config value)} for the knobs of one stage."""
    fields = config.asdict()
    out = {}
    for name, value in section.items():
        if name in RUN_KNOBS:
            continue
        field = name.removeprefix(prefix)
        assert name.startswith(prefix) and field in fields, \
            f"profile knob {name!r} has no field in {type(config).__name__}"
        out[name] = (value, _plain(fields[field]))
    return out


@pytest.mark.parametrize("config, section, prefix", [
    (DataConfig(), {k: v for k, v in DEFAULT["common"].items() if k in
                    ("image_size", "train_seed", "n_train", "test_seed", "n_test",
                     "val_seed", "n_val", "classes")}, ""),
    (ClassifierConfig(), DEFAULT["02_classifier"], ""),
    (PDMConfig(), {k: v for k, v in DEFAULT["03_pdm"].items() if not k.startswith("head_")},
     "pdm_"),
    (HeadConfig(), {k: v for k, v in DEFAULT["03_pdm"].items() if k.startswith("head_")},
     "head_"),
], ids=["data", "classifier", "pdm", "head"])
def test_config_defaults_are_the_default_profile(config, section, prefix):
    pairs = _config_values(section, config, prefix)
    assert pairs, "no knob compared"
    differ = {k: v for k, v in pairs.items() if v[0] != v[1]}
    assert not differ, f"(profile, {type(config).__name__}) differ: {differ}"


def _parameters(path: Path) -> dict:
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    values = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            values[node.target.id] = ast.literal_eval(node.value)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                assert isinstance(t, ast.Name), f"{path.name}: unexpected assignment"
                values[t.id] = ast.literal_eval(node.value)
    return values


def _profile_of(notebook: str) -> dict:
    if notebook in DEFAULT["notebooks"]:
        return DEFAULT
    # the profile that defines the notebook's parameters, not one that extends it
    owners = [p for p in PROFILES.values()
              if notebook in p.get("notebooks", []) and "extends" not in p]
    assert owners, f"no profile runs {notebook}"
    return owners[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_parameter_defaults_are_the_profile(path):
    profile = _profile_of(path.stem)
    expected = {**profile.get("common", {}), **profile.get(path.stem, {})}
    params = _parameters(path)
    compared = {k: (v, expected[k]) for k, v in params.items()
                if k in expected and k not in NOT_DEFAULTS}
    assert compared, f"{path.name}: no parameter to compare"
    differ = {k: f"cell {a!r}, profile {b!r}" for k, (a, b) in compared.items() if a != b}
    assert not differ, f"{path.name}: parameter defaults differ from the profile: {differ}"
