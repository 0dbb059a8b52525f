#!/usr/bin/env bash
# Lint (ruff, pyright), package tests, then the nbval regression of the smoke-profile reference
# notebooks. Every step runs; the script fails when any of them failed.
# Extra arguments go to the package tests' pytest (e.g. scripts/test.sh -k study -x).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
# One thread everywhere: CPU results depend on the thread count (pytorch/pytorch#88718).
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONHASHSEED=0 MPLBACKEND=Agg
set +e
echo "== lint: ruff check, pyright (basic)"
"$VENV/bin/ruff" check partslib tests scripts notebooks
status_ruff=$?
"$VENV/bin/pyright"
status_pyright=$?
echo "== package tests: pytest tests/"
"$PY" -m pytest tests/ -q "$@"
status_pkg=$?
echo "== notebook regression: nbval on tests/nb_reference (smoke profile)"
"$PY" -m pytest -q --nbval-lax --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg \
    tests/nb_reference
status_nb=$?
set -e
if [ $status_pkg -ne 0 ] || [ $status_nb -ne 0 ] || [ $status_ruff -ne 0 ] \
        || [ $status_pyright -ne 0 ]; then
    echo "FAILED: ruff exit $status_ruff, pyright exit $status_pyright, package tests exit" \
        "$status_pkg, notebook regression exit $status_nb" >&2
    exit 1
fi
