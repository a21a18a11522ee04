"""Quantization-aware fine-tuning (QAT) of the distilled two-head student, under the method's own loss.

This module: the fine-tuning loop, and the fake quantization of MLP / CNN students (``FakeQuant``,
exact placement). Image backbones (batch norm, residuals, hard-swish): ``pipeline.qat_graph``.

After distillation the student is fine-tuned for a few epochs with fake quantization on its
*deployed* path (backbone + kept head), in the scheme both int8 targets use:

* weights: per-output-channel symmetric int8, scale = max|w| / 127 (what ORT's and TFLite's
  converters compute), straight-through estimator, scale recomputed every forward pass;
* activations: per-tensor asymmetric 8-bit over [min(rmin, 0), max(rmax, 0)] (ORT QDQ uint8 and
  LiteRT int8 share this 256-level grid), at the tensors ORT's QDQ quantizer quantizes: the input
  of a quantized Gemm/Conv (not the first layer's with ``export.int8.float_first_layer``), the
  ReLU output after a quantized layer (ORT folds the ReLU into the quantization), the model output
  (not with ``export.int8.float_last_layer``: ORT then computes the last layer in float);
  max-pool / flatten keep their input's grid. rmin / rmax are the min / max of that tensor over the
  int8 *calibration sample* (``export.calibration``), recomputed through the current model each epoch
  (weights fake-quantized, activations float: what ORT's MinMax calibrator sees on the final model).

Fine-tuning starts from the best post-training point (cross-layer equalisation + GPTQ rounding, as
``export.int8.prepare`` does to the ONNX file). The teacher head stays float and keeps supervising
through the method loss. At the end the weights
are snapped onto their int8 grid, so the converters add no weight rounding, and the exporters'
MinMax calibration on the same sample reproduces the activation ranges the student learned with.
Why this and not PyTorch's pt2e QAT flow: docs/QAT.md.
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from export.quantize import keeps_last_float
from models import ARCHITECTURES as IMAGE_BACKBONES
from pipeline.methods import TrainingSet, build_method
from pipeline.options import TrainConfig
from pipeline.qat_graph import GraphFakeQuant
from pipeline.qat_scheme import ActivationGrid, PerChannelInt8, calibrate_grids, snap
from pipeline.train import evaluate_loss, fit

log = logging.getLogger(__name__)

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
SAME_GRID = (nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)  # keep the input's grid


def deployed_modules(student: nn.Module, keep: str = "label") -> list[nn.Module]:
    """Leaf modules of the deployed path in forward order: the backbone's, then the kept head."""
    leaves = [m for m in student.backbone.modules() if not list(m.children())]
    return leaves + [student.label_head if keep == "label" else student.teacher_head]


def quant_points(modules: list[nn.Module], float_first_layer: bool,
                 float_last_layer: bool = False) -> tuple[list[nn.Module], list[tuple]]:
    """(weight layers, activation points [(module, "in" | "out")]) of the deployed path, as ORT's QDQ
    quantizer places them (``float_last_layer``: the model output is not quantized; every layer's
    weights still are, so the float last layer computes with int8-grid weights and the full-integer
    TFLite file loses nothing on them). Raises ValueError on a module the scheme does not cover (e.g. GELU)."""
    layers = [m for m in modules if isinstance(m, WEIGHT_LAYERS)]
    float_last_layer = keeps_last_float(len(layers), float_first_layer, float_last_layer)
    points: list[tuple] = []
    on_grid = False  # is the current tensor already on an 8-bit grid?
    prev_quantized = False  # was the last weight layer quantized (its ReLU output then is)?
    for i, m in enumerate(modules):
        if isinstance(m, WEIGHT_LAYERS):
            quantized = not (float_first_layer and m is layers[0])
            if quantized and not on_grid:
                points.append((m, "in"))
            prev_quantized, on_grid = quantized, False
            if i == len(modules) - 1 and not (float_last_layer and m is layers[-1]):
                points.append((m, "out"))  # the model output
        elif isinstance(m, nn.ReLU):
            if prev_quantized:
                points.append((m, "out"))
            on_grid = prev_quantized
        elif not isinstance(m, SAME_GRID):
            raise ValueError(f"quantization-aware training covers Linear/Conv/ReLU/MaxPool/Flatten students; "
                             f"found {type(m).__name__}")
    return layers, points


class FakeQuant:
    """Fake quantization attached to a two-head student in place (weight parametrizations and
    activation hooks on the deployed path); ``calibrate`` sets the activation ranges, ``remove``
    detaches it, snapping the weights onto their int8 grid."""

    def __init__(self, student: nn.Module, keep: str = "label", float_first_layer: bool = True,
                 float_last_layer: bool = False):
        self.student = student
        self.layers, self.points = quant_points(deployed_modules(student, keep), float_first_layer, float_last_layer)
        self.grids = [ActivationGrid() for _ in self.points]
        self._hooks = []
        for layer in self.layers:
            parametrize.register_parametrization(layer, "weight", PerChannelInt8())
        for grid, (m, where) in zip(self.grids, self.points):
            if where == "in":
                self._hooks.append(m.register_forward_pre_hook(lambda _m, args, g=grid: (g(args[0]), *args[1:])))
            else:
                self._hooks.append(m.register_forward_hook(lambda _m, _args, out, g=grid: g(out)))

    @property
    def qparams(self) -> list[tuple[float, int] | None]:
        return [g.qparams for g in self.grids]

    def calibrate(self, x: np.ndarray, batch: int = 512) -> list[tuple[float, float]]:
        """Set every activation grid from min / max over ``x`` (weights fake-quantized, activations float)."""
        return calibrate_grids(self.student, self.grids, x, batch)

    def remove(self) -> None:
        """Detach the fake quantization; the weights keep their int8-grid values (snapped)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        snap(self.layers)


@torch.no_grad()
def gptq_init(fq: FakeQuant, x: np.ndarray) -> None:
    """Start from the best PTQ point: round each Linear's weights onto their int8 grid GPTQ-style
    (``export.quantize.gptq_round``), layer by layer, on the calibration inputs as the quantized
    model feeds them (earlier layers rounded, activations on their grids)."""
    from export.quantize import gptq_round

    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    for layer in fq.layers:
        if not isinstance(layer, nn.Linear) or layer.in_features < 2:
            continue
        fq.calibrate(x)
        seen: list[torch.Tensor] = []
        hook = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))  # after FakeQuant's
        try:
            fq.student.eval()
            fq.student(xt)
        finally:
            hook.remove()
        w = layer.parametrizations.weight.original
        q = gptq_round(w.double().numpy(), torch.cat(seen).reshape(-1, layer.in_features).double().numpy())
        w.copy_(torch.as_tensor(q, dtype=w.dtype))
    fq.calibrate(x)


@torch.no_grad()
def equalise(student: nn.Module, keep: str, x: np.ndarray, alpha: float) -> int:
    """Cross-layer equalisation (Nagel et al. 2019) of the Linear-ReLU-Linear pairs on the deployed
    path, as ``export.quantize.prepare_for_int8`` does on the ONNX graph: hidden channel i is scaled by
    s_i = (max_j r_j / r_i) ** alpha in the first layer and by 1 / s_i in every layer it feeds (both
    heads after the last hidden layer), so both heads compute the same function. Returns the pairs done."""
    mods = deployed_modules(student, keep)
    heads = (student.label_head, student.teacher_head)
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    done = 0
    for a, relu, b in zip(mods, mods[1:], mods[2:]):
        if not (isinstance(a, nn.Linear) and isinstance(relu, nn.ReLU) and isinstance(b, nn.Linear)) or alpha <= 0:
            continue
        seen: list[torch.Tensor] = []
        hook = relu.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
        try:
            student.eval()
            student(xt)
        finally:
            hook.remove()
        r = torch.cat(seen).amax(dim=0)
        if r.max() <= 0:
            continue
        s = torch.where(r > 0, (r.max() / r.clamp_min(1e-30)) ** alpha, torch.ones_like(r))
        a.weight.mul_(s[:, None])
        a.bias.mul_(s)
        for nxt in heads if b in heads else (b,):
            nxt.weight.div_(s[None, :])
        done += 1
    return done


@torch.no_grad()
def start_point(student: nn.Module, keep: str, float_first_layer: bool, x: np.ndarray,
                alphas=(0.0, 0.25, 0.5, 0.75, 1.0), float_last_layer: bool = False) -> tuple[FakeQuant, float]:
    """Equalise ``student`` in place with the strength whose GPTQ-rounded fake-quantized output is
    closest to the float output on ``x`` (the best PTQ point, as ``export.int8.prepare`` picks it), then
    attach the fake quantization and GPTQ-round the weights. Returns (FakeQuant, alpha)."""
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    head = 0 if keep == "label" else 1
    student.eval()
    ref = student(xt)[head]
    best = None
    for alpha in alphas:
        cand = copy.deepcopy(student)
        equalise(cand, keep, x, alpha)
        gptq_init(FakeQuant(cand, keep, float_first_layer, float_last_layer), x)
        err = float(((cand(xt)[head] - ref) ** 2).mean())
        if best is None or err < best[0]:
            best = (err, alpha)
    equalise(student, keep, x, best[1])
    fq = FakeQuant(student, keep, float_first_layer, float_last_layer)
    gptq_init(fq, x)
    return fq, best[1]


def applies(cfg) -> bool:
    """Whether the student stage fine-tunes with QAT (and the export then skips the weight preparation):
    ReLU students of the ``mlp`` / ``cnn`` families (sequential Linear/Conv/ReLU/MaxPool paths, exact
    placement: ``FakeQuant``) and the reference image backbones (batch norm, ReLU6 / hard-swish,
    squeeze-excite, residual adds: ``pipeline.qat_graph.GraphFakeQuant``)."""
    if not cfg.qat.enabled:
        return False
    if cfg.student.backbone in IMAGE_BACKBONES:
        return True
    return cfg.student.activation == "relu" and cfg.student.backbone in ("mlp", "cnn")


def calibration_rows(cfg, x: np.ndarray, y: np.ndarray | None, task: str = "regression") -> np.ndarray:
    """The int8 calibration sample of the training split: the rows ``export.formats.ExportJob.calib_rows``
    picks (stratified over the labels for regression), so the exporters calibrate on the same inputs."""
    from export.calibration import calibration_indices

    q = cfg.export.int8
    return x[calibration_indices(len(x), q.calibration_samples, q.calibration_seed,
                                 y if task == "regression" else None)]


def qat_finetune(cfg, splits, yt: dict[str, np.ndarray], student: nn.Module,
                 significance: np.ndarray | None = None) -> dict:
    """Fine-tune ``student`` (two heads, output units) in place with fake quantization under the
    method loss of ``cfg.distill.method``; its weights end on their int8 grid. Returns a record."""
    q = cfg.qat
    y = {s: splits.y[s] for s in ("train", "val")}
    residuals = y["train"] - yt["train"] if splits.task == "regression" else None
    method = build_method(cfg.distill.method, cfg.distill, residuals,
                          TrainingSet(y=y["train"], teacher=yt["train"], task=splits.task, significance=significance))
    if hasattr(method, "_epochs_done"):  # a trained student: warm-up phases (ka_gambler) are over
        method._epochs_done = 10**9
    x_cal = calibration_rows(cfg, splits.x["train"], splits.y["train"], splits.task)
    n, n_val = len(y["train"]), len(y["val"])
    val = (splits.x["val"], y["val"], yt["val"], np.full(n_val, -1))

    def loss_fn(m, b):
        label_out, teacher_out = m(b[0])
        return method.loss(label_out, teacher_out, b[1], b[2], b[3] if b[3][0] >= 0 else None)

    t0 = time.perf_counter()
    int8 = cfg.export.int8
    if cfg.student.backbone in IMAGE_BACKBONES:  # batch norm, residuals: graph placement, round-to-nearest start
        fq, alpha = GraphFakeQuant(student, x_cal, cfg.student.keep_head, int8.float_first_layer,
                                   int8.float_last_layer), None
        fq.calibrate(x_cal)
    else:
        fq, alpha = start_point(student, cfg.student.keep_head, int8.float_first_layer, x_cal,
                                float_last_layer=int8.float_last_layer)
    try:
        before = evaluate_loss(student, loss_fn, [torch.as_tensor(np.ascontiguousarray(a)) for a in val])
        train_cfg = TrainConfig(epochs=q.epochs, batch_size=cfg.distill.train.batch_size, lr=q.lr,
                                weight_decay=cfg.distill.train.weight_decay, patience=q.epochs)

        def epoch_end(_epoch):
            method.epoch_end()
            fq.calibrate(x_cal)  # the grids of the weights this epoch ended with

        start = copy.deepcopy(student.state_dict())
        hist = fit(student, loss_fn, (splits.x["train"], y["train"], yt["train"], np.arange(n)), val, train_cfg,
                   seed=cfg.seed + 3, desc=f"qat[{cfg.distill.method}]", on_epoch_end=epoch_end)
        kept_start = hist.best_val > before  # no epoch beat the quantized start: keep it
        if kept_start:
            student.load_state_dict(start)
        ranges = fq.calibrate(x_cal)  # the best epoch's weights: the ranges the exporters will find
    finally:
        fq.remove()
    seconds = time.perf_counter() - t0
    after = min(before, hist.best_val)
    log.info("qat: %d epochs in %.1fs, fake-quantized val loss %.5f -> %.5f%s", hist.epochs_run, seconds, before,
             after, " (no epoch beat the start: kept it)" if kept_start else "")
    return {"epochs": hist.epochs_run, "best_epoch": 0 if kept_start else hist.best_epoch + 1, "lr": q.lr,
            "seconds": round(seconds, 3), "val_loss_fake_quant_before": before, "val_loss_fake_quant_after": after,
            "calibration_rows": len(x_cal), "equalisation_alpha": alpha, "weight_layers": len(fq.layers),
            "activation_ranges": [[round(lo, 6), round(hi, 6)] for lo, hi in ranges]}
