"""Keep the study notebooks' pairs in sync: ``notebooks/NN_name.py`` (jupytext percent format,
the source that is reviewed and linted) and ``notebooks/NN_name.ipynb`` (what users open).

    python scripts/notebooks.py                  # write every .ipynb from its .py source
    python scripts/notebooks.py --check          # exit 1 when a pair differs; write nothing
    python scripts/notebooks.py --from-ipynb 03_pdm   # take an .ipynb's cells into its .py

The .ipynb files are written without outputs, with deterministic cell ids (``<name>-<index>``)
and the same metadata, so writing an unchanged source gives a byte-identical file. Nothing is
silently lost: an .ipynb whose cells were edited after its .py (outside JupyterLab's jupytext
pairing, which saves both files) is not overwritten; the script names it and says how to keep
those edits (``--from-ipynb``) or drop them (``--force``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
METADATA = {
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                   "name": "python3"},
    "language_info": {"name": "python"},
}


def sources() -> list[Path]:
    """The notebook sources ``notebooks/NN_*.py``, in order."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def render(source: Path) -> str:
    """The .ipynb text of a percent-format source: no outputs, stable ids, fixed metadata."""
    nb = jupytext.read(source, fmt="py:percent")
    for i, cell in enumerate(nb.cells):
        cell.id = f"{source.stem}-{i:02d}"
        cell.metadata = {k: v for k, v in cell.metadata.items() if k == "tags"}
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata = dict(METADATA)
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def _cells(text: str) -> list[tuple[str, str]]:
    nb = nbformat.reads(text, as_version=4)
    return [(c.cell_type, c.source) for c in nb.cells]


def check() -> list[str]:
    """Problems, one line each: a pair that differs, an .ipynb without a source."""
    problems = []
    for src in sources():
        ipynb = src.with_suffix(".ipynb")
        if not ipynb.exists():
            problems.append(f"{ipynb.name} is missing (source {src.name})")
        elif ipynb.read_text() != render(src):
            what = ("cells differ" if _cells(ipynb.read_text()) != _cells(render(src))
                    else "outputs, ids or metadata differ")
            problems.append(f"{ipynb.name} differs from {src.name} ({what})")
    for ipynb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        if not ipynb.with_suffix(".py").exists():
            problems.append(f"{ipynb.name} has no source {ipynb.with_suffix('.py').name}")
    return problems


def write(force: bool = False) -> int:
    refused = []
    for src in sources():
        ipynb, text = src.with_suffix(".ipynb"), render(src)
        if ipynb.exists():
            old = ipynb.read_text()
            if old == text:
                continue
            edited = _cells(old) != _cells(text) and ipynb.stat().st_mtime > src.stat().st_mtime
            if edited and not force:
                refused.append(ipynb.name)
                continue
        ipynb.write_text(text)
        print(f"wrote {ipynb.relative_to(NOTEBOOKS.parent)}")
    if refused:
        print("not overwritten, their cells were edited after the .py source: "
              + ", ".join(refused) + "\n  keep those edits: python scripts/notebooks.py "
              "--from-ipynb NAME; drop them: python scripts/notebooks.py --force",
              file=sys.stderr)
        return 1
    return 0


def from_ipynb(names: list[str]) -> int:
    for name in names:
        ipynb = NOTEBOOKS / f"{Path(name).stem}.ipynb"
        if not ipynb.exists():
            print(f"no notebook {ipynb}", file=sys.stderr)
            return 1
        nb = jupytext.read(ipynb)
        jupytext.write(nb, ipynb.with_suffix(".py"), fmt="py:percent")
        print(f"wrote {ipynb.with_suffix('.py').relative_to(NOTEBOOKS.parent)}")
        ipynb.write_text(render(ipynb.with_suffix(".py")))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report pairs that differ")
    mode.add_argument("--from-ipynb", nargs="+", metavar="NAME",
                      help="update these notebooks' .py sources from their .ipynb")
    ap.add_argument("--force", action="store_true",
                    help="overwrite .ipynb files even when their cells were edited")
    args = ap.parse_args(argv)
    if args.check:
        problems = check()
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("run: make notebooks (python scripts/notebooks.py)", file=sys.stderr)
        return 1 if problems else 0
    if args.from_ipynb:
        return from_ipynb(args.from_ipynb)
    return write(force=args.force)


if __name__ == "__main__":
    sys.exit(main())
