#!/usr/bin/env bash
# The demo, end to end: install, synthesize a two-artist corpus, preprocess it, train the
# LSTM/GRU x artist x hidden grid (local executor, or Slurm when a cluster answers), analyze.
set -euo pipefail
cd "$(dirname "$0")"
OUT=${DEMO_OUT:-demo_out}
EXECUTOR=${DEMO_EXECUTOR:-auto}
t0=$(date +%s)

bash .ci/install.sh
step() { echo; echo "== $* ($(( $(date +%s) - t0 )) s)"; }

step "1/4 synthetic corpus"
[ -d "$OUT/corpus/circuit" ] || gruv corpus synth --out "$OUT/corpus"
step "2/4 preprocess (paper features: 44.1 kHz, 0.25 s blocks, [Re|Im] of the DFT)"
[ -f "$OUT/data/manifest.json" ] || gruv preprocess aurora="$OUT/corpus/aurora" circuit="$OUT/corpus/circuit" --out "$OUT/data"
step "3/4 sweep: jobs/demo.toml (executor: $EXECUTOR)"
gruv sweep submit jobs/demo.toml --out "$OUT/sweep" --executor "$EXECUTOR" --wait data="$OUT/data"
step "4/4 analysis"
gruv analyze "$OUT/sweep" --out "$OUT/report"
echo
echo "demo finished in $(( $(date +%s) - t0 )) s"
echo "report:      $(realpath "$OUT/report/index.html")"
echo "TensorBoard: gruv tensorboard $OUT/sweep   (or: tensorboard --logdir $OUT/sweep/runs)"
