"""The training loop shared by the ConVAE and the flows: one `fit_loop`, resumable exactly.

A model-specific ``objective(model, *batch) -> (mean loss, {term: mean value})`` is all a
caller supplies; this module owns batching, the optimizer and schedule, clipping, NaN
detection, early stopping on the validation loss, the tqdm bar and the self-describing state.
After every epoch it calls ``on_epoch(epoch, row, state)``: the caller writes the checkpoint
there (atomically, see `pipelines`) and Optuna reports and prunes there. Passing a saved state
back as ``resume`` continues exactly where it stopped: same epoch count, optimizer and scheduler
state, random streams, early-stopping counters and history.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from jetflows import __version__, interrupt
from jetflows.checks import require
from jetflows.distributed import all_sum, is_main, rank_world
from jetflows.errors import UserError

PRECISIONS = ("fp32", "bf16")
Batch = Sequence[torch.Tensor | None]
ObjectiveFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]

#: fused=True: one kernel for the whole update; on this CPU it took Adam's step on the research
#: code's model's 11M parameters from 40 ms to 4 ms (the step cost as much as the forward pass).
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": functools.partial(torch.optim.Adam, fused=True),
    "adamw": functools.partial(torch.optim.AdamW, fused=True),
}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (seed: batch 100, lr 1e-4, 300 epochs, Adam).

    Arguments:
        epochs: maximum number of epochs.
        batch_size: jets per step.
        lr: learning rate; optimizer: "adam" or "adamw"; weight_decay for AdamW.
        schedule: "none", "cosine" (to 0 over ``epochs``) or "plateau" (halve after
            ``patience // 2`` epochs without improvement).
        patience: stop after this many epochs without a better validation loss (0: never).
        clip_norm: clip the gradient norm to this value (None: no clipping).
        seed: seeds shuffling, the reparameterisation noise and initialisation.
        precision: "fp32", or "bf16" for mixed precision (bfloat16 autocast of the network):
            faster on CPUs with native bf16 instructions (AVX512-BF16, AMX), slower on others;
            measure with benchmarks/convae_throughput.py.
        compile: a torch.compile backend for the loss ("inductor" on a GPU; None: eager).
            Compiling takes tens of seconds per model: meant for long GPU runs.
        ema: decay of an exponential moving average of the weights, updated after every
            step (0: none), warmed up as min(ema, (1 + n) / (10 + n)) after n updates so that
            the first steps' weights fade fast. With it, validation, early stopping and the
            best weights are the average's, while the optimizer keeps stepping the raw
            weights; buffers (batch-norm statistics) are the raw model's.
    """

    epochs: int = 300
    batch_size: int = 100
    lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "none"
    patience: int = 20
    clip_norm: float | None = None
    seed: int = 0
    precision: str = "fp32"
    compile: str | None = None
    ema: float = 0.0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}: use one of {PRECISIONS}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(
                f"unknown optimizer {self.optimizer!r}: use one of {sorted(OPTIMIZERS)}"
            )
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {self.schedule!r}: use one of {sorted(SCHEDULES)}")
        require(self, ("epochs", "batch_size"), low=1)
        require(self, ("lr", "clip_norm"), strict=True)
        require(self, ("weight_decay", "patience", "seed", "ema"))
        if self.ema >= 1:
            raise UserError(f"ema must be a decay in [0, 1), got {self.ema}")


SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, TrainConfig], Any]] = {
    "none": lambda opt, cfg: None,
    "cosine": lambda opt, cfg: torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs),
    "plateau": lambda opt, cfg: torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.5, patience=max(cfg.patience // 2, 1)
    ),
}


@dataclass
class FitResult:
    """What `fit` returns: per-epoch history and the final state (a checkpoint's contents)."""

    history: list[dict[str, float]]
    state: dict[str, Any]
    stopped_early: bool  # patience ran out before ``epochs``; False when every epoch ran


def _batches(n: int, size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(size))


def _take(data: Batch, index: torch.Tensor) -> list[torch.Tensor | None]:
    return [None if t is None else t[index] for t in data]


def _check_finite(name: str, value: float, epoch: int) -> None:
    if not math.isfinite(value):
        raise FloatingPointError(
            f"epoch {epoch}: the {name} term became {value}; lower the learning rate "
            "or clip gradients (TrainConfig.clip_norm)"
        )


class _Bound(nn.Module):
    """``objective(model, *batch)`` as a module, so that DistributedDataParallel can wrap the
    whole loss (flows are trained through ``log_prob``, not ``forward``)."""

    def __init__(self, model: nn.Module, objective: ObjectiveFn) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, *batch: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective(self.model, *batch)


def _epoch(
    module: nn.Module,
    data: Batch,
    opt: torch.optim.Optimizer | None,
    cfg: TrainConfig,
    generator: torch.Generator | None,
    epoch: int,
    after_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """One pass; trains when ``opt`` is given (calling ``after_step`` after every optimizer
    step). Mean of each term over the jets.

    Data-parallel: every rank draws the same global batches (same shuffling seed) and takes
    its contiguous slice of each; DDP averages the gradients, so a step is the step of one
    process on the whole global batch (exactly so when the batch divides by the world size).
    Global batches smaller than the world size (a short tail) are skipped on every rank.
    """
    rank, world = rank_world()
    names: list[str] = []
    sums: torch.Tensor | None = None
    seen = 0
    module.train(opt is not None)
    for index in _batches(len(data[0]), cfg.batch_size, generator):
        interrupt.check()  # a stop request swallowed where its signal landed ends here
        if len(index) < world:
            continue
        part = index.tensor_split(world)[rank]
        with torch.set_grad_enabled(opt is not None):
            total, terms = module(*_take(data, part))
        names = ["loss", *terms]
        # float64: a history of large NLLs must still show small improvements
        local = torch.stack([total.detach(), *(t.detach() for t in terms.values())]).double()
        weighted = all_sum(local * len(part))  # sums over this global batch, every rank
        for name, value in zip(names, (weighted / len(index)).tolist(), strict=True):
            _check_finite(name, value, epoch)
        sums = weighted if sums is None else sums + weighted
        seen += len(index)
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            total.backward()
            if cfg.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.clip_norm)
            opt.step()
            if after_step is not None:
                after_step()
    if sums is None:
        raise UserError(f"no batch of at least {world} jets (one per process)")
    return dict(zip(names, (sums / seen).tolist(), strict=True))


def fit_loop(
    model: nn.Module,
    objective: ObjectiveFn,
    train: Batch,
    valid: Batch,
    *,
    config: TrainConfig,
    kind: str,
    describe: dict[str, Any],
    resume: dict[str, Any] | None = None,
    on_epoch: Callable[[int, dict[str, float], dict[str, Any]], None] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> FitResult:
    """Train ``model`` on ``train`` tensors (first dimension N), early-stopping on ``valid``.

    Arguments:
        model: updated in place; ends with its best weights (lowest validation loss; with
            ``config.ema``, the moving average's best), in eval mode. The returned state's
            ``state_dict`` holds the last raw weights, from which it resumes.
        objective: ``objective(model, *batch)`` -> (mean loss, {term name: mean value}).
        train, valid: tuples of tensors sharing the first dimension (None entries pass through).
        config: `TrainConfig`.
        kind: the checkpoint kind written into the state, e.g. "jetflows.convae".
        describe: what rebuilds the model and must match on resume (its configs, the
            preprocessing); stored at the top level of the state, a config (dataclass) as
            its dict. A field a config gained since a checkpoint was written is taken at its
            default there.
        resume: a state from ``on_epoch`` or a previous `FitResult`: continue from there.
        on_epoch: called after every epoch with (epoch, history row, state); on rank 0 only
            when data-parallel.
        progress: tqdm bar with the validation terms (rank 0).

    Under torchrun (torch.distributed initialized) the loss is wrapped in
    DistributedDataParallel and every rank trains on its slice of each global batch; history,
    validation loss and early stopping are global, so every rank stops at the same epoch.

    Raises:
        ValueError: a resume state of another kind or with other configs.
        FloatingPointError: a loss term became NaN/inf (the message names the epoch and term).
    """
    opt = OPTIMIZERS[config.optimizer](
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    run = _Run(model, opt, SCHEDULES[config.schedule](opt, config), config, kind, describe)
    if resume is not None:
        run.restore(resume)
    else:
        torch.manual_seed(config.seed)
    module: nn.Module = _Bound(model, objective)
    if rank_world()[1] > 1:  # torchrun: gradients averaged over the ranks every step
        module = nn.parallel.DistributedDataParallel(module)
    if config.compile is not None:  # after DDP: dynamo splits the graph at its buckets
        module = torch.compile(module, backend=config.compile)
    bar = tqdm(
        range(run.epoch, config.epochs),
        initial=run.epoch,
        total=config.epochs,
        desc=desc,
        unit="epoch",
        disable=not progress or not is_main(),
    )
    # validation scores the weights that are kept: the moving average's, if there is one
    scored = module if run.ema is None else _Bound(run.kept(), objective)
    if run.ema is not None and config.compile is not None:
        scored = torch.compile(scored, backend=config.compile)
    for epoch in bar:
        start = time.perf_counter()
        try:
            fitted = _epoch(module, train, opt, config, run.generator, epoch, run.after_step)
            checked = _epoch(scored, valid, None, config, None, epoch)
        except FloatingPointError as err:  # say which model: a pipeline trains several
            raise FloatingPointError(f"training {desc} ({kind}) stopped at {err}") from None
        row = {f"train_{k}": v for k, v in fitted.items()}
        row.update({f"valid_{k}": v for k, v in checked.items()})
        row["seconds"] = time.perf_counter() - start  # wall time of the epoch, for benchmarks
        run.end_epoch(epoch, row)
        bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k.startswith("valid")})
        if on_epoch is not None and is_main():  # one process writes checkpoints and reports
            on_epoch(epoch, row, run.state())
        if run.should_stop():
            break
    state = run.state()  # before the best weights go back in: it resumes from the last ones
    model.load_state_dict(run.best_weights)
    model.train(False)  # as the last validation left it when it scored the model itself
    # early: patience ran out before the epoch budget did
    return FitResult(run.history, state, run.epoch < config.epochs)


class _Run:
    """Mutable training bookkeeping: epoch, history, best weights, early-stopping counter."""

    def __init__(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        scheduler: Any,
        config: TrainConfig,
        kind: str,
        describe: dict[str, Any],
    ) -> None:
        self.model, self.opt, self.scheduler, self.config = model, opt, scheduler, config
        described = {**describe, "train_config": config}
        self.kind = kind
        self.describe = {k: asdict(v) if is_dataclass(v) else v for k, v in described.items()}
        # each described config's defaults: a field added since a checkpoint was written held
        # its default then, so an older checkpoint still resumes (and one trained otherwise not)
        self.defaults = {k: asdict(type(v)()) for k, v in described.items() if is_dataclass(v)}
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch, self.history, self.best, self.bad_epochs = 0, [], math.inf, 0
        self.best_weights = copy.deepcopy(model.state_dict())
        # torch's AveragedModel rather than a hand-written average: it keeps buffers in sync
        # (use_buffers=False) and its state (n_averaged included) resumes exactly
        self.ema = (
            AveragedModel(model, multi_avg_fn=functools.partial(_ema_update, config.ema))
            if config.ema > 0
            else None
        )

    def after_step(self) -> None:
        """After every optimizer step: the moving average takes the new weights in."""
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def kept(self) -> nn.Module:
        """The weights validation scores and the best weights copy: the average's, if any."""
        return self.model if self.ema is None else self.ema.module

    def end_epoch(self, epoch: int, row: dict[str, float]) -> None:
        self.epoch = epoch + 1
        self.history.append({"epoch": epoch, "lr": self.opt.param_groups[0]["lr"], **row})
        if row["valid_loss"] < self.best:
            self.best, self.bad_epochs = row["valid_loss"], 0
            self.best_weights = copy.deepcopy(self.kept().state_dict())
        else:
            self.bad_epochs += 1
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(row["valid_loss"])
        elif self.scheduler is not None:
            self.scheduler.step()

    def should_stop(self) -> bool:
        patience = self.config.patience
        return self.epoch >= self.config.epochs or (patience > 0 and self.bad_epochs >= patience)

    def state(self) -> dict[str, Any]:
        """A self-describing checkpoint: rebuilds the model and resumes training exactly."""
        return {
            "kind": self.kind,
            "version": __version__,
            **copy.deepcopy(self.describe),
            "epoch": self.epoch,
            "history": copy.deepcopy(self.history),
            "state_dict": copy.deepcopy(self.model.state_dict()),
            "best_state_dict": copy.deepcopy(self.best_weights),
            "best_valid_loss": self.best,
            "bad_epochs": self.bad_epochs,
            "optimizer": copy.deepcopy(self.opt.state_dict()),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "ema": copy.deepcopy(self.ema.state_dict()) if self.ema is not None else None,
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.generator.get_state()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        check_kind(state, self.kind)
        for key, value in self.describe.items():
            stored = state.get(key)
            if key in self.defaults and isinstance(stored, dict):
                stored = {**self.defaults[key], **stored}
            if stored != value:
                raise UserError(f"cannot resume: the checkpoint was trained with another {key}")
        self.model.load_state_dict(state["state_dict"])
        self.opt.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["shuffle"])
        self.epoch, self.history = state["epoch"], copy.deepcopy(state["history"])
        self.best, self.bad_epochs = state["best_valid_loss"], state["bad_epochs"]
        self.best_weights = copy.deepcopy(state["best_state_dict"])


def _ema_update(
    decay: float, averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor
) -> None:
    """`AveragedModel`'s multi_avg_fn: averaged <- d averaged + (1 - d) current, in place, with
    d = min(decay, (1 + n) / (10 + n)) after n updates (torch's own EMA function has a fixed
    decay, which at 0.9999 still carries the first epochs' weights after 19,000 steps)."""
    d = min(decay, (1 + float(n)) / (10 + float(n)))
    torch._foreach_lerp_(averaged, current, 1 - d)


def check_kind(state: Any, kind: str) -> None:
    """Raise ValueError unless ``state`` is a checkpoint dict of ``kind``."""
    if not isinstance(state, dict) or state.get("kind") != kind:
        found = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise UserError(f"not a {kind} checkpoint (it holds {found!r})")
