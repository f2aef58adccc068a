"""Data fidelity and speed of the embedded Pythia8 + FastJet generator.

Prints, per class: the jet-mass peak with multiparton interactions (MPI) on and off, the median
multiplicity (every constituent), and jets/s with 1 and 2 processes. Saves mass and multiplicity
histograms (PNG) and the table (JSON, Markdown). Expected peaks at 1 TeV, R = 0.8: t in
[170, 190], w in [78, 95], z in [88, 102] GeV: pole mass plus what the underlying event and
radiation add inside the jet; the MPI-off peaks show how much of the shift is the underlying event.

    python benchmarks/data_fidelity.py [--n 3000] [--n-single 600] [--n-nompi 1500] [--out DIR]

Every run generates afresh (a temporary cache), so the timings are real.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from jetflows.classes import JET_TYPES
from pipelines.generate import GeneratorConfig, generate_jets
from pipelines.summary import mass_peak, write_summary

EXPECTED = {"t": (170, 190), "w": (78, 95), "z": (88, 102)}


def timed(cfg: GeneratorConfig, n: int, jobs: int, cache: Path):
    start = time.perf_counter()
    jets = generate_jets(cfg, n, jobs=jobs, cache_dir=cache, progress=False)
    return jets, n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="jets per class, 2 processes")
    parser.add_argument("--n-single", type=int, default=600, help="jets per class, 1 process")
    parser.add_argument("--n-nompi", type=int, default=1500, help="jets per class, MPI off")
    parser.add_argument("--classes", default="".join(JET_TYPES))
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/data_fidelity"))
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    rows, datasets = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, cls in enumerate(args.classes):
            cache = Path(tmp) / cls
            jets, rate2 = timed(GeneratorConfig(cls), args.n, 2, cache / "two")
            _, rate1 = timed(GeneratorConfig(cls, seed=1000 + i), args.n_single, 1, cache / "one")
            nompi, _ = timed(GeneratorConfig(cls, mpi=False), args.n_nompi, 2, cache / "nompi")
            datasets[cls] = jets
            rows[cls] = {
                "mass_peak": mass_peak(jets.jet_features[:, 2]),
                "mass_peak_no_mpi": mass_peak(nompi.jet_features[:, 2]),
                "multiplicity_median": float(np.median(jets.jet_features[:, 3])),
                "multiplicity_median_no_mpi": float(np.median(nompi.jet_features[:, 3])),
                "jets_per_s_1proc": rate1,
                "jets_per_s_2proc": rate2,
            }
            lo, hi = EXPECTED.get(cls, (None, None))
            verdict = (
                ""
                if lo is None
                else (
                    "  in range" if lo <= rows[cls]["mass_peak"] <= hi else f"  OUT of [{lo}, {hi}]"
                )
            )
            print(
                f"{cls}: " + ", ".join(f"{k} {v:.1f}" for k, v in rows[cls].items()) + verdict,
                flush=True,
            )
    write_summary(datasets, args.out)
    (args.out / "fidelity.json").write_text(json.dumps(rows, indent=2))
    total = sum(len(d) for d in datasets.values())
    print(f"{args.n} jets/class at 2 processes; plots in {args.out} ({total} jets)")


if __name__ == "__main__":
    main()
