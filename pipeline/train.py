"""One training loop for teachers and students: Adam, shuffled mini-batches, early stopping on a
validation loss, best weights restored, a tqdm bar over epochs on a terminal and a progress line
with the time left every 30 s otherwise. ``batch_size: auto`` and ``max_steps`` make the defaults
scale with the data: a big table gets bigger batches and a step budget instead of 300 long epochs.

Under ``torchrun`` (see ``pipeline.distributed`` and docs/DISTRIBUTED.md) the same loop runs on every
rank: the model is wrapped in DistributedDataParallel, every global batch (the same batches as one
process would take) is split across the ranks, and validation and training losses are averaged over
all ranks, so early stopping makes the same decision everywhere."""

from __future__ import annotations

import copy
import math
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline import distributed
from pipeline.errors import NonFiniteError
from pipeline.options import TrainConfig, batch_size_for

log = logging.getLogger(__name__)

# loss_fn(model, batch_tensors) -> scalar loss
LossFn = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels (CPU runs repeat)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_val: float = float("inf")
    epochs_run: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
    batch_size: int = 0  # as used (``auto`` resolved for the number of training rows)
    steps: int = 0  # optimizer steps taken
    stopped_by: str = ""  # "patience", "max_steps", "time_budget" or "" (ran every epoch)
    val_metric: list[float] = field(default_factory=list)  # fit(val_metric=...): one comparable figure per epoch
    patience_from_step: int = 0  # early stopping waited for this many steps (batchnorm_warmup_steps)

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def _tensors(arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """float32 tensors, except integer arrays (class labels, sample indices), which stay int64."""
    return [torch.as_tensor(np.ascontiguousarray(a),
                            dtype=torch.int64 if np.issubdtype(np.asarray(a).dtype, np.integer) else torch.float32)
            for a in arrays]


def _require_finite_loss(desc: str, epoch: int, train: float, val: float) -> None:
    """A NaN or infinite loss stops training where it appears (NaN compares false, so it would otherwise
    never become the best epoch and the run would go on with the last finite weights, silently)."""
    if not (math.isfinite(train) and math.isfinite(val)):
        raise NonFiniteError(f"{desc}: loss is not finite at epoch {epoch + 1} (train {train}, validation {val}); "
                             "training diverged or the data holds extreme values: lower the learning rate "
                             "(teacher.train.lr / distill.train.lr) or rescale the data")


PROGRESS_EVERY = 30.0  # seconds between progress lines when no bar is shown
PROGRESS_BARS = True  # False in worker processes (distill.parallel): progress lines, never a second bar


class Heartbeat:
    """Progress when no bar is shown (a log file, CI, nohup): one line every ``every`` seconds with the
    epoch, losses, best epoch and an upper bound of the time left (every remaining epoch run)."""

    def __init__(self, desc: str, epochs: int, enabled: bool, every: float | None = None):
        self.desc, self.epochs, self.enabled = desc, epochs, enabled
        self.every = PROGRESS_EVERY if every is None else every
        self.t0 = self.last = time.perf_counter()

    def epoch_done(self, epoch: int, hist: History) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.every:
            return
        self.last = now
        per_epoch = (now - self.t0) / (epoch + 1)
        log.info("%s: epoch %d/%d, train %.5f, val %.5f, best epoch %d, %.1fs/epoch, at most %s left",
                 self.desc, epoch + 1, self.epochs, hist.train_loss[-1], hist.val_loss[-1], hist.best_epoch + 1,
                 per_epoch, _duration(per_epoch * (self.epochs - epoch - 1)))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


@torch.no_grad()
def evaluate_loss(model: nn.Module, loss_fn: LossFn, tensors: Sequence[torch.Tensor], batch_size: int = 4096) -> float:
    model.eval()
    n = tensors[0].shape[0]
    total = 0.0
    for i in range(0, n, batch_size):
        batch = [t[i : i + batch_size] for t in tensors]
        total += float(loss_fn(model, batch)) * batch[0].shape[0]
    return total / n


def _evaluate_sharded(model: nn.Module, loss_fn: LossFn, tensors: Sequence[torch.Tensor]) -> float:
    """The validation loss over all ranks: each evaluates its contiguous share of the rows, then the
    row-weighted sum is all-reduced, so every rank gets the same number."""
    rows = distributed.shard_rows(tensors[0].shape[0], distributed.rank(), distributed.world_size())
    part = [t[rows] for t in tensors]
    m = part[0].shape[0]
    total = evaluate_loss(model, loss_fn, part) * m if m else 0.0
    total, count = distributed.all_reduce_mean_weighted(total, m)
    return total / count


BN_SETTLED = 0.05  # early stopping waits until batch norm's running statistics keep < 5 % of their start


def batchnorm_warmup_steps(model: nn.Module) -> int:
    """Optimizer steps until every batch norm's running statistics hold less than BN_SETTLED of their
    initial values, (1 - momentum)^k < BN_SETTLED. Before that, the eval-mode network the validation
    loss measures mostly normalises by its initial statistics, and the validation loss can stay flat
    while the training loss falls: torchvision's MobileNetV3 uses momentum 0.01 (299 steps, about 9
    epochs of 2,000 rows at batch 64), and a patience of 8 stopped a pose student at its first epoch.
    0 without batch norm (or with a cumulative average, momentum None)."""
    steps = [math.ceil(math.log(BN_SETTLED) / math.log(1 - m.momentum)) for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
             and m.momentum is not None and 0 < m.momentum < 1]
    return max(steps, default=0)


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train: Sequence[np.ndarray],
    val: Sequence[np.ndarray],
    cfg: TrainConfig,
    seed: int,
    desc: str = "train",
    on_epoch_end: Callable[[int], None] | None = None,
    val_metric: Callable[[nn.Module], float] | None = None,
) -> History:
    """Train ``model`` in place and return its history; the best-validation weights are kept.

    ``on_epoch_end(epoch)`` is called after each epoch's training pass (before validation), on every rank.
    ``val_metric(model)``, if given, is recorded after each validation (``History.val_metric``): a figure
    that compares across methods whose losses differ (e.g. the validation MAE in label units).

    ``loss_fn(net, batch)`` gets the network to call for the batch (under torchrun the
    DistributedDataParallel wrapper of ``model`` for training batches, ``model`` itself for validation)
    and the rows of every tensor for the same sample indices (so an integer sample-index column stays
    aligned). ``cfg.batch_size`` is the global batch: under torchrun each rank takes its share of it.
    Patience stops training only after ``batchnorm_warmup_steps(model)`` steps."""
    seed_everything(seed)
    distributed.init_from_env()
    # every rank trains together only in a distributed stage; on rank 0 alone this is one process
    world, rank = (distributed.world_size(), distributed.rank()) if distributed.collective() else (1, 0)
    train_t, val_t = _tensors(train), _tensors(val)
    n = train_t[0].shape[0]
    gen = torch.Generator().manual_seed(seed)
    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # a method may leave a head out of its loss (e.g. scratch): those parameters get no gradient
        net = DistributedDataParallel(model, find_unused_parameters=True)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    batch_size = batch_size_for(cfg, n)
    steps_per_epoch = math.ceil(n / batch_size)
    epochs = cfg.epochs if cfg.max_steps is None else min(cfg.epochs, math.ceil(cfg.max_steps / steps_per_epoch))
    hist = History(batch_size=batch_size, patience_from_step=batchnorm_warmup_steps(model))
    best_state = copy.deepcopy(model.state_dict())
    since_best = 0
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc=desc, unit="ep", leave=False, disable=None if rank == 0 and PROGRESS_BARS else True)
    progress = Heartbeat(desc, epochs, enabled=rank == 0 and bar.disable)  # log lines when there is no bar
    for epoch in bar:
        net.train()
        perm = torch.randperm(n, generator=gen)  # the same on every rank: same seed, same generator
        if world > 1:
            batches = distributed.shard_batches(perm, batch_size, rank, world)
        else:
            batches = (perm[i : i + batch_size] for i in range(0, n, batch_size))
        running, seen = 0.0, 0
        for idx in batches:
            if len(idx) < 2 and has_batchnorm:  # batch norm cannot normalise one sample in training mode
                continue
            batch = [t[idx] for t in train_t]
            loss = loss_fn(net, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            hist.steps += 1
            running += float(loss.detach()) * idx.numel()
            seen += idx.numel()
        if world > 1:
            running, seen = distributed.all_reduce_mean_weighted(running, seen)
        hist.train_loss.append(running / seen)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        val_loss = evaluate_loss(model, loss_fn, val_t) if world == 1 else _evaluate_sharded(model, loss_fn, val_t)
        hist.val_loss.append(val_loss)
        if val_metric is not None:
            hist.val_metric.append(float(val_metric(model)))
        hist.epochs_run = epoch + 1
        _require_finite_loss(desc, epoch, hist.train_loss[-1], val_loss)
        if val_loss < hist.best_val:
            hist.best_val, hist.best_epoch, since_best = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        bar.set_postfix(train=f"{hist.train_loss[-1]:.4f}", val=f"{val_loss:.4f}", best=hist.best_epoch)
        progress.epoch_done(epoch, hist)
        if since_best >= cfg.patience and hist.steps >= hist.patience_from_step:
            hist.stopped_early, hist.stopped_by = True, "patience"
            break
        if cfg.max_steps is not None and hist.steps >= cfg.max_steps:
            hist.stopped_by = "max_steps"
            break
        if cfg.time_budget is not None and time.perf_counter() - t0 >= cfg.time_budget:
            hist.stopped_by = "time_budget"
            break
    bar.close()
    del net
    model.load_state_dict(best_state)
    model.eval()
    hist.seconds = time.perf_counter() - t0
    log.info(
        "%s: best epoch %d of %d, val loss %.5f, %.1fs%s%s%s",
        desc,
        hist.best_epoch + 1,
        hist.epochs_run,
        hist.best_val,
        hist.seconds,
        " (early stop)" if hist.stopped_early else "",
        f" (stopped by {hist.stopped_by.replace('_', ' ')}: {hist.steps} steps)"
        if hist.stopped_by in ("max_steps", "time_budget") else "",
        f" ({world} processes)" if world > 1 else "",
    )
    return hist


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Model outputs as float32 NumPy; for a two-head model, the tuple's first element is the label head."""
    model.eval()
    outs = []
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    for i in range(0, xt.shape[0], batch_size):
        out = model(xt[i : i + batch_size])
        outs.append(out)
    if isinstance(outs[0], tuple):
        return tuple(torch.cat([o[j] for o in outs]).numpy() for j in range(len(outs[0])))  # type: ignore[return-value]
    return torch.cat(outs).numpy()
