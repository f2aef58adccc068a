"""Does the ConVAE reconstruct jets, and do two-stage jets cover the real ones? Before vs after.

Runs the pipeline (the same code users run) per class for a ConVAE size (the quickstart's or the
research code's) with the settings before the fix (min-max scaling into a sigmoid output,
Chamfer in physical units, the original KL weight) and after it (the shipped config), then
prints the reconstruction diagnostics on held-out jets (EMD(input, reconstruction) over
EMD(input, another jet), input-vs-reconstruction correlations of mass, tau21, tau32 and D2, the
W1 of reconstructed tau21, tau32, D2 over their floors, spread ratios) and the two-stage
generation's spread, COV and W1 ratios against the truth floor (>= 1,000 vs 1,000 jets).
``--size standard`` runs configs/standard.yaml on its own data (20,160 training jets a class,
5,040 held out) and has no "before" variant; ``--set`` tries a ConVAE option.

    python benchmarks/reconstruction.py --size quickstart                  # every class
    python benchmarks/reconstruction.py --size seed --classes t --epochs 20
    python benchmarks/reconstruction.py --size standard --variant after --classes t \
        --set loss.particle=emd_sinkhorn --name sinkhorn

Pythia jets come from the chunk cache (generated once). Results: runs/<name>/<class>/
reconstruction.json, metrics.json, report.md and plots/. ``--read RUN ...`` trains nothing: it
prints the same rows from finished runs (e.g. ``jetflows pipeline --config
configs/standard.yaml`` runs made side by side, one per process).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import torch
from common import cpu_model

from jetflows.classes import canonical_class
from pipelines.run.config import load_config
from pipelines.run.pipeline import run_pipeline

CONFIGS = {
    "quickstart": "configs/quickstart.yaml",
    "seed": "configs/seed_convae.yaml",
    "standard": "configs/standard.yaml",
}
#: Jets per class unless --n-jets says otherwise (None: the config's own data and split).
N_JETS = {"quickstart": 12_000, "seed": 12_000, "standard": None}
#: The research code's latent flow (RealNVP, 50 couplings of residual width 700: 50 M
#: parameters, ~1 min an epoch and an 800 MB checkpoint here) is swapped for the quickstart's:
#: this benchmark is about the ConVAE.
SEED_FLOW = [
    "flow.kind=zuko_nsf_coupling",
    "flow.transforms=6",
    "flow.hidden_features=128",
    "flow.hidden_layers=2",
    "flow.norm=none",
    "flow_train.lr=0.001",
    "flow_train.schedule=cosine",
]
#: The settings each config had before the fix (the collapsed ConVAE).
BEFORE = {
    "quickstart": [
        "normalization=minmax",
        "convae.output=sigmoid",
        "loss.beta=0.001",
        "loss.gamma=5.0",
        "loss.reflect=false",
        "loss.feature_weights=[1,1,1]",
    ],
    "seed": [
        "normalization=minmax",
        "convae.output=sigmoid",
        "loss.weighting=seed",
        "loss.beta=0.9998",
        "loss.gamma=1.0",
        "loss.reflect=false",
        "loss.feature_weights=[1,1,1]",
    ],
}


def run(size: str, variant: str, classes: list[str], args: argparse.Namespace) -> dict:
    n_jets = args.n_jets or N_JETS[size]
    data = (
        [f"data.n_jets={n_jets}", "data.split=[0.7, 0.1, 0.2]", f"n_generate={n_jets // 10}"]
        if n_jets
        else []
    )
    overrides = [
        f"name=bench_reconstruction_{size}_{args.name or variant}",
        *data,
        *(BEFORE[size] if variant == "before" else []),
        *(SEED_FLOW if size == "seed" else []),
        *([f"convae_train.epochs={args.epochs}"] if args.epochs else []),
        *([f"flow_train.epochs={args.flow_epochs}"] if args.flow_epochs else []),
        *args.set,
    ]
    cfg = load_config(CONFIGS[size], overrides)
    out = {}
    for c in classes:
        start = time.perf_counter()
        run_dir = run_pipeline(cfg, root=args.root, classes=(c,), progress=args.progress)
        elapsed = time.perf_counter() - start
        d = run_dir / canonical_class(c)
        out[c] = {
            "seconds": elapsed,
            "reconstruction": json.loads((d / "reconstruction.json").read_text()),
            "metrics": json.loads((d / "metrics.json").read_text()),
        }
    return out


def read(runs: list[str]) -> None:
    """Print a row per class of each finished run (its reconstruction.json and metrics.json;
    the ConVAE's training time from its pipeline.log)."""
    for name in runs:
        run_dir = Path(name)
        log = (run_dir / "pipeline.log").read_text() if (run_dir / "pipeline.log").exists() else ""
        for d in sorted(p for p in run_dir.iterdir() if (p / "reconstruction.json").is_file()):
            took = re.findall(rf"{d.name}: convae done in ([\d.]+) s", log)
            r = {
                "seconds": float(took[-1]) if took else float("nan"),
                "reconstruction": json.loads((d / "reconstruction.json").read_text()),
                "metrics": json.loads((d / "metrics.json").read_text()),
            }
            print(row(run_dir.name, "read", d.name, r), flush=True)


def row(size: str, variant: str, c: str, r: dict) -> str:
    rec, m = r["reconstruction"], r["metrics"]["metrics"]
    subs = ("tau21", "tau32", "d2")
    corr = "/".join(f"{rec['correlation'][k]:.2f}" for k in subs)
    w1 = "/".join(f"{rec['w1'][k]['ratio']:.1f}" for k in subs)
    t32 = rec["median"]["tau32"]
    gen_subs = "/".join(f"{m[f'emd_{k}']['ratio']:.1f}" for k in subs if f"emd_{k}" in m)
    spread = "/".join(f"{rec['spread'][k]:.2f}" for k in ("eta", "phi", "pt"))
    gspread = "/".join(f"{m[f'spread_{k}']['value']:.2f}" for k in ("eta", "phi", "pt"))
    cov = m.get("cov")
    cov_cell = f"{cov['value']:.3f} ({cov['floor']:.3f}, {cov['value'] / cov['floor']:.2f}x)"
    ratios = " | ".join(f"{m[k]['ratio']:.2f}" for k in ("w1m", "w1p", "w1efp"))
    took = "-" if r["seconds"] != r["seconds"] else f"{r['seconds']:.0f}"  # NaN: not in the log
    return (
        f"| {size} | {variant} | {c} | {rec['emd_ratio']:.3f} | {rec['correlation']['mass']:.3f} "
        f"| {corr} | {w1} | {t32['input']:.2f} / {t32['reconstruction']:.2f} | {spread} "
        f"| {gspread} | {cov_cell} | {ratios} | {gen_subs} | {r['metrics']['n_jets']} "
        f"| {took} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(CONFIGS), default="quickstart")
    parser.add_argument("--variant", choices=("before", "after", "both"), default="both")
    parser.add_argument("--classes", default="g,q,t,w,z")
    parser.add_argument("--n-jets", type=int, default=None, help="default: see N_JETS")
    parser.add_argument("--name", default=None, help="run name suffix (default: the variant)")
    parser.add_argument("--epochs", type=int, default=None, help="ConVAE epochs (default: config)")
    parser.add_argument("--flow-epochs", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], help="more config overrides")
    parser.add_argument("--root", default="runs")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--read", nargs="+", default=None, help="finished runs: print only")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("JETFLOWS_THREADS", torch.get_num_threads())))
    print(f"CPU: {cpu_model()}, torch threads: {torch.get_num_threads()}", flush=True)
    variants = ("before", "after") if args.variant == "both" else (args.variant,)
    if "before" in variants and args.size not in BEFORE:
        parser.error(f"--size {args.size} has no 'before' settings: use --variant after")
    print(
        "| size | variant | class | EMD ratio | r(mass) | r(tau21/tau32/D2) "
        "| rec. W1 tau21/tau32/D2 (x floor) | tau32 median in / rec | rec. spread eta/phi/pt "
        "| gen. spread eta/phi/pt | COV (floor, ratio) | W1M | W1P | W1EFP (x floor) "
        "| gen. tau21/tau32/D2 (x floor) | jets | s |\n" + "|---" * 17 + "|",
        flush=True,
    )
    if args.read:  # "size" is the run's name, "s" the ConVAE's training time
        read(args.read)
        return
    for variant in variants:
        for c, r in run(args.size, variant, args.classes.split(","), args).items():
            print(row(args.size, variant, c, r), flush=True)


if __name__ == "__main__":
    main()
