#!/usr/bin/env bash
# The demo, end to end: install, synthesize a two-artist corpus, then one pipeline
# (jobs/pipeline_demo.toml): preprocess it in 2 tasks, train the LSTM/GRU x artist x hidden grid,
# analyze; queued on Slurm when a cluster answers (and waited for), else run here.
set -euo pipefail
cd "$(dirname "$0")"
OUT=${DEMO_OUT:-demo_out}
EXECUTOR=${DEMO_EXECUTOR:-auto}
t0=$(date +%s)

# Installs unless this tree's package already imports with its dependencies (a rerun, PYTHONPATH=.).
python3 -c "import os, sys, gruv_hpc, torch, h5py, soundfile, submitit
sys.exit(os.path.realpath(gruv_hpc.__path__[0]) != os.path.realpath('gruv_hpc'))" 2>/dev/null \
  && command -v gruv >/dev/null || bash .ci/install.sh
step() { echo; echo "== $* ($(( $(date +%s) - t0 )) s)"; }

step "1/2 synthetic corpus"
[ -d "$OUT/corpus/circuit" ] || gruv corpus synth --out "$OUT/corpus"
step "2/2 pipeline: jobs/pipeline_demo.toml (executor: $EXECUTOR): preprocess, the grid of jobs/demo.toml, analysis"
gruv pipeline submit jobs/pipeline_demo.toml --out "$OUT" --executor "$EXECUTOR" --wait \
  corpus.aurora="$OUT/corpus/aurora" corpus.circuit="$OUT/corpus/circuit"
echo
echo "demo finished in $(( $(date +%s) - t0 )) s"
echo "report:      $(realpath "$OUT/report/index.html")"
echo "TensorBoard: gruv tensorboard $OUT/sweep   (or: tensorboard --logdir $OUT/sweep/runs)"
