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
# the evaluation's sanity check: an independent Pythia top sample scored against the reference
# should sit at the truth floor (ratios ~ 1); a trained model is scored the same way
.venv/bin/jetflows data generate --class t --n "$N" --seed 7 --out data/main/t_seed7.hdf5 --overwrite
.venv/bin/jetflows evaluate --real data/main/t.hdf5 --gen data/main/t_seed7.hdf5 \
  --out runs/evaluate_pythia_t --n $((N / 2))
echo "reports: runs/data_summary/summary.md, runs/evaluate_pythia_t/report.md (+ plots/)"
