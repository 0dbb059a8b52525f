#!/usr/bin/env bash
# Run the whole study headlessly: scripts/study.sh [PROFILE] [--only NAME ...] [--dry-run] ...
# PROFILE is a file profiles/PROFILE.yaml (default: default). Results land in results/PROFILE/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
profile="${1:-default}"
[ $# -gt 0 ] && shift
cd "$ROOT"
exec "$PY" -m partslib.runner --profile "$profile" "$@"
