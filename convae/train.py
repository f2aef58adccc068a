"""Training the ConVAE: a plain `fit` function, no globals, resumable exactly.

`fit` works on tensors (the loop itself is `jetflows.training.fit_loop`, shared with the
flows) and returns the history and a self-describing state; it never touches
the disk. After every epoch it calls ``on_epoch(epoch, row, state)``: the caller writes the
checkpoint there (atomically, see `pipelines`) and Optuna reports and prunes there. Passing a
saved state back as ``resume`` continues exactly where it stopped: same epoch count, optimizer
and scheduler state, random streams, early-stopping counters and history.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from convae import losses as L
from convae.model import ConVAE, ConVAEConfig
from jetflows.checks import require
from jetflows.errors import UserError
from jetflows.family import FitOptions, ModelFamily
from jetflows.normalize import Normalization
from jetflows.training import (  # noqa: F401  (re-exported: the ConVAE's training API)
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    FitResult,
    TrainConfig,
    check_kind,
    fit_loop,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

CHECKPOINT_KIND = "jetflows.convae"
SPACES = ("physical", "normalized")


@dataclass(frozen=True)
class LossConfig:
    """How the ELBO is assembled.

    Arguments:
        particle: a name in `losses.PARTICLE_LOSSES` (chamfer, chamfer_pt, chamfer_positions,
            nearest_position, intensity_axis, emd, emd_sinkhorn).
        weighting: a name in `losses.WEIGHTINGS` ("seed" or "beta_vae").
        alpha, beta: weights of the particle term and of the KL term.
        gamma, gamma_1, gamma_2: jet-term weights; gamma_2 None means mean(pT)/mean(m) of the
            training set. gamma 0 switches the jet terms off.
        gamma_tau: weight of the substructure jet terms, (tau21 - tau21^)^2 + (tau32 -
            tau32^)^2 (`losses.substructure_terms`): the prong count, as the mass term is the
            size. 0 (default) leaves them out (they cost an exclusive-kT clustering per batch).
        gamma_d2: weight of the D2 jet term, (log D2 - log D2^)^2 (`losses.d2_terms`): the
            radiation between the prongs, which strong tau terms pull onto clean prongs.
            0 (default) leaves it out.
        space: where the particle term is computed: "physical" units (eta, phi, pt_rel) or the
            "normalized" features the network sees. The jet terms are always physical.
        feature_weights: (eta, phi, pt) multipliers of the features inside the particle term:
            how many units of angle one unit of pt_rel is worth in a Chamfer distance.
        reflect: in training, reflect each jet at random in eta_rel and in phi_rel (each with
            probability 1/2) before it enters the network: both reflections are symmetries of
            the jet distribution, so the loss is the same expectation over 4x the data.
    """

    particle: str = "chamfer"
    # not the research code's weighting="seed", beta=0.9998: KL 5,000x the reconstruction
    weighting: str = "beta_vae"
    alpha: float = 1.0
    beta: float = 1e-4
    gamma: float = 1.0
    gamma_1: float = 1.0
    gamma_2: float | None = None
    gamma_tau: float = 0.0
    gamma_d2: float = 0.0
    space: str = "physical"
    feature_weights: tuple[float, ...] = (1.0, 1.0, 1.0)
    reflect: bool = False

    def __post_init__(self) -> None:
        if self.particle not in L.PARTICLE_LOSSES:
            raise UserError(
                f"unknown particle loss {self.particle!r}: use one of {sorted(L.PARTICLE_LOSSES)}"
            )
        if self.space not in SPACES:
            raise UserError(f"unknown loss space {self.space!r}: use one of {SPACES}")
        if self.particle in L.PT_WEIGHTED and self.space != "physical":
            raise UserError(
                f"loss.particle {self.particle} weights by pt_rel: it needs space physical"
            )
        if len(self.feature_weights) != 3 or min(self.feature_weights) <= 0:
            raise UserError(
                f"feature_weights must be 3 positive numbers (eta, phi, pt): {self.feature_weights}"
            )
        if self.weighting not in L.WEIGHTINGS:
            raise UserError(
                f"unknown weighting {self.weighting!r}: use one of {sorted(L.WEIGHTINGS)}"
            )
        require(self, ("alpha", "beta", "gamma", "gamma_1", "gamma_2", "gamma_tau", "gamma_d2"))


@dataclass
class ConVAELoss:
    """Everything the loss needs besides the batch: its config, gamma_2, the normalization.

    The batch comes in physical units and is normalized here, at the network's edge: the
    network sees ``normalization.transform(x)``, its output is mapped back once, and the jet
    terms (and a "physical" particle term) compare physical particles with no round trip.
    """

    cfg: LossConfig
    gamma_2: float
    normalization: Normalization | None
    precision: str = "fp32"

    def __call__(
        self,
        model: ConVAE,
        x: torch.Tensor,
        mask: torch.Tensor,
        condition: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean loss over the batch and its terms. x: (B, P, F) physical, mask: (B, P);
        condition (B, C): a conditional decoder's, computed here from x when not given."""
        c, norm = self.cfg, self.normalization
        if condition is None:  # of the physical jet (reflections keep it)
            condition = model.condition_of(x, mask)
        if c.reflect and model.training:
            x = self._reflect(x)
        seen = norm.transform(x, mask) if norm is not None else x
        # bf16: the network's matrix products in bfloat16 (autocast), the losses in float32
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            output, mean, logvar = model(seen, condition)
        output, mean, logvar = output.float(), mean.float(), logvar.float()
        recon = norm.inverse(output, mask) if norm is not None else output
        if c.space == "normalized":  # the particle term on what the network sees
            px, precon = seen * mask[..., None], output * mask[..., None]
        else:
            px, precon = x, recon
        w = torch.tensor(c.feature_weights, dtype=x.dtype, device=x.device)
        px, precon = px * w, precon * w
        terms = {
            "particle": L.PARTICLE_LOSSES[c.particle](px, precon, mask, mask),
            "jet": L.jet_terms(
                x, recon, mask, mask, gamma=c.gamma, gamma_1=c.gamma_1, gamma_2=self.gamma_2
            )
            if c.gamma
            else x.new_zeros(len(x)),
            "kl": L.kl_divergence(mean, logvar),
        }
        jet = terms["jet"]
        if c.gamma_tau:
            terms["substructure"] = L.substructure_terms(x, recon, mask, mask)
            jet = jet + c.gamma_tau * terms["substructure"]
        if c.gamma_d2:
            terms["d2"] = L.d2_terms(x, recon, mask, mask)
            jet = jet + c.gamma_d2 * terms["d2"]
        total = L.WEIGHTINGS[c.weighting](
            terms["particle"], jet, terms["kl"], alpha=c.alpha, beta=c.beta
        )
        return total.mean(), {k: v.mean() for k, v in terms.items()}

    @staticmethod
    def _reflect(x: torch.Tensor) -> torch.Tensor:
        """x (B, P, F) physical, with eta and phi of random jets negated."""
        signs = torch.ones(len(x), 1, x.shape[-1], dtype=x.dtype, device=x.device)
        flip = torch.rand(len(x), 1, 2, device=x.device) < 0.5  # (B, 1, eta/phi)
        signs[..., :2] = torch.where(flip, -1.0, 1.0)
        return x * signs


def check_particles(x: torch.Tensor, mask: torch.Tensor, name: str) -> None:
    """Reject bad training data with a clear ValueError (shapes, NaN/inf, empty)."""
    if x.dim() != 3 or mask.shape != x.shape[:2]:
        raise UserError(
            f"{name}: particles must be (N, P, F) with a mask (N, P), got "
            f"{tuple(x.shape)} and {tuple(mask.shape)}"
        )
    if len(x) == 0:
        raise UserError(f"{name}: no jets")
    if not torch.isfinite(x).all():
        raise UserError(f"{name}: particles contain NaN or inf")


#: the ConVAE as `jetflows.family` trains and rebuilds it
FAMILY = ModelFamily(
    kind=CHECKPOINT_KIND,
    what="ConVAE",
    check_data=lambda model, data, name: check_particles(data[0], data[1], name),
    describe=lambda model: {"model_config": model.config},
    build=lambda state: ConVAE(ConVAEConfig(**state["model_config"])),
    extra=False,
)


def fit(
    model: ConVAE,
    train: tuple[torch.Tensor, torch.Tensor],
    valid: tuple[torch.Tensor, torch.Tensor],
    *,
    loss: LossConfig | None = None,
    normalization: Normalization | None = None,
    **options: Unpack[FitOptions],
) -> FitResult:
    """Train ``model`` on (particles (N, P, F), mask (N, P)), early-stopping on validation loss.

    Arguments:
        model: a `ConVAE` (its weights are updated in place).
        train, valid: (particles, mask); particles in physical units (eta_rel, phi_rel,
            pt_rel). A conditional decoder's condition is computed once for every jet here.
        loss: `LossConfig`.
        normalization: the map the network's input goes through (and its output comes back
            through) batch by batch; the losses compare physical particles, and it is stored
            in the state. None: the network sees physical units.
        options: `jetflows.family.FitOptions`: config (`TrainConfig`), resume (a state from
            ``on_epoch`` or a previous `FitResult`), on_epoch (called after every epoch with
            (epoch, history row, state), e.g. to write a checkpoint or to report to Optuna:
            raise optuna.TrialPruned there to prune), progress (a tqdm bar of the loss terms).

    Returns:
        `FitResult`; its state holds the best weights (lowest validation loss).

    Raises:
        ValueError: bad data or a resume state from another model/config.
        FloatingPointError: a loss term became NaN/inf (the message names the epoch and term).
    """
    loss, config = loss or LossConfig(), options.pop("config", None) or TrainConfig()
    FAMILY.check(model, train, valid)
    resume = options.get("resume")
    if resume is not None:
        check_state(resume, model.config)
    if model.config.condition:  # once, not per batch: an exclusive-kT clustering costs
        with torch.no_grad():
            train, valid = ((*part, model.condition_of(*part)) for part in (train, valid))
        if resume is None:
            model.set_condition_scale(train[2])
    gamma_2 = loss.gamma_2 if loss.gamma_2 is not None else L.default_gamma_2(train[0], train[1])
    describe = {
        "loss_config": loss,
        "gamma_2": gamma_2,
        "normalization": normalization.to_dict() if normalization else None,
    }
    return FAMILY.fit(
        model,
        train,
        valid,
        objective=ConVAELoss(loss, gamma_2, normalization, config.precision),
        describe=describe,
        checked=True,  # before the decoder's condition joined the data
        config=config,
        **options,
    )


def check_state(state: dict[str, Any], config: ConVAEConfig | None = None) -> None:
    """Raise ValueError unless ``state`` is a ConVAE checkpoint (for ``config``, if given)."""
    check_kind(state, CHECKPOINT_KIND)
    # compared as built configs (every field filled in), not as raw dicts
    if config is not None and asdict(ConVAEConfig(**state["model_config"])) != asdict(config):
        raise UserError(
            f"the checkpoint is for another ConVAE architecture: {state['model_config']}"
        )


def model_from_state(state: dict[str, Any], *, best: bool = True) -> ConVAE:
    """Rebuild a ConVAE from a checkpoint state alone (best or last weights), in eval mode."""
    return FAMILY.from_state(state, best=best)
