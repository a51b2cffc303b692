#!/usr/bin/env bash
# Fill the wheelhouse that lets asv_bench/compare.sh build its environments
# offline. Run it once, online, with the Python that will run asv (the wheels
# are for its version and platform):
#
#   bash asv_bench/make_wheelhouse.sh [--full] [DIR]
#
# DIR defaults to $ACE_ASV_WHEELHOUSE or asv_bench/.asv/wheelhouse
# (git-ignored). It holds what every asv environment installs (pip, the build
# tools, asv_runner, Pympler), the project's dependencies (read from
# pyproject.toml) and array-api-strict: about 20 MB. --full adds torch 2.13.0
# (its CPU build where pip finds one: 183 MB), JAX and their dependencies, for
# `compare.sh --full`: about 330 MB in all. Running it again updates the
# wheelhouse.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

full=0
if [ "${1:-}" = "--full" ]; then
    full=1
    shift
fi
dir=${1:-${ACE_ASV_WHEELHOUSE:-$here/.asv/wheelhouse}}
mkdir -p "$dir"

mapfile -t project_deps < <(python - "$here/../pyproject.toml" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as handle:
    print("\n".join(tomllib.load(handle)["project"]["dependencies"]))
PY
)
requirements=(
    pip setuptools wheel build packaging pyproject_hooks  # building the project's wheel
    asv_runner pympler                                    # installed by asv into every environment
    "${project_deps[@]}" array-api-strict                 # the default matrix entry
)
if [ "$full" = 1 ]; then
    requirements+=(torch==2.13.0 jax)
fi

echo "make_wheelhouse: downloading into $dir: ${requirements[*]}"
python -m pip download --quiet --dest "$dir" "${requirements[@]}"
echo "make_wheelhouse: $(find "$dir" -maxdepth 1 -type f | wc -l) files, $(du -sh "$dir" | cut -f1)"
