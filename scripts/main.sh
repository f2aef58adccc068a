#!/usr/bin/env bash
# The main job on the embedded default data: generate jets of every class with Pythia8 + FastJet
# (JetNet layout, cached) and summarize them (numbers + plots). Set-up included; fast the 2nd time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
N=${JETFLOWS_MAIN_N:-1000}
for cls in g q t w z; do
  .venv/bin/jetflows data generate --class "$cls" --n "$N" --out "data/main/$cls.hdf5" --overwrite
done
.venv/bin/jetflows data summary data/main/{g,q,t,w,z}.hdf5 --out runs/data_summary
echo "report: runs/data_summary/summary.md (plots: mass.png, multiplicity.png)"
