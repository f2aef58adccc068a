"""Speed of the evaluation suite on 50,000 vs 50,000 jets (30 particles).

Prints the time of each metric alone, the whole suite without FPND (EFPs of three samples,
every metric for the model and for the truth floor, plots, report) and FPND separately, with the
thread count. For comparison it also times jetnet's EFPs (energyflow, jet by jet) on 10,000 jets.

Jets: Pythia8 top jets from the embedded generator (2,000, cached), tiled to the sizes needed
with a small eta/phi jitter, so multiplicities and shapes are realistic while the benchmark
stays quick to set up. Pass --real/--gen files to time your own.

    python benchmarks/evaluation.py [--n 50000] [--threads 2] [--real R.h5 --gen G.h5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine_line

from pipelines.data.jetnet import Jets, read_jetnet_file
from pipelines.data.production import generate_jets
from pipelines.data.pythia import PythiaConfig
from pipelines.evaluation import metrics as m
from pipelines.evaluation.evaluate import EvalConfig, draw_samples, evaluate_files
from pipelines.evaluation.fpnd import fpnd


def tiled(base: Jets, n: int, seed: int) -> Jets:
    """``n`` jets drawn from ``base`` with a 0.01 eta/phi jitter of the real particles."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(len(base), size=n)
    jets = base.take(pick)
    jitter = rng.normal(0, 0.01, jets.particles[..., :2].shape).astype(np.float32)
    jets.particles[..., :2] += jitter * jets.mask[..., None]
    return jets


def clock(label: str, func, *args, **kwargs):
    start = time.perf_counter()
    out = func(*args, **kwargs)
    print(f"{label:34s} {time.perf_counter() - start:7.2f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--real", type=Path)
    parser.add_argument("--gen", type=Path)
    parser.add_argument("--no-fpnd", action="store_true", help="skip the FPND timing (minutes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{machine_line()}, jets per sample: {args.n}")
    if args.real and args.gen:
        real, gen = read_jetnet_file(args.real, 30), read_jetnet_file(args.gen, 30)
    else:
        base = generate_jets(PythiaConfig("t"), 2000, jobs=2, progress=False)
        real, gen = tiled(base, 2 * args.n, 1), tiled(base, args.n, 2)
    samples = draw_samples(real, gen, args.n, 42)
    ref, g = samples.reference, samples.gen

    from jetnet.utils import efps as jetnet_efps

    clock(
        "jetnet EFPs, 10k jets (energyflow)",
        jetnet_efps,
        g.particles[:10_000],
        efpset_args=[("d<=", 4)],
        efp_jobs=args.threads,
    )
    e_ref = clock("our EFPs, one sample", m.efps, ref.particles)
    e_gen = m.efps(g.particles)
    o_ref = m.observables(ref)
    o_gen = clock("observables", m.observables, g)
    clock("observable EMDs", m.observable_emds, o_ref, o_gen)
    clock("legacy EMD sum", m.legacy_emd_sum, o_ref, o_gen)
    clock("JSD + KL", m.divergences, o_ref, o_gen, 30)
    gm = m._jetnet_rng(0)
    clock("W1M (jetnet)", gm.w1m, ref.particles, g.particles, num_eval_samples=args.n)
    w1p_args = (ref.particles, g.particles, ref.mask, g.mask)
    clock("W1P (jetnet: serial scipy W1)", gm.w1p, *w1p_args, num_eval_samples=args.n)
    masks = (m._particle_masks(ref.particles, ref.mask), m._particle_masks(g.particles, g.mask))
    clock(
        "W1P (ours: same draws, fast W1)",
        m._w1_batches,
        ref.particles,
        g.particles,
        args.n,
        5,
        np.random.default_rng(0),
        masks,
    )
    sel = m.w1efp_selection()
    clock(
        "W1EFP (on cached EFPs)",
        m._w1_batches,
        e_ref[:, sel],
        e_gen[:, sel],
        args.n,
        5,
        np.random.default_rng(0),
    )
    clock("FPD (jetnet)", gm.fpd, e_ref, e_gen)
    clock("KPD (jetnet)", gm.kpd, e_ref, e_gen)
    clock("COV/MMD (jetnet)", gm.cov_mmd, ref.particles, g.particles, use_tqdm=False)
    if not args.no_fpnd:
        clock("FPND (jetnet + knn stand-in)", fpnd, g.particles, "t", batch_size=1000)
    with tempfile.TemporaryDirectory() as tmp:
        real_path, gen_path = Path(tmp) / "t.hdf5", Path(tmp) / "gen.hdf5"
        from pipelines.data.jetnet import write_jetnet_file

        write_jetnet_file(real_path, real)
        write_jetnet_file(gen_path, gen)
        clock(
            "FULL SUITE without FPND",
            evaluate_files,
            real_path,
            gen_path,
            Path(tmp) / "out",
            cfg=EvalConfig(n_jets=args.n, fpnd=False),
            progress=False,
        )


if __name__ == "__main__":
    main()
