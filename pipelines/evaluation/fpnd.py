"""FPND (Frechet ParticleNet Distance) through jetnet, without building torch_cluster.

jetnet's ParticleNet imports `knn_graph` from torch_cluster, which has no wheel here (a ~12 min
source build). Its only use is the k-nearest-neighbour graph of each jet's particles, which a few
lines of torch compute exactly (`knn_graph` below); when torch_cluster is missing we register a
stand-in module exposing it, so jetnet's own FPND code runs unchanged. A test checks the stand-in
against a reference FPND value computed with the real torch_cluster.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import numpy as np
import torch

from jetflows.classes import canonical_class
from jetflows.errors import UserError

FPND_CLASSES = ("g", "q", "t")  # jetnet ships ParticleNet statistics for these, at 30 particles
FPND_PARTICLES = 30


def knn_graph(
    x: torch.Tensor,
    k: int,
    batch: torch.Tensor | None = None,
    loop: bool = False,
    flow: str = "source_to_target",
    cosine: bool = False,
    num_workers: int = 1,
) -> torch.Tensor:
    """torch_cluster.knn_graph in plain torch: edges to each node from its k nearest neighbours
    (Euclidean) within its own graph of ``batch``.

    Arguments:
        x: (N, F) node features; batch: (N,) sorted graph index (None: one graph).
        k: neighbours per node; loop: whether a node may be its own neighbour.
        flow: "source_to_target" gives rows = neighbours, cols = centres, as torch_cluster.

    Returns:
        (2, E) edge index.
    """
    if cosine:
        raise UserError("knn_graph stand-in supports Euclidean distances only")
    batch = torch.zeros(len(x), dtype=torch.long) if batch is None else batch
    sizes = torch.unique_consecutive(batch, return_counts=True)[1]
    take = k if loop else k + 1  # like torch_cluster: k + 1 nearest (self included), drop self
    groups = (
        [_knn_equal_graphs(x, take, len(sizes))]
        if (sizes == sizes[0]).all()
        else [
            _knn_equal_graphs(part, take, 1) + start
            for part, start in zip(x.split(sizes.tolist()), sizes.cumsum(0) - sizes, strict=True)
        ]
    )
    nearest = torch.cat([g[0] for g in groups])  # (N, take) neighbours
    centre = torch.cat([g[1] for g in groups])  # (N, take) the node itself
    keep = torch.ones_like(nearest, dtype=torch.bool) if loop else nearest != centre
    row, col = nearest[keep], centre[keep]
    return torch.stack([row, col] if flow == "source_to_target" else [col, row])


def _knn_equal_graphs(x: torch.Tensor, take: int, graphs: int) -> torch.Tensor:
    """Nearest ``take`` nodes (global indices) of every node, for ``graphs`` graphs of one size.

    Returns:
        (2, N, take): neighbour indices and centre indices.
    """
    size = len(x) // graphs
    points = x.reshape(graphs, size, -1)  # (G, n, F)
    # exact differences (not the matrix-product shortcut) so near-ties order as torch_cluster
    dist = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")
    nearest = dist.topk(min(take, size), dim=2, largest=False).indices
    offset = (torch.arange(graphs) * size).view(-1, 1, 1)  # (G, 1, 1)
    nearest = (nearest + offset).reshape(len(x), -1)  # (N, take)
    centre = torch.arange(len(x)).unsqueeze(1).expand_as(nearest)
    return torch.stack([nearest, centre])


def install_knn_stand_in() -> bool:
    """Register the stand-in `torch_cluster` module if the real one is missing.

    Returns:
        True if the stand-in is in use, False if the real torch_cluster is installed.
    """
    if "torch_cluster" in sys.modules or importlib.util.find_spec("torch_cluster"):
        return getattr(sys.modules.get("torch_cluster"), "__jetflows_stand_in__", False)
    module = types.ModuleType("torch_cluster")
    # a spec, so that libraries probing with importlib.util.find_spec see a normal module
    module.__spec__ = importlib.machinery.ModuleSpec("torch_cluster", None)
    module.knn_graph = knn_graph
    module.__jetflows_stand_in__ = True
    sys.modules["torch_cluster"] = module
    return True


def fpnd_unavailable(jet_class: str | None, num_particles: int) -> str | None:
    """Why FPND cannot be computed for this class and particle count, or None if it can."""
    if jet_class is None:
        return "no jet class given (FPND compares with jetnet's stored statistics of one class)"
    if canonical_class(jet_class) not in FPND_CLASSES:
        return f"jetnet has FPND statistics for g, q, t only, not {canonical_class(jet_class)}"
    if num_particles != FPND_PARTICLES:
        return f"jetnet's FPND is defined at 30 particles, not {num_particles}"
    if importlib.util.find_spec("torch_geometric") is None:
        return "torch_geometric is not installed (pip install torch_geometric)"
    return None


def fpnd(
    particles: np.ndarray, jet_class: str, *, batch_size: int = 1000, progress: bool = False
) -> float:
    """jetnet's FPND of generated jets against its stored real statistics for ``jet_class``.

    Arguments:
        particles: (N, 30, 3) (eta_rel, phi_rel, pt_rel); jetnet recommends N = 50,000.
        jet_class: g, q or t (or an alias).
        batch_size: ParticleNet batch (jetnet's default 16 is slow on a CPU).

    Raises:
        ValueError: FPND is not defined for this class or shape (the message says why).
    """
    reason = fpnd_unavailable(jet_class, particles.shape[1])
    if reason:
        raise UserError(f"cannot compute FPND: {reason}")
    install_knn_stand_in()
    import warnings

    from jetnet.evaluation import gen_metrics

    # jetnet runs ParticleNet with autograd on; inference mode skips building its graphs
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", RuntimeWarning)  # jetnet's "recommended 50,000 jets"
        value = gen_metrics.fpnd(
            np.ascontiguousarray(particles[..., :3], dtype=np.float32),
            canonical_class(jet_class),
            device="cpu",
            batch_size=batch_size,
            use_tqdm=progress,
        )
    return float(value)
