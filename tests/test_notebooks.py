"""Static checks of the study notebooks and of their nbval reference copies.

The regression itself is nbval on the reference copies (scripts/test.sh):

    pytest --nbval-lax --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg \
        tests/nb_reference

nbval re-executes the *reference copy's* cells, so these tests make sure the copies are current:
same code as notebooks/, same parameters as profiles/smoke.yaml. Regenerate them with
``make nb-reference`` (``python -m partslib.runner --profile smoke --reference``).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from partslib import runner

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
REFERENCE = ROOT / "tests" / "nb_reference"
SMOKE = runner.load_profile("smoke", ROOT)
REGENERATE = "regenerate with `make nb-reference`"


def _study_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"
            and "injected-parameters" not in c.metadata.get("tags", [])]


def test_notebook_pairs_are_in_sync():
    """Every notebooks/NN_name.ipynb is exactly what its jupytext source NN_name.py renders to
    (no outputs, stable ids): an edit to one file of a pair without the other fails here."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "notebooks.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_notebook_pair_check_catches_an_edit(tmp_path, monkeypatch):
    """The sync check is not vacuous: a changed cell in a source makes it report the pair."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nbsync", ROOT / "scripts" / "notebooks.py")
    nbsync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nbsync)
    src = NOTEBOOKS / "01_data.py"
    (tmp_path / src.name).write_text(src.read_text() + "\n# %%\nprint('edited')\n")
    ipynb = tmp_path / "01_data.ipynb"
    ipynb.write_text(src.with_suffix(".ipynb").read_text())
    monkeypatch.setattr(nbsync, "NOTEBOOKS", tmp_path)
    assert nbsync.check() == ["01_data.ipynb differs from 01_data.py (cells differ)"]
    os.utime(ipynb, (1, 1))  # the source is newer: the .ipynb is rewritten from it
    assert nbsync.write() == 0
    assert nbsync.check() == []
    # an .ipynb edited after its source is kept, and the write says so
    ipynb.write_text(ipynb.read_text().replace("edited", "edited in the notebook"))
    os.utime(tmp_path / src.name, (1, 1))
    assert nbsync.write() == 1
    assert "edited in the notebook" in ipynb.read_text()


@pytest.mark.parametrize("path", _study_notebooks(), ids=lambda p: p.stem)
def test_notebook_conventions(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [0], f"{path.name}: the first code cell must be the only one tagged parameters"
    declared = pm.inspect_notebook(str(path))
    assert {"profile", "results_dir", "seed", "threads"} <= set(declared), path.name
    assert "pipeline.setup(" in code[1].source or "set_num_threads(" in code[1].source, \
        f"{path.name}: the cell after the parameters sets threads and seeds (pipeline.setup)"
    checked = [c for c in code if c.source.startswith("# NBVAL_CHECK_OUTPUT")]
    assert len(checked) == 1, f"{path.name}: one cell prints the rounded metrics for nbval"
    for c in code:
        assert not c.get("outputs") and c.get("execution_count") is None, \
            f"{path.name}: commit notebooks with outputs stripped"
        if "plot_" in c.source:
            assert c.source.startswith("# NBVAL_IGNORE_OUTPUT"), f"{path.name}: {c.source[:60]}"
        tree = ast.parse("\n".join(line for line in c.source.splitlines()
                                   if not line.lstrip().startswith(("%", "!"))))
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not defs, f"{path.name}: logic belongs in partslib, not in notebook cells"


@pytest.mark.parametrize("name", SMOKE.notebooks)
def test_reference_copy_is_current(name):
    ref_path = REFERENCE / f"{name}.ipynb"
    assert ref_path.exists(), f"no reference copy {ref_path}; {REGENERATE}"
    ref = nbformat.read(ref_path, as_version=4)
    src = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert _code(ref) == _code(src), (
        f"{ref_path.name} runs older code than notebooks/; {REGENERATE}"
    )
    plan = runner.validate_profile(SMOKE, NOTEBOOKS, only=[name])
    injected = ref.metadata.get("papermill", {}).get("parameters", {})
    by_runner = {k: injected.get(k) for k in runner.RUNNER_PARAMS}
    assert {k: v for k, v in injected.items() if k not in runner.RUNNER_PARAMS} == plan[name], \
        f"{ref_path.name} was made with other parameters than profiles/smoke.yaml; {REGENERATE}"
    # relative paths: nbval re-runs the copy from tests/nb_reference on any checkout
    assert by_runner["results_dir"] == "_results/smoke" \
        and not Path(by_runner["data_dir"]).is_absolute()
    outputs = [o for c in ref.cells if c.cell_type == "code"
               and c.source.startswith("# NBVAL_CHECK_OUTPUT") for o in c.outputs]
    assert outputs, f"{ref_path.name} has no stored output in its NBVAL_CHECK_OUTPUT cell"
