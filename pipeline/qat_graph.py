"""Fake int8 quantization of a reference image backbone (MobileNet, EfficientNet, ResNet), placed where
ONNX Runtime's QDQ quantizer places it on the exported file (read off a MobileNetV3 student's
``student.int8.onnx``):

* batch norm is folded into the convolution in every exported file. During fine-tuning it runs with
  frozen statistics (eval-mode arithmetic, affine parameters still trained), so the training graph
  computes the deployed function. The convolution's weights are fake-quantized *before* the
  batch-norm scale: per-output-channel symmetric int8 is invariant to a per-channel factor
  (round(w c / (max|w| c / 127)) = round(w / (max|w| / 127))), so the folded file's int8 weights are
  the snapped ones times their channel's factor, exactly the grid trained on;
* hard-swish / hard-sigmoid are traced as the ReLU6 arithmetic the files contain (``models.deploy``),
  SiLU as the exporter's Sigmoid and Mul;
* every tensor an operator produces is on an 8-bit grid (per-tensor asymmetric, ``activation_qparams``)
  -- convolutions, adds (residuals and ``x + 3``), muls (squeeze-excite, hard-swish), pooling means,
  sigmoids -- except a tensor whose only consumer is a ReLU / ReLU6 / batch norm (ORT fuses them: the
  grid sits after the activation), a product with a constant whose only consumer is a convolution
  (hard-swish's trailing ``* (1/3)``: the exporter folds the constant into that convolution's
  weights, so the file has no tensor between them), and shape-only operators (flatten, reshape,
  dropout, max-pool) keep their input's grid;
* the model input is quantized only when the first layer is (``export.int8.float_first_layer``).

The deployed head (a Linear) is handled as for the MLP students (``pipeline.qat.FakeQuant``'s rules:
weights on the int8 grid, output quantized unless ``export.int8.float_last_layer``).
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import parametrize

from export.quantize import keeps_last_float
from models.deploy import REWRITES
from pipeline.qat_scheme import ActivationGrid, PerChannelInt8, calibrate_grids, snap

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
FUSED_ACTIVATIONS = (nn.ReLU, nn.ReLU6)  # ORT drops them into the grid of the quantized tensor before them
FUSED_FUNCTIONS = (F.relu, F.relu6, torch.relu)
SHAPE_MODULES = (nn.Flatten, nn.Identity, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d)
SHAPE_FUNCTIONS = (torch.flatten, torch.reshape, F.dropout, F.max_pool2d)
SHAPE_METHODS = ("flatten", "reshape", "view", "contiguous", "squeeze", "unsqueeze")


class SiLUAsExported(nn.Module):
    """SiLU as the ONNX exporter writes it, ``Sigmoid`` then ``Mul``: two quantized tensors in the file."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


TRACE_AS: dict[type, type] = {**REWRITES, nn.SiLU: SiLUAsExported}  # modules traced as the files' operators


class FrozenBatchNorm(nn.Module):
    """A batch norm computed with its running statistics in training too (its affine parameters train)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _swap(root: nn.Module, kinds: dict[type, type]) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace every child whose type is in ``kinds`` by ``kinds[type]()``; returns what to put back."""
    swapped = []
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in kinds:
                setattr(parent, name, kinds[type(child)]())
                swapped.append((parent, name, child))
    return swapped


def trace_deployed_arithmetic(backbone: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """``backbone`` traced in eval mode (stochastic depth off) with hard-swish / hard-sigmoid as ReLU6
    arithmetic and SiLU as x * sigmoid(x) (``TRACE_AS``); the graph's leaf modules are ``backbone``'s own
    (shared parameters). Shapes propagated."""
    was_training = backbone.training
    backbone.eval()
    swapped = _swap(backbone, TRACE_AS)
    try:
        gm = fx.symbolic_trace(backbone)
    except Exception as e:  # data-dependent control flow in a user's backbone
        raise ValueError(f"quantization-aware training could not trace the {type(backbone).__name__} "
                         f"backbone ({type(e).__name__}: {e})") from e
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
        backbone.train(was_training)
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    return gm


def _kind(gm: fx.GraphModule, node: fx.Node) -> str:
    """weight | bn | fused | shape | op (any other tensor-producing operator) | none (not a float tensor)."""
    meta = node.meta.get("tensor_meta")
    if node.op == "output" or meta is None or not hasattr(meta, "dtype") or not meta.dtype.is_floating_point:
        return "none"
    if node.op == "placeholder":
        return "input"
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        for kinds, name in ((WEIGHT_LAYERS, "weight"), (BATCH_NORMS, "bn"), (FUSED_ACTIVATIONS, "fused"),
                            (SHAPE_MODULES, "shape")):
            if isinstance(m, kinds):
                return name
        return "op"
    if node.op == "call_function":
        if node.target in FUSED_FUNCTIONS:
            return "fused"
        return "shape" if node.target in SHAPE_FUNCTIONS else "op"
    if node.op == "call_method":
        return "shape" if node.target in SHAPE_METHODS else "op"
    return "none"


def _folded_into_conv(gm: fx.GraphModule, node: fx.Node) -> bool:
    """``x * c`` (``c`` a number) whose only consumer is a convolution: the ONNX exporter folds ``c``
    into that convolution's weights (zero padding stays zero), so the file has no tensor, and no grid,
    between them; per-channel symmetric weights are invariant to the factor."""
    if node.op != "call_function" or node.target not in (operator.mul, torch.mul):
        return False
    if not any(isinstance(a, (int, float)) for a in node.args):
        return False
    users = list(node.users)
    return (len(users) == 1 and users[0].op == "call_module"
            and isinstance(gm.get_submodule(users[0].target), (nn.Conv1d, nn.Conv2d)))


class GraphFakeQuant:
    """Fake quantization of a two-head student with an image backbone: the backbone is replaced by a
    traced copy with grids inserted (same parameters), the kept head gets a weight parametrization and
    an output grid. Same interface as ``pipeline.qat.FakeQuant``: ``calibrate``, ``remove``, ``layers``."""

    def __init__(self, student: nn.Module, example: np.ndarray, keep: str = "label", float_first_layer: bool = True,
                 float_last_layer: bool = False):
        self.student = student
        self.original = student.backbone
        x = torch.as_tensor(np.ascontiguousarray(example[:2]), dtype=torch.float32)
        gm = trace_deployed_arithmetic(self.original, x)
        head = student.label_head if keep == "label" else student.teacher_head
        self.grids: list[ActivationGrid] = []
        weight_nodes = [n for n in gm.graph.nodes if _kind(gm, n) == "weight"]
        self.layers = [gm.get_submodule(n.target) for n in weight_nodes] + [head]
        first = weight_nodes[0] if weight_nodes else None
        for node in list(gm.graph.nodes):
            kind = _kind(gm, node)
            if kind == "bn":
                gm.add_submodule(node.target, FrozenBatchNorm(gm.get_submodule(node.target)))
            if kind in ("none", "shape") or (kind == "input" and float_first_layer):
                continue
            users = list(node.users)
            if len(users) == 1 and _kind(gm, users[0]) in ("bn", "fused"):
                continue  # the grid sits after the batch norm / activation ORT fuses into this tensor
            if _folded_into_conv(gm, node):
                continue
            self._grid_after(gm, node)
        gm.recompile()
        quantized = [m for m in self.layers if not (float_first_layer and first is not None
                                                    and m is gm.get_submodule(first.target))]
        self.quantized_layers = quantized
        for layer in quantized:
            parametrize.register_parametrization(layer, "weight", PerChannelInt8())
        self._hooks = []
        if not keeps_last_float(len(self.layers), float_first_layer, float_last_layer):
            grid = ActivationGrid()
            self.grids.append(grid)
            self._hooks.append(head.register_forward_hook(lambda _m, _args, out: grid(out)))
        student.backbone = gm

    def _grid_after(self, gm: fx.GraphModule, node: fx.Node) -> None:
        grid = ActivationGrid()
        name = f"qat_grid_{len(self.grids)}"
        gm.add_submodule(name, grid)
        self.grids.append(grid)
        with gm.graph.inserting_after(node):
            q = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)

    def calibrate(self, x: np.ndarray, batch: int = 256) -> list[tuple[float, float]]:
        """Every grid from min / max over ``x`` (weights fake-quantized, activations float)."""
        return calibrate_grids(self.student, self.grids, x, batch)

    def remove(self) -> None:
        """Put the original backbone back; its weights keep their int8-grid values (snapped)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        snap(self.quantized_layers)
        self.student.backbone = self.original
