#!/usr/bin/env bash
# Download the pure-Python wheels of ace_core's dependencies that GPU images may lack into .whl/
# (run where pip can reach an index); tools/gpu_report.sh puts them on PYTHONPATH without installing.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
cd "$repo"
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF "/.whl/" "$exclude" 2>/dev/null || echo "/.whl/" >> "$exclude"
"$python" -m pip download --no-deps --only-binary=:all: -d "$repo/.whl" \
    "array-api-compat>=1.15,<2" "array-api-extra>=0.11"
