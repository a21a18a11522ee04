"""One training loop for teachers and students: Adam, shuffled mini-batches, early stopping on a
validation loss, best weights restored, tqdm bar over epochs (shown on a terminal only)."""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.config import TrainConfig

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

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def _tensors(arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
    return [torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32) for a in arrays]


@torch.no_grad()
def evaluate_loss(model: nn.Module, loss_fn: LossFn, tensors: Sequence[torch.Tensor], batch_size: int = 4096) -> float:
    model.eval()
    n = tensors[0].shape[0]
    total = 0.0
    for i in range(0, n, batch_size):
        batch = [t[i : i + batch_size] for t in tensors]
        total += float(loss_fn(model, batch)) * batch[0].shape[0]
    return total / n


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train: Sequence[np.ndarray],
    val: Sequence[np.ndarray],
    cfg: TrainConfig,
    seed: int,
    desc: str = "train",
) -> History:
    """Train ``model`` in place and return its history; the best-validation weights are kept."""
    seed_everything(seed)
    train_t, val_t = _tensors(train), _tensors(val)
    n = train_t[0].shape[0]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    hist = History()
    best_state = copy.deepcopy(model.state_dict())
    since_best = 0
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=desc, unit="ep", leave=False, disable=None)
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=gen)
        running = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            batch = [t[idx] for t in train_t]
            loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += float(loss.detach()) * idx.numel()
        hist.train_loss.append(running / n)
        val_loss = evaluate_loss(model, loss_fn, val_t)
        hist.val_loss.append(val_loss)
        hist.epochs_run = epoch + 1
        if val_loss < hist.best_val:
            hist.best_val, hist.best_epoch, since_best = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        bar.set_postfix(train=f"{hist.train_loss[-1]:.4f}", val=f"{val_loss:.4f}", best=hist.best_epoch)
        if since_best >= cfg.patience:
            hist.stopped_early = True
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    hist.seconds = time.perf_counter() - t0
    log.info(
        "%s: best epoch %d of %d, val loss %.5f, %.1fs%s",
        desc,
        hist.best_epoch + 1,
        hist.epochs_run,
        hist.best_val,
        hist.seconds,
        " (early stop)" if hist.stopped_early else "",
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
