"""Data-parallel training: 2 gloo processes on the CPU against one process with the same
global batch. Flows have no sampling noise in training: the histories agree to float32
round-off (measured 6e-8 relative; tolerance 1e-5). The ConVAE's reparameterisation noise is
drawn per process, so each step sees other noise than in one process: losses agree within
0.4% after 2 epochs here (tolerance 2%)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from convae.model import ConVAE, ConVAEConfig
from convae.train import fit as fit_convae
from flows.models import FlowConfig, build_flow
from flows.train import fit as fit_flow
from jetflows.distributed import all_sum, is_main, main_first, rank_world
from jetflows.errors import UserError
from jetflows.training import TrainConfig
from tests.conftest import random_jets, without_times

CFG = TrainConfig(epochs=3, batch_size=64, lr=3e-3, seed=0, patience=0)


def _flow_history(states: list | None = None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 4, generator=g) @ torch.randn(4, 4, generator=g)
    v = torch.randn(128, 4, generator=g) @ torch.randn(4, 4, generator=g)
    torch.manual_seed(0)
    # no BatchNorm/ActNorm here: under DDP they take statistics of each process's half batch
    # (BN every step, ActNorm at its data-dependent init): another model step, not a loop bug
    flow = build_flow(
        FlowConfig(kind="nflows_rqs_coupling", transforms=2, hidden_features=16), features=4
    )
    on_epoch = (lambda e, row, state: states.append(state)) if states is not None else None
    return fit_flow(
        flow, (x, None, None), (v, None, None), config=CFG, progress=False, on_epoch=on_epoch
    ).history


def _convae_history():
    jets = random_jets(320, seed=5)
    x, m = torch.tensor(jets.particles), torch.tensor(jets.mask)
    torch.manual_seed(0)
    model = ConVAE(ConVAEConfig(n_filter=4, dense_width=32, latent_dim=4))
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-3, seed=0)
    return fit_convae(
        model, (x[:256], m[:256]), (x[256:], m[256:]), config=cfg, progress=False
    ).history


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        states: list = []
        flow = _flow_history(states)
        convae = _convae_history()
        # helpers: rank 0 goes first, sums cross ranks, only rank 0 gets on_epoch calls
        with main_first():
            if is_main():
                open(out + ".first", "w").close()
            seen_first = os.path.exists(out + ".first")
        summed = all_sum(torch.tensor([float(rank + 1)])).item()
        result = {
            "flow": flow,
            "convae": convae,
            "states": len(states),
            "world": rank_world(),
            "seen_first": seen_first,
            "summed": summed,
        }
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, str(root / "init"), str(root / "out")), nprocs=2, join=True)
    return [torch.load(root / f"out.{r}", weights_only=False) for r in (0, 1)]


def test_two_gloo_processes_match_one_with_the_same_global_batch(two_ranks):
    single = _flow_history()
    for result in two_ranks:
        assert [r["epoch"] for r in result["flow"]] == [0, 1, 2]
        for ours, ref in zip(result["flow"], single, strict=True):
            for key in ("train_loss", "valid_loss"):
                assert ours[key] == pytest.approx(ref[key], rel=1e-5)
    # global history on every rank (wall times aside)
    assert without_times(two_ranks[0]["flow"]) == without_times(two_ranks[1]["flow"])
    reference = _convae_history()
    for ours, ref in zip(two_ranks[0]["convae"], reference, strict=True):
        assert ours["valid_loss"] == pytest.approx(ref["valid_loss"], rel=0.02)


def test_only_rank_zero_reports_and_the_helpers_work(two_ranks):
    assert [r["world"] for r in two_ranks] == [(0, 2), (1, 2)]
    assert [r["states"] for r in two_ranks] == [3, 0]  # on_epoch (checkpoints) on rank 0 only
    assert all(r["seen_first"] for r in two_ranks)  # main_first: rank 1 saw rank 0's file
    assert all(r["summed"] == 3.0 for r in two_ranks)


def test_outside_torchrun_everything_is_rank_zero_of_one():
    assert rank_world() == (0, 1) and is_main()
    value = torch.tensor([2.0])
    assert all_sum(value) is value


def test_resolve_device():
    from jetflows.distributed import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"WORLD_SIZE": "abc"}, "environment variable WORLD_SIZE='abc' is not an integer"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 without RANK, MASTER_ADDR, MASTER_PORT: start"),
        (
            {"WORLD_SIZE": "2", "RANK": "x", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
            "RANK='x' is not an integer",
        ),
    ],
)
def test_a_broken_torchrun_environment_is_the_users_to_fix(monkeypatch, env, match):
    """Issue 39 #11: these were a ValueError from int() or torch's rendezvous, exit 1."""
    from jetflows import distributed

    for key in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match=match):
        distributed.init_from_env()
