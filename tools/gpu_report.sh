#!/usr/bin/env bash
# The GPU check of ace_core from a source checkout, installing nothing: versions, the GPU tests (with
# the host run of the CUDA kernels and their ptxas resource check, which need only g++ and nvcc) and
# the GPU benchmark table (tools/gpu_report.py; its options pass through, see --help).
#
#   bash tools/gpu_report.sh                 # everything; the table also goes to $OUT if set
#   bash tools/gpu_report.sh --quick         # fewer timed calls
#   PYTHON=/path/to/python bash tools/gpu_report.sh --no-tests
#
# pyproject.toml maps backends/, integrations/ and reference/ to ace_core.backends,
# ace_core.integrations and ace_core.reference. Without an install, this script assembles the same
# layout in a temporary import root (symbolic links into the checkout, so nothing is copied or
# written in it) and puts that root first on PYTHONPATH.
#
# ace_core's two pure-Python dependencies (array-api-compat, array-api-extra) are not in every GPU
# image. Wheels of them in .whl/ (fetched where pip works: bash tools/fetch_gpu_wheels.sh) are put
# on PYTHONPATH as they are: Python imports pure-Python wheels from the zip, nothing is installed.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
root="$(mktemp -d "${TMPDIR:-/tmp}/ace_core_import_root.XXXXXX")"
trap 'rm -rf "$root"' EXIT

mkdir "$root/ace_core"
for entry in "$repo"/ace_core/*; do
    case "$(basename "$entry")" in
        __pycache__) ;;
        *) ln -s "$entry" "$root/ace_core/" ;;
    esac
done
for package in backends integrations reference; do
    ln -s "$repo/$package" "$root/ace_core/$package"
done

wheels=""
for wheel in "$repo"/.whl/array_api_compat-*.whl "$repo"/.whl/array_api_extra-*.whl; do
    [ -f "$wheel" ] && wheels="$wheels:$wheel"
done
export PYTHONPATH="$root$wheels${PYTHONPATH:+:$PYTHONPATH}"
# The checkout's own ace_core/ lacks backends/ & co.: keep Python (python -m, python -c, in every child
# process) from putting the working directory ahead of the import root.
export PYTHONSAFEPATH=1
export PYTHONDONTWRITEBYTECODE=1  # nothing written into the checkout
cd "$repo"
status=0
"$python" tools/gpu_report.py --import-root "$root" "$@" || status=$?
exit "$status"
