#!/usr/bin/env bash
# The main job on the embedded default data: the quickstart pipeline (per class: 4,500 Pythia8 +
# FastJet jets -> ConVAE -> latent flow -> 1,000 generated jets scored against 1,000 held-out
# real jets, beside the floor from 1,000 others), then 10,000 generated top jets. Set-up
# included (about 7.5 minutes on 2 cores from a fresh clone); finished stages are skipped when
# run again (same config), so the second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/jetflows pipeline --config configs/quickstart.yaml "$@"
.venv/bin/jetflows sample --n 10000 --class top --run runs/quickstart \
  --out runs/quickstart/top_generated.hdf5 --overwrite
echo "summary: runs/quickstart/summary.md; per class: runs/quickstart/<class>/report.md, plots/"
