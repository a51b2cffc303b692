#!/usr/bin/env bash
# Regression check: benchmark two commits on this machine, offline, and fail
# when one got slower.
#
#   bash asv_bench/compare.sh [--full] [--factor F] BASE [HEAD] [-- asv options]
#
# BASE and HEAD are commits of this repository (HEAD defaults to HEAD; the
# committed trees are benchmarked, not the working tree). asv builds a wheel
# of the project at each commit and installs it into a virtualenv made from
# the wheelhouse of asv_bench/make_wheelhouse.sh (run that once, online), with
# PIP_NO_INDEX=1: nothing is fetched. It runs the `time_` and `peakmem_`
# benchmarks (the `track_` ones are for graphs) and compares them with
# `asv continuous`: a benchmark slower by more than the factor F (default 1.1,
# i.e. 10%) and outside the noise of its samples is printed under
# "PERFORMANCE DECREASED".
#
# Environment: by default NumPy and array-api-strict only (the numpy and
# array_api_strict backends); --full adds torch 2.13 (CPU) and JAX, which
# makes the environment about 1.5 GB and the run several times longer, and
# needs `make_wheelhouse.sh --full`. GPU backends are skipped unless the
# wheelhouse holds GPU builds and the machine has a GPU.
#
# Exit status: 0 no slowdown, 1 a slowdown (or a benchmark that newly fails),
# 2 a benchmark failed to run, 3 no wheelhouse or bad usage.
# Settings: ACE_ASV_WHEELHOUSE (wheelhouse folder), ACE_ASV_THREADS (threads
# per benchmark, default 1), ASV_BENCH (regex of benchmarks to run).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage() {
    sed -n '4p' "$0" | sed 's/^# *//' >&2
    exit 3
}
full=0
factor=1.1
positional=()
while [ $# -gt 0 ]; do
    case "$1" in
        --full) full=1 ;;
        --factor) factor=${2:?}; shift ;;
        --factor=*) factor=${1#--factor=} ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) echo "compare.sh: unknown option $1" >&2; usage ;;
        *) positional+=("$1") ;;
    esac
    shift
done
[ ${#positional[@]} -ge 1 ] && [ ${#positional[@]} -le 2 ] || usage
base=${positional[0]}
head=${positional[1]:-HEAD}

wheelhouse=${ACE_ASV_WHEELHOUSE:-$here/.asv/wheelhouse}
if ! compgen -G "$wheelhouse/*.whl" >/dev/null; then
    echo "compare.sh: no wheels in $wheelhouse; run asv_bench/make_wheelhouse.sh$([ $full = 1 ] && echo ' --full') once, online" >&2
    exit 3
fi

# The environment of asv.conf.json's matrix to use (asv names it after the
# Python version and the requirements).
python_version=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
environment="virtualenv-py$python_version-array-api-strict"
if [ "$full" = 1 ]; then
    environment="$environment-jax-torch==2.13.0"
fi

cd "$here"
# Commits are resolved in the repository, so that BASE may be a branch or HEAD~1.
base_hash=$(git rev-parse --verify "$base^{commit}")
head_hash=$(git rev-parse --verify "$head^{commit}")
echo "compare.sh: $base ($base_hash) -> $head ($head_hash), factor $factor, environment $environment"

python -m asv machine --yes >/dev/null
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$wheelhouse"
status=0
python -m asv continuous --factor "$factor" --environment "$environment" \
    --bench "${ASV_BENCH:-\.(time|peakmem)_}" --show-stderr "$@" "$base_hash" "$head_hash" || status=$?
case "$status" in
    0) echo "compare.sh: no slowdown beyond ${factor}x" ;;
    1) echo "compare.sh: slowdown beyond ${factor}x (see PERFORMANCE DECREASED above)" >&2 ;;
    *) echo "compare.sh: asv exited with status $status (a benchmark or a build failed)" >&2 ;;
esac
exit "$status"
