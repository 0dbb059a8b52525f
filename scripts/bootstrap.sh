#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv, or $PARTSLIB_VENV) and bring it up to
# date with pyproject.toml. Needs only Python >= 3.11 (python3.11, python3 or $PYTHON).
#
#   source scripts/bootstrap.sh        # sets ROOT, VENV, PY; installs only when needed
#   scripts/bootstrap.sh CMD ARGS...   # the same, then runs CMD from .venv/bin (e.g. jupyter lab)
#
# The install is skipped when .venv/.partslib-stamp holds the hash of pyproject.toml (and of this
# script and the interpreter version); edit pyproject.toml and the next call reinstalls.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PARTSLIB_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

_partslib_base_python() {
    local cand
    for cand in "${PYTHON:-}" python3.11 python3 python; do
        [ -n "$cand" ] || continue
        command -v "$cand" >/dev/null 2>&1 || continue
        if "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$cand"
            return 0
        fi
    done
    echo "error: partslib needs Python >= 3.11 (tried \$PYTHON, python3.11, python3, python)" >&2
    return 1
}

if [ ! -x "$PY" ]; then
    base="$(_partslib_base_python)"
    echo "creating virtual environment $VENV with $base" >&2
    "$base" -m venv "$VENV"
fi

_stamp_file="$VENV/.partslib-stamp"
_stamp="$(cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-64) $("$PY" -c 'import sys; print(sys.version.split()[0])')"
if [ "$(cat "$_stamp_file" 2>/dev/null || true)" != "$_stamp" ]; then
    echo "installing partslib and its dependencies into $VENV (pyproject.toml changed or new environment)" >&2
    # torch and torchvision first, at the pins of pyproject.toml (the one place they are written).
    _torch_pins="$(grep -oE '"torch(vision)?==[^"]+"' "$ROOT/pyproject.toml" | tr -d '"' | tr '\n' ' ')"
    # (the grep drops pip's notes about unreachable extra indexes of some machines' pip config)
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet $_torch_pins 2> >(grep -v '^WARNING: Location' >&2)
    "$PY" -m pip install --quiet -e "$ROOT[all]" 2> >(grep -v '^WARNING: Location' >&2)
    echo "$_stamp" > "$_stamp_file"
fi

if [ "${BASH_SOURCE[0]}" = "$0" ] && [ $# -gt 0 ]; then
    cmd="$1"; shift
    if [ -x "$VENV/bin/$cmd" ]; then cmd="$VENV/bin/$cmd"; fi
    cd "$ROOT"
    exec "$cmd" "$@"
fi
