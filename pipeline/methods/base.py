"""The method registry, the ``Method`` base class, ``TrainingSet``, and helpers every family shares.

A method is a class registered with ``register("name")``. It declares the ``distill.<key>`` options
sections it reads (``options = {"tor": TORConfig}``, each class a ``pipeline.options.Strict``); the
config composes ``distill`` from the sections of the registered methods, and ``build_method`` hands a
method exactly its sections, which it reads as attributes (``self.tor.mode``). It is built once per
training run from those options and what is known about the training set before training (the
teacher's outputs on it, so data-dependent constants such as TOR's MAD threshold or the data
selection are fixed up front), and its ``loss`` maps the student's two heads, the labels, the
teacher's outputs and the samples' indices in the training set to a scalar.

``tasks`` says where a method applies (``regression``, ``classification``); the config refuses a
method on a task it does not support. ``n_extra(d_out)`` widens the label head (the gambler's
abstain output, the gaussian student's log-variances); such a method ``abstains()``. Methods that
leave samples out of the backward pass count them: ``usage_per_epoch`` is the share of training
samples that took part, per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping

import numpy as np
import torch

from pipeline import distributed
from pipeline.options import Strict

MAD_TO_SIGMA = 1.4826  # MAD of a Gaussian times this is its standard deviation
BOTH = frozenset({"regression", "classification"})
CLS = frozenset({"classification"})

# --------------------------------------------------------------------------- the registry

METHODS: dict[str, type[Method]] = {}
_LISTENERS: list[Callable[[], None]] = []
_INSTANCE_ATTRIBUTES = {"task", "train_set", "usage_per_epoch"}  # set by Method.__init__: no section may shadow them


def option_sections() -> dict[str, type[Strict]]:
    """Every ``distill.<key>`` options section a registered method reads, in order of first use."""
    out: dict[str, type[Strict]] = {}
    for cls in METHODS.values():
        for key, opt in cls.options.items():
            out.setdefault(key, opt)
    return out


def on_registry_change(listener: Callable[[], None]) -> None:
    """Call ``listener()`` after every later ``register`` / ``unregister`` (the config follows the registry)."""
    _LISTENERS.append(listener)


def _notify() -> None:
    for listener in _LISTENERS:
        listener()


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: add a method to ``METHODS`` under ``name`` (its options sections with it)."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        known = option_sections()
        for key, opt in cls.options.items():
            if not (isinstance(opt, type) and issubclass(opt, Strict)):
                raise TypeError(f"method {name!r}: options section {key!r} must be a pipeline.options.Strict class")
            if known.get(key, opt) is not opt:
                raise ValueError(f"method {name!r}: options section {key!r} is {known[key].__name__} elsewhere, "
                                 f"not {opt.__name__}")
            if not key.isidentifier() or hasattr(cls, key) or key in _INSTANCE_ATTRIBUTES:
                raise ValueError(f"method {name!r}: options section name {key!r} is not usable as an attribute")
        cls.name = name
        METHODS[name] = cls
        try:
            _notify()
        except Exception:
            del METHODS[name]
            _notify()
            raise
        return cls

    return deco


def unregister(name: str) -> None:
    """Remove a method (and the options sections only it read) from the registry."""
    del METHODS[name]
    _notify()


def build_method(name: str, distill, teacher_residuals: np.ndarray | None = None,
                 train_set: TrainingSet | None = None) -> Method:
    """Method ``name`` built from its options sections, taken from ``distill`` (the ``distill`` config, or
    a mapping key -> options; a mapping may leave sections out, they then take their defaults)."""
    cls = METHODS[name]
    if isinstance(distill, Mapping):
        opts = {key: distill[key] if key in distill else opt() for key, opt in cls.options.items()}
    else:
        opts = {key: getattr(distill, key) for key in cls.options}
    return cls(opts, teacher_residuals, train_set=train_set)


# --------------------------------------------------------------------------- shared helpers


def residual_norm(y: torch.Tensor, y_teacher: torch.Tensor) -> torch.Tensor:
    """Per-sample |y - y_teacher| (Euclidean norm over outputs, so multi-output works the same)."""
    r = (y - y_teacher).reshape(y.shape[0], -1)
    return r.norm(dim=1)


def norms(residuals: np.ndarray) -> np.ndarray:
    """Per-sample Euclidean norm of (n,) or (n, k) residuals, in float64."""
    r = np.asarray(residuals, dtype=np.float64)
    return np.abs(r.ravel()) if r.ndim == 1 or r.shape[1] == 1 else np.linalg.norm(r.reshape(len(r), -1), axis=1)


def robust_scale(residuals: np.ndarray) -> float:
    """MAD-based scale of residuals, 1.4826 * median(|r - median(r)|): the sigma of Gaussian r.

    For several outputs the scale of the residual *vector*: sqrt(sum_j sigma_j^2) with sigma_j the MAD
    scale of output j, i.e. the RMS length of a Gaussian residual vector. (The MAD of the per-sample
    norms would be wrong here: norms are skewed and positive, their spread is much smaller than their
    size, so k x that spread rejects most clean samples.) For one output both readings agree."""
    r = np.asarray(residuals, dtype=np.float64)
    r = r.reshape(len(r), -1) if r.ndim > 1 else r.reshape(-1, 1)
    sig = MAD_TO_SIGMA * np.median(np.abs(r - np.median(r, axis=0)), axis=0)
    return float(np.sqrt(np.sum(sig ** 2)))


def as_labels(y: torch.Tensor) -> torch.Tensor:
    """Class labels as the (N,) int64 tensor the classification losses take."""
    return y.reshape(-1).long()


def check_labels(x: torch.Tensor, labels: torch.Tensor) -> None:
    if x.dim() != 2 or labels.dim() != 1 or labels.shape[0] != x.shape[0]:
        raise ValueError(f"expected (N, m) scores and (N,) labels, got {tuple(x.shape)} and {tuple(labels.shape)}")


def true_class(p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """p[i, labels[i]] as an (N,) tensor."""
    return p.gather(1, labels.unsqueeze(1)).squeeze(1)


# --------------------------------------------------------------------------- the base class


@dataclass
class TrainingSet:
    """What a method may know about the training set before training starts."""

    y: np.ndarray  # labels as training sees them: (n, k) float32, or (n,) int64 classes
    teacher: np.ndarray  # teacher outputs on the training set: (n, k) predictions or (n, m) logits
    task: str = "regression"
    significance: np.ndarray | None = None  # (n,) normalised SRL significance from teacher training
    # the teacher's penultimate features (classification with a PyTorch teacher, for ds.score=influence):
    features: np.ndarray | None = None  # (n, d) on the training rows
    val_features: np.ndarray | None = None  # (n_val, d) on the validation rows
    val_y: np.ndarray | None = None  # validation labels as given (n_val,)
    val_teacher: np.ndarray | None = None  # teacher logits on the validation rows (n_val, m)


class Method:
    name: ClassVar[str] = ""
    uses_teacher: ClassVar[bool] = True
    trains_teacher_head: ClassVar[bool] = False  # its loss has a term on the teacher head (else the head stays at init)
    tasks: ClassVar[frozenset[str]] = frozenset({"regression"})
    options: ClassVar[dict[str, type[Strict]]] = {}  # the distill.<key> sections it reads, as self.<key>

    @classmethod
    def n_extra(cls, d_out: int) -> int:
        """Outputs the label head has beyond the task's ``d_out`` (what selective prediction abstains on)."""
        return 0

    @classmethod
    def abstains(cls) -> bool:
        return cls.n_extra(1) > 0

    def __init__(self, opts: Mapping[str, Strict], teacher_residuals: np.ndarray | None = None, *,
                 train_set: TrainingSet | None = None):
        for key, opt in self.options.items():
            if not isinstance(opts.get(key), opt):
                raise TypeError(f"method {self.name!r} needs options section {key!r} as {opt.__name__}")
            setattr(self, key, opts[key])
        self.train_set = train_set
        self.task = train_set.task if train_set is not None else "regression"
        self._used = 0.0
        self._seen = 0
        self.usage_per_epoch: list[float] = []

    def loss(self, label_out: torch.Tensor, teacher_out: torch.Tensor, y: torch.Tensor, y_teacher: torch.Tensor,
             idx: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def count(self, mask: torch.Tensor) -> None:
        """Record which samples of a training batch take part in the backward pass (not during eval)."""
        if torch.is_grad_enabled():
            self._used += float(mask.float().sum())
            self._seen += int(mask.numel())

    def epoch_end(self) -> None:
        # under torchrun each rank counted its share of the batches: sum over ranks
        used, seen = distributed.all_reduce_sum(self._used), distributed.all_reduce_sum(self._seen)
        if seen:
            self.usage_per_epoch.append(used / seen)
        self._used, self._seen = 0.0, 0

    def describe(self) -> dict:
        out = {"method": self.name}
        if self.usage_per_epoch:
            out["samples_used_share_mean"] = float(np.mean(self.usage_per_epoch))
            out["samples_used_share_per_epoch"] = [round(u, 4) for u in self.usage_per_epoch]
        return out
