import pytest
import torch

from flows.models import FLOWS, Flow, FlowConfig, build_flow
from flows.train import fit, flow_from_state
from jetflows.training import TrainConfig

D, C, K = 6, 2, 3
# every registry entry, plain and with everything switched on (context, classes, norm, perm)
VARIANTS = [
    pytest.param(kind, extras, id=f"{kind}-{name}")
    for kind in FLOWS
    for name, extras in (
        ("plain", {}),
        ("conditional", {"norm": "actnorm", "permutation": "random", "num_classes": K}),
    )
] + [
    pytest.param(kind, {"norm": "batchnorm"}, id=f"{kind}-batchnorm")
    for kind in FLOWS
    if kind.startswith("nflows")
]


def _make(kind: str, extras: dict) -> tuple[Flow, dict]:
    torch.manual_seed(0)
    cfg = FlowConfig(kind=kind, transforms=3, hidden_features=16, bins=4, **extras)
    context = C if cfg.num_classes else 0
    flow = build_flow(cfg, features=D, context=context)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, D, generator=g) * torch.arange(1.0, D + 1) + 3.0
    inputs = {
        "context": torch.randn(32, C, generator=g) if context else None,
        "labels": torch.randint(0, K, (32,), generator=g) if cfg.num_classes else None,
    }
    flow.standardize_(x)
    flow.train()
    flow.log_prob(x, **inputs)  # one training pass: ActNorm's data init, BatchNorm's stats
    return flow.eval(), {"x": x, **inputs}


@pytest.mark.parametrize(("kind", "extras"), VARIANTS)
def test_flow_contract(kind, extras):
    flow, data = _make(kind, extras)
    x, cond = data["x"], {k: v for k, v in data.items() if k != "x"}
    log_prob = flow.log_prob(x, **cond)
    assert log_prob.shape == (32,) and torch.isfinite(log_prob).all()
    # invertibility x -> z -> x
    z, ladj = flow(x, **cond)
    assert z.shape == x.shape and ladj.shape == (32,)
    assert torch.allclose(flow.inverse(z, **cond), x, atol=1e-4)
    # sampling: shape, finite, reproducible by generator
    draws = flow.sample(32, **cond, generator=torch.Generator().manual_seed(3))
    again = flow.sample(32, **cond, generator=torch.Generator().manual_seed(3))
    assert draws.shape == (32, D) and torch.isfinite(draws).all() and torch.equal(draws, again)
    # gradients reach every parameter
    flow.train()
    flow.zero_grad()
    (-flow.log_prob(x, **cond).mean()).backward()
    silent = [n for n, p in flow.named_parameters() if p.grad is None or not p.grad.any()]
    assert not silent, silent
    flow.eval()
    # save/load: a rebuilt flow gives the same log_prob
    twin = build_flow(flow.config, features=D, context=flow.context)
    twin.load_state_dict(flow.state_dict())
    assert torch.allclose(twin.eval().log_prob(x, **cond), flow.log_prob(x, **cond))


@pytest.mark.parametrize(("kind", "extras"), VARIANTS[1::2][:7])
def test_context_and_labels_change_the_density(kind, extras):
    flow, data = _make(kind, extras)
    x, context, labels = data["x"], data["context"], data["labels"]
    base = flow.log_prob(x, context, labels)
    assert not torch.allclose(base, flow.log_prob(x, context + 1.0, labels))
    assert not torch.allclose(base, flow.log_prob(x, context, (labels + 1) % K))
    with pytest.raises(ValueError, match="needs context"):
        flow.log_prob(x, None, labels)
    with pytest.raises(ValueError, match="class-conditional"):
        flow.log_prob(x, context, None)
    with pytest.raises(ValueError, match="labels must lie"):
        flow.log_prob(x, context, labels + K)


def test_log_prob_is_a_normalized_density():
    """A 2-d flow's density integrates to 1 on a grid (the standardization Jacobian included)."""
    flow = build_flow(FlowConfig(transforms=2, hidden_features=8), features=2)
    flow.loc.fill_(1.0)
    flow.scale.copy_(torch.tensor([0.5, 2.0]))
    axis = torch.linspace(-12, 12, 601)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum() * (axis[1] - axis[0]) ** 2
    assert mass.item() == pytest.approx(1.0, abs=0.02)


def test_checkpoint_round_trip_through_fit():
    flow, data = _make("nflows_rqs_coupling", {"norm": "batchnorm"})
    x = data["x"]
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-3)
    result = fit(flow, (x, None, None), (x, None, None), config=cfg, progress=False)
    rebuilt = flow_from_state(result.state)
    assert torch.allclose(rebuilt.log_prob(x), flow.eval().log_prob(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "glow"}, "unknown flow"),
        ({"permutation": "shuffle"}, "unknown permutation"),
        ({"norm": "layernorm"}, "unknown norm"),
        ({"kind": "zuko_maf", "norm": "batchnorm"}, "zuko has no BatchNorm"),
        ({"transforms": 0}, ">= 1"),
        ({"tail_bound": 0.0}, "tail_bound"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlowConfig(**kwargs)


def test_wrong_shapes():
    flow = build_flow(FlowConfig(transforms=2, hidden_features=8), features=4)
    with pytest.raises(ValueError, match=r"x must be \(N, 4\)"):
        flow.log_prob(torch.randn(3, 5))
    with pytest.raises(ValueError, match="takes no context"):
        flow.log_prob(torch.randn(3, 4), torch.randn(3, 1))
    with pytest.raises(ValueError, match="not class-conditional"):
        flow.log_prob(torch.randn(3, 4), labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="n must be >= 1"):
        flow.sample(0)
    with pytest.raises(ValueError, match="at least 2 features"):
        build_flow(FlowConfig(), features=1)


def test_seed_realnvp_is_expressible():
    """The seed: RealNVP, 50 couplings, width 700, batch norm, odd/even masks, 30-d latent."""
    cfg = FlowConfig(
        kind="nflows_realnvp",
        transforms=50,
        hidden_features=700,
        hidden_layers=1,
        norm="batchnorm",
        permutation="alternate",
    )
    flow = build_flow(cfg, features=30)
    layers = list(flow.backend.flow._transform._transforms)
    couplings = [t for t in layers if hasattr(t, "transform_net")]
    norms = [t for t in layers if type(t).__name__ == "BatchNorm"]
    assert len(couplings) == 50 and len(norms) == 50
    moved = [c.transform_features.tolist() for c in couplings[:3]]
    assert moved[0] == list(range(0, 30, 2)) and moved[1] == list(range(1, 30, 2))  # odd/even
    assert moved[2] == moved[0]
    assert couplings[0].transform_net.initial_layer.out_features == 700
    assert flow.sample(4).shape == (4, 30)


@pytest.mark.parametrize(
    ("shapes", "ignore"),
    [
        ([(3, 1, 2), (4, 5)], 1),
        ([(7, 3), (7, 2)], 1),
        ([(2, 1, 4), (1, 3, 4)], 0),
        ([(5, 2), (2,)], [1, 1]),
    ],
)
def test_our_broadcast_is_zukos_without_its_sympy_import(shapes, ignore):
    """zuko's coupling flows call zuko.utils.broadcast, whose torch.broadcast_shapes imports
    sympy on first use (0.4 s of jetflows sample's start-up); ours gives the same tensors."""
    import zuko

    from flows.models import _broadcast

    tensors = [torch.randn(s) for s in shapes]
    want = zuko.utils.broadcast(*tensors, ignore=ignore)
    got = _broadcast(*tensors, ignore=ignore)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert zuko.flows.coupling.broadcast is _broadcast and zuko.transforms.broadcast is _broadcast
    with pytest.raises(RuntimeError, match="broadcast"):
        _broadcast(torch.randn(3, 2), torch.randn(4, 2), ignore=1)
