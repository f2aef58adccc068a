"""A continuous normalizing flow over the particle set, trained by conditional flow matching.

A jet is a set: a velocity field v(t, x, mask, context) acts on every particle with shared
weights and lets particles talk only through pooled (permutation-invariant) summaries, so
permuting the particles permutes the velocity and a padded particle changes nothing. Two
networks: `EPiCNet` (EPiC layers, Buhmann et al. arXiv:2301.08128, as in EPiC-FM
arXiv:2310.00049: per-particle MLPs exchanging one pooled global vector) and `TransformerNet`
(a small masked transformer without positions). The flow x(0) ~ N(0, I) -> x(1) = data follows
dx/dt = v; it is trained by conditional flow matching on straight (optimal-transport) paths
(Lipman et al. arXiv:2210.02747), sampled with a fixed-step ODE solver, and its exact
log-likelihood comes from integrating the divergence of v backwards.

Libraries: Meta's ``flow_matching`` supplies the path (``AffineProbPath`` with
``CondOTScheduler``: x_t and its target velocity), the ODE solver (``ODESolver``, on
torchdiffeq's fixed-grid Euler / midpoint / RK4) and the likelihood (``compute_likelihood``,
exact divergence or Hutchinson). We chose it over zuko's ``FreeFormJacobianTransform`` (an
adaptive solver only: no fixed, configurable step count) and torchcfm (no likelihood). What is
ours: the networks, the masking (padded particles take no part in the loss, the velocity or the
density) and the (N, P, F) <-> (N, P * F) reshapes the library's divergence loop needs.

The package, by concern: `config` (`SetFlowConfig`), `networks` (the velocity networks and
time embeddings), `path` (the straight path and the flow-matching loss), `guidance`
(autoguidance), `sampling` (the ODE, the likelihood, the precision), `flow` (`SetFlow`, which
composes them), `train` (fitting, checkpoints, jets from the jet-level flow) and `student` (a
few-step student distilled from a guided set flow).

Example:
    >>> import torch
    >>> flow = SetFlow(SetFlowConfig(width=16, layers=2, steps=4), context=2)
    >>> x = torch.randn(5, 7, 3)
    >>> mask = torch.arange(7)[None] < torch.tensor([[3], [7], [1], [5], [2]])  # n = 3, 7, ...
    >>> flow.loss(x, mask, torch.randn(5, 2)).shape
    torch.Size([])
    >>> flow.sample(mask, torch.randn(5, 2)).shape, flow.log_prob(x, mask, torch.randn(5, 2)).shape
    (torch.Size([5, 7, 3]), torch.Size([5]))
"""

from flows.setflow.config import (
    ADDED_SAMPLING_FIELDS,
    CHECKPOINT_KIND,
    CONDITIONINGS,
    COUPLINGS,
    DATA_PREDICTION_TMIN,
    DIVERGENCES,
    GUIDE_FIELDS,
    PRECISIONS,
    PREDICTIONS,
    SAMPLE_CHUNK,
    SAMPLING_FIELDS,
    SOLVERS,
    TIME_FEATURES,
    SetFlowConfig,
)
from flows.setflow.flow import SetFlow
from flows.setflow.networks import (
    NETWORKS,
    TIME_EMBEDDINGS,
    EPiCNet,
    TransformerNet,
    log_sigma_features,
    time_features,
)
from flows.setflow.path import pair_noise
from flows.setflow.sampling import AUTO_BF16_MIN_WIDTH, uses_bf16
from flows.setflow.train import (
    SetData,
    check_data,
    fit,
    flow_matching_objective,
    generate,
    set_flow_from_state,
)

__all__ = [
    "ADDED_SAMPLING_FIELDS",
    "AUTO_BF16_MIN_WIDTH",
    "CHECKPOINT_KIND",
    "CONDITIONINGS",
    "COUPLINGS",
    "DATA_PREDICTION_TMIN",
    "DIVERGENCES",
    "GUIDE_FIELDS",
    "NETWORKS",
    "PRECISIONS",
    "PREDICTIONS",
    "SAMPLE_CHUNK",
    "SAMPLING_FIELDS",
    "SOLVERS",
    "TIME_EMBEDDINGS",
    "TIME_FEATURES",
    "EPiCNet",
    "SetData",
    "SetFlow",
    "SetFlowConfig",
    "TransformerNet",
    "check_data",
    "fit",
    "flow_matching_objective",
    "generate",
    "log_sigma_features",
    "pair_noise",
    "set_flow_from_state",
    "time_features",
    "uses_bf16",
]
