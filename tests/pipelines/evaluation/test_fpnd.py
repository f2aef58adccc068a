"""FPND without torch_cluster: the pure-torch knn_graph stand-in against the real thing."""

import importlib.util

import numpy as np
import pytest
import torch

from pipelines.evaluation.fpnd import fpnd, fpnd_unavailable, install_knn_stand_in, knn_graph
from tests.conftest import random_jets

# FPND of random_jets(300, 30, seed) as class "t", computed by jetnet 0.2.5's own fpnd with the
# REAL torch_cluster 1.6.3 (source build), torch 2.13.0 CPU, batch size 100, on 2026-11-23.
# Its knn_graph chose other (equidistant) padded neighbours than ours; the FPND is the same.
REFERENCE_FPND = {21: 651.0147853061021, 22: 644.1081385730076}
needs_pyg = pytest.mark.skipif(
    importlib.util.find_spec("torch_geometric") is None,
    reason="torch_geometric is not installed: FPND cannot run",
)


def _brute_force(x, k, batch):
    edges = set()
    for i in range(len(x)):
        same = [j for j in range(len(x)) if batch[j] == batch[i] and j != i]
        dist = sorted(same, key=lambda j: float(((x[i] - x[j]) ** 2).sum()))
        edges |= {(j, i) for j in dist[:k]}  # source (neighbour) -> target (centre)
    return edges


@pytest.mark.parametrize("sizes", [(20, 20, 20), (20, 17, 25)])
@pytest.mark.parametrize("k", [1, 4, 16])
def test_knn_graph_matches_brute_force(k, sizes):
    torch.manual_seed(k)
    x = torch.randn(sum(sizes), 2)
    batch = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    edges = knn_graph(x, k, batch)
    assert edges.shape == (2, len(x) * k)
    assert set(map(tuple, edges.T.tolist())) == _brute_force(x, k, batch)
    flipped = knn_graph(x, k, batch, flow="target_to_source")
    assert torch.equal(flipped, edges.flip(0))
    with_loops = knn_graph(x, k, batch, loop=True)
    assert (with_loops[0] == with_loops[1]).sum() == len(x)


def test_knn_graph_never_crosses_graphs():
    x = torch.zeros(40, 2)  # all points coincide: only the batch separates them
    batch = torch.arange(2).repeat_interleave(20)
    row, col = knn_graph(x, 5, batch)
    assert (batch[row] == batch[col]).all() and (row != col).all()


def test_stand_in_is_registered_where_torch_cluster_is_missing():
    uses_stand_in = install_knn_stand_in()
    import torch_cluster

    assert torch_cluster.knn_graph is knn_graph if uses_stand_in else True
    assert importlib.util.find_spec("torch_cluster") is not None


@needs_pyg
@pytest.mark.parametrize("seed", sorted(REFERENCE_FPND))
def test_fpnd_equals_reference_computed_with_real_torch_cluster(seed):
    jets = random_jets(300, 30, seed=seed)
    assert fpnd(jets.particles, "top", batch_size=300) == pytest.approx(
        REFERENCE_FPND[seed], rel=1e-6
    )


@needs_pyg
def test_fpnd_prefers_real_top_jets_to_noise(pythia_top_files):
    from pipelines.data.jetnet import read_jetnet_file

    top = read_jetnet_file(pythia_top_files[1], 30).particles
    noise = random_jets(300, 30, seed=21).particles
    assert fpnd(top, "t", batch_size=300) < 0.2 * fpnd(noise, "t", batch_size=300)


def test_fpnd_reasons_and_bad_classes():
    assert fpnd_unavailable("w", 30).startswith("jetnet has FPND statistics for g, q, t only")
    assert "30 particles" in fpnd_unavailable("g", 150)
    assert "no jet class" in fpnd_unavailable(None, 30)
    with pytest.raises(ValueError, match="unknown jet class"):
        fpnd_unavailable("higgs", 30)
    with pytest.raises(ValueError, match="cannot compute FPND: jetnet has FPND"):
        fpnd(np.zeros((10, 30, 3), np.float32), "Z")
