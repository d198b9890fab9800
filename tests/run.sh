#!/usr/bin/env bash
# The test command (README): installs everything, starts the local Slurm cluster, runs pytest,
# stops the cluster through its pid files. Extra arguments go to pytest (e.g. -k preprocess).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the local cluster (slurm/cluster.sh install), real recorded music for a test, and
# Chromium for the report's browser test.
pkgs="slurm-wlm slurmdbd munge mariadb-server asc-music chromium"
missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  # shellcheck disable=SC2086
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi
bash .ci/install.sh

slurm/cluster.sh start
trap 'slurm/cluster.sh stop' EXIT
GRUV_REQUIRE_SLURM=1 GRUV_REQUIRE_BROWSER=1 python3 -m pytest tests "$@"
