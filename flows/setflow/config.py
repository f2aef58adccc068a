"""A set flow's settings: `SetFlowConfig` and the names its fields may take."""

from __future__ import annotations

from dataclasses import dataclass, replace

from jetflows.checks import require
from jetflows.errors import UserError

CHECKPOINT_KIND = "jetflows.setflow"
SOLVERS = ("euler", "midpoint", "rk4")  # torchdiffeq's fixed-grid methods
DIVERGENCES = ("exact", "hutchinson")
PRECISIONS = ("fp32", "bf16", "auto")
COUPLINGS = ("independent", "particles")
PREDICTIONS = ("velocity", "data")
CONDITIONINGS = ("input", "blocks")
#: a data-predicting flow's velocity is (D - x) / (1 - t); 1 - t is held >= this, so RK4's
#: stage at t = 1 (and log_prob's start there) stays finite
DATA_PREDICTION_TMIN = 0.05
#: `SetFlowConfig` fields that only sample (the ODE): changing them needs no retraining
SAMPLING_FIELDS = ("solver", "steps", "precision", "guidance", "guidance_from", "guidance_until")
#: sampling fields added after runs were sampled, with their defaults (at which the pipeline
#: leaves them out of its generate stage's key, so that those runs' jets stay up to date)
ADDED_SAMPLING_FIELDS = {"guidance": 1.0, "guidance_from": 0.0, "guidance_until": 1.0}
#: `SetFlowConfig` fields that shape only the guide's training, never the flow's own
GUIDE_FIELDS = ("guide_epochs", "guide_width", "guide_layers")
#: jets integrated at once when sampling: on 2 CPU cores 500 ran 1.7x faster than 10,000 in
#: one batch (the attention's working set stays in cache); on a GPU larger chunks may pay
SAMPLE_CHUNK = 512
MAX_ODE_STEPS = 1000  # 20 steps scored as 8 did; beyond a thousand only the clock moves
TIME_FEATURES = 8  # t as cos/sin of 4 frequencies: smooth in t, spread over [0, 1]
#: the velocity networks (`flows.setflow.networks.NETWORKS`) and time embeddings by name
NETWORK_NAMES = ("epic", "transformer")
TIME_EMBEDDING_NAMES = ("fourier", "log_sigma")


@dataclass(frozen=True)
class SetFlowConfig:
    """A set flow's velocity network and ODE.

    Arguments:
        network: a name in `NETWORKS`: "epic" or "transformer".
        width: per-particle hidden width.
        layers: EPiC layers or transformer blocks.
        global_width: width of the pooled global vector (epic) or feed-forward factor x width
            (transformer: ``global_width`` is unused).
        heads: attention heads (transformer).
        solver: fixed-step ODE method for sampling and log_prob: one of `SOLVERS`.
        steps: ODE steps from noise to jet (network calls: x1 euler, x2 midpoint, x4 rk4).
        divergence: log_prob's trace of dv/dx: "exact" (P x F backward passes per call; fine at
            30 x 3) or "hutchinson" (one, unbiased; for 150 particles).
        time_power: training draws t with density (1 + a) t^a (a = ``time_power``; 0:
            uniform). a > 0 spends more of the training near the data end (t -> 1), where the
            last, sub-0.01-rad placement of particles inside a prong is decided: tau32 of real top
            jets moves from 0.39 to 0.44 under 0.01 rad of position noise. Any a keeps the
            flow-matching minimizer (the loss is a regression at every t); it moves capacity.
        coupling: how training pairs each jet's noise with its particles. "independent": noise
            particle i goes to particle i. "particles": within every jet, the noise particles
            are assigned to the real ones by the assignment of least total squared distance
            (equivariant flow matching, Klein et al. arXiv:2306.15030). Permuting i.i.d. noise
            leaves its distribution as a set unchanged, so the flow's target is the same; the
            paths get shorter and cross less, so the regression target varies less.
        predict: what the network outputs. "velocity": v itself, trained on x1 - x0. "data":
            the jet D(x_t) it expects at t = 1, trained on x1 (the flow-matching minimizer
            again: E[x1 | x_t] gives E[x1 - x0 | x_t]); the ODE follows v = (D - x) / (1 - t),
            which pulls particles onto where the network places them as t -> 1, the regime
            where the prongs' sub-0.01-rad width is set.
        conditioning: where the transformer sees the time and the jet context. "input": added
            to every particle's embedding once; "blocks": also a scale and shift of the
            particles' features before every block (FiLM, as DiT's adaptive norms), so that
            each block can act differently near t = 1 (EPiC layers always take the context in
            every layer).
        pair_bias: the transformer's attention adds, per head, a learnt function of each pair
            of particles' distance ln(d_eta^2 + d_phi^2) and log pt_rel (min and difference),
            as ParT's interaction features (arXiv:2202.03772): dot products of embedded
            absolute positions may resolve small distances poorly, and tau3 is set by how
            tightly particles sit around their prong (zero-init: starts as no bias).
        time_embedding: how the network sees t: "fourier" (cos/sin of pi t, 2 pi t, ...) or
            "log_sigma" (t and the log noise-to-signal ratio log((1 - t) / t) with its cos/sin:
            resolves the last percent of the path, where a prong's width is set).
            These two and ``conditioning: blocks`` did not move top's tau32 when measured
            (docs/benchmarks.md); they stay off.
        position_weight: the loss weight of the (eta, phi) coordinates relative to log pt_rel.
            The loss is a separate regression per coordinate, so any positive weight keeps the
            flow-matching minimizer; > 1 moves capacity to where the particles sit, which sets
            tau3 far more than log pt_rel does (docs/benchmarks.md).
        precision: the velocity network's arithmetic while sampling: "fp32", "bf16"
            (bfloat16 autocast; the ODE state stays fp32): faster on CPUs with native bf16
            (AVX512-BF16, AMX) and on GPUs, slower on other CPUs; or "auto": bf16 where it is
            native, else fp32, and on a CPU fp32 for a network narrower than
            `AUTO_BF16_MIN_WIDTH` (a small guide). ``log_prob`` and training stay fp32.
        guidance: autoguidance (Karras et al. arXiv:2406.02507): sampling follows
            v_guide + w (v - v_guide), w = ``guidance``, where the guide is a worse version of
            the same flow (the same network trained for ``guide_epochs``). An under-trained
            flow places particles around their prongs too loosely; the guide errs the same way,
            more, so stepping away from it sharpens the prongs. 1: off (the flow alone).
        guidance_from, guidance_until: guidance acts for guidance_from <= t < guidance_until
            only (outside, the flow alone; ``guidance_until`` 1: to the end): the jet's overall
            spread is set early in the path, the prongs later, and guiding the last steps
            over-sharpens the finest structure (a limited interval, as Kynkaanniemi et al.,
            arXiv:2404.07724, found for images). Both are read at every evaluation of the
            velocity, so they act at the solver's grid: at 8 midpoint steps (evaluations at
            multiples of 1/16) ``guidance_until`` 0.8 ends guidance after t = 0.75.
        guide_epochs: epochs the pipeline trains the guide for (0: no guide).
        guide_width, guide_layers: the guide's network (0: the flow's): a smaller guide costs
            less at every guided step; its other settings are the flow's own.
    """

    network: str = "epic"
    width: int = 128
    layers: int = 6
    global_width: int = 16
    heads: int = 4
    solver: str = "midpoint"
    steps: int = 20
    divergence: str = "exact"
    time_power: float = 0.0
    coupling: str = "independent"
    predict: str = "velocity"
    conditioning: str = "input"
    pair_bias: bool = False
    time_embedding: str = "fourier"
    position_weight: float = 1.0
    precision: str = "fp32"
    guidance: float = 1.0
    guidance_from: float = 0.0
    guidance_until: float = 1.0
    guide_epochs: int = 0
    guide_width: int = 0
    guide_layers: int = 0

    def __post_init__(self) -> None:
        if self.network not in NETWORK_NAMES:
            raise UserError(
                f"unknown set_flow.network {self.network!r}: use {sorted(NETWORK_NAMES)}"
            )
        if self.solver not in SOLVERS:
            raise UserError(f"unknown set_flow.solver {self.solver!r}: use one of {SOLVERS}")
        if self.predict not in PREDICTIONS:
            raise UserError(f"unknown set_flow.predict {self.predict!r}: use one of {PREDICTIONS}")
        if self.conditioning not in CONDITIONINGS:
            raise UserError(
                f"unknown set_flow.conditioning {self.conditioning!r}: use one of {CONDITIONINGS}"
            )
        if self.coupling not in COUPLINGS:
            raise UserError(f"unknown set_flow.coupling {self.coupling!r}: use one of {COUPLINGS}")
        if self.precision not in PRECISIONS:
            raise UserError(
                f"unknown set_flow.precision {self.precision!r}: use one of {PRECISIONS}"
            )
        if self.divergence not in DIVERGENCES:
            raise UserError(
                f"unknown set_flow.divergence {self.divergence!r}: use one of {DIVERGENCES}"
            )
        require(self, ("width", "layers", "global_width", "heads", "steps"), low=1)
        if self.steps > MAX_ODE_STEPS:  # a million steps hung `jetflows sample` (issue 39 #6)
            raise UserError(
                f"set_flow.steps must be at most {MAX_ODE_STEPS} (8-32 match the floor), "
                f"got {self.steps}"
            )
        if self.time_embedding not in TIME_EMBEDDING_NAMES:
            raise UserError(
                f"unknown set_flow.time_embedding {self.time_embedding!r}: use one of "
                f"{sorted(TIME_EMBEDDING_NAMES)}"
            )
        if not 0.0 < self.position_weight <= 100.0:
            raise UserError(
                f"set_flow.position_weight must lie in (0, 100], got {self.position_weight}"
            )
        if not 0.0 <= self.time_power <= 10.0:
            raise UserError(f"set_flow.time_power must lie in [0, 10], got {self.time_power}")
        if not 1.0 <= self.guidance <= 20.0:
            raise UserError(f"set_flow.guidance must lie in [1, 20], got {self.guidance}")
        if not 0.0 <= self.guidance_from < 1.0:
            raise UserError(f"set_flow.guidance_from must lie in [0, 1), got {self.guidance_from}")
        if not self.guidance_from < self.guidance_until <= 1.0:
            raise UserError(
                f"set_flow.guidance_until must lie in (guidance_from, 1] = "
                f"({self.guidance_from}, 1], got {self.guidance_until}"
            )
        require(self, GUIDE_FIELDS, low=0)
        if self.pair_bias and self.network != "transformer":
            raise UserError("set_flow.pair_bias needs network: transformer (EPiC has no attention)")
        for name in ("width", "guide_width"):
            width = getattr(self, name)
            if self.network == "transformer" and width % self.heads:
                raise UserError(f"set_flow.{name} {width} must divide by heads {self.heads}")

    def guide(self) -> SetFlowConfig:
        """The guide's config: the flow's, with ``guide_width`` and ``guide_layers`` where set,
        sampled unguided."""
        return replace(
            self,
            width=self.guide_width or self.width,
            layers=self.guide_layers or self.layers,
            guidance=1.0,
            guidance_from=0.0,
            guidance_until=1.0,
        )
