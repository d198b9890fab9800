#!/usr/bin/env bash
# Installs the project and its Python dependencies (torch pinned to the CPU build on this machine), the
# test tools at the versions CI passed with (.ci/constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -c .ci/constraints.txt -e '.[test]' 2>&1 | grep -v "Running pip as the 'root' user" || true
python3 -c "import gruv_hpc, torch, h5py, soundfile, submitit" || { echo "install failed" >&2; exit 1; }
