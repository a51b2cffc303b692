#!/usr/bin/env bash
# Smoke test of the asv suite (CI runs it): import and check every benchmark,
# then run each one once, on the current Python environment, saving nothing.
# Exits non-zero when a benchmark fails to import, has a bad signature or
# raises (asv exits 2); a backend or device that is missing is a skip, not a
# failure. By default only the C = 37 parameter sets run (every benchmark
# still runs, on every backend installed); --all runs C = 7357 too.
#
#   bash asv_bench/smoke.sh [--all] [extra `asv run` options]
#
# Needs asv in the current environment (pip install -e ".[bench]") and the
# project installed there. The environment is asv's "existing:same"
# (--python=same would run the suite once per entry of the config's matrix).
set -euo pipefail
cd "$(dirname "$0")"

filter=(-b '[(, ]37[,)]')
if [ "${1:-}" = "--all" ]; then
    filter=()
    shift
fi

python -m asv machine --yes >/dev/null
python -m asv check -E existing:same
python -m asv run -E existing:same --quick --dry-run --show-stderr --durations=all "${filter[@]}" "$@"
