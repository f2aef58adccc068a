#!/usr/bin/env bash
# The main job on the embedded default data. First the best models, shipped with the package:
# per class (g, q, t, w, z), 10,000 jets from the shipped model (the set flow's few-step
# student) scored against 5,000 fresh Pythia8 + FastJet jets of a seed the training never used,
# with stable ratios to the truth floor (runs/shipped/summary.md, per class report.md and
# plots/). Then the workflow on a small scale: the quickstart pipeline for top jets (4,500
# Pythia jets -> ConVAE -> latent flow -> evaluation; runs/quickstart/), and 10,000 top jets
# written by `jetflows sample` from the shipped model. Set-up included (7 min 15 s on 2 cores
# from a fresh clone with an empty jet cache, Intel Xeon); finished steps are
# skipped when run again (cached jets, same config), so the second run is quicker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/jetflows models --score runs/shipped "$@"
.venv/bin/jetflows pipeline --config configs/quickstart.yaml --classes t
.venv/bin/jetflows sample --n 10000 --class top --out runs/shipped/top_generated.hdf5 --overwrite
echo "shipped models: runs/shipped/summary.md, runs/shipped/<class>/report.md, plots/;" \
  "the workflow: runs/quickstart/summary.md, runs/quickstart/t/"
