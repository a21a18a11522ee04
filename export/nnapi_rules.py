"""The per-node rules of TensorFlow Lite's NNAPI delegate (``NNAPIDelegateKernel::Validate`` in
``tensorflow/lite/delegates/nnapi/nnapi_delegate.cc``), ported op by op, and the graph model they read.

``validate(node, sdk)`` returns the delegate's failure messages for a node at an Android API level
(27 = NNAPI 1.0 ... 30 = NNAPI 1.3), [] when the delegate would take it, with the delegate's default
options: no accelerator named and ``disallow_nnapi_cpu`` true, so from API 29 the delegate targets the
phone's NNAPI devices (``ShouldUseTargetDevices``), which lifts two limits (MUL op version 3,
quantized average pools over 256 window elements). Messages are the delegate's own. ``ExpectOpVersion`` in the source
checks ``version <= n`` despite its message, and so does the port. Ops without a rule here are
refused with "no rule ported". The partitioning and the verdict: ``export/nnapi.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FLOAT, QUANT8 = {"FLOAT32"}, {"UINT8", "INT8"}
TARGETS_DEVICES_FROM = 29  # ShouldUseTargetDevices: disallow_nnapi_cpu (default true) from NNAPI 1.2


@dataclass
class Tensor:
    type: str
    shape: tuple[int, ...]
    const: bool
    scale: float = 0.0  # the first scale, as TfLiteTensor.params; 0 for float tensors
    zero_point: int = 0
    n_scales: int = 0
    dynamic: bool = False  # -1 in the shape signature


@dataclass
class Node:
    op: str
    version: int
    inputs: list[int]  # tensor indices, -1 for an omitted optional input
    outputs: list[int]
    options: object
    tensors: list[Tensor] = field(repr=False, default_factory=list)

    def t(self, k: int) -> Tensor:
        return self.tensors[self.inputs[k]]

    def out(self, k: int = 0) -> Tensor:
        return self.tensors[self.outputs[k]]

    def opt(self, name: str, default=None):
        return getattr(self.options, name, default) if self.options is not None else default


# --------------------------------------------------------------------------- NNAPIDelegateKernel::Validate

class _Check:
    """Collects the failure messages of one node's validation, as OpValidationContext does."""

    def __init__(self, targets_devices: bool):
        self.failures: list[str] = []
        self.targets_devices = targets_devices  # ``is_accelerator_specified`` in Validate

    def expect(self, ok: bool, message: str) -> bool:
        if not ok:
            self.failures.append(message)
        return ok

    def max_version(self, node: Node, v: int) -> None:
        self.expect(node.version <= v, f"OP Version higher than {v}")

    def min_sdk(self, sdk: int, level: int) -> None:
        self.expect(sdk >= level, f"Android sdk version less than {level}")

    def input_in(self, node: Node, types: set[str], message: str, k: int = 0) -> None:
        self.expect(node.t(k).type in types, message)


def _hybrid(node: Node) -> bool:
    """IsHybridOperator for CONV_2D / FULLY_CONNECTED: float input, quantized weights."""
    return node.t(0).type in FLOAT and node.t(1).type in QUANT8


def _restricted_scales(c: _Check, node: Node) -> None:
    c.expect(node.t(0).scale * node.t(1).scale < node.out().scale,
             "When using NN API version 1.0 or 1.1, input_scale * filter_scale < output_scale.")


def _add_mul(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 3 if node.op == "MUL" and c.targets_devices else 2)
    if sdk >= 30:
        c.input_in(node, FLOAT | QUANT8 | {"INT32"}, "Input should be Float, Quant8, or Int32")
        if node.t(0).type == "INT32":
            c.expect(node.opt("fusedActivationFunction", 0) == 0, "No activation function supported")
    else:
        c.input_in(node, FLOAT | QUANT8, "Input should be Float or Quant8")


def _sub(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 3)
    t = node.t(0).type
    c.expect((sdk >= 28 and t in FLOAT) or (sdk >= 29 and t in QUANT8) or (sdk >= 30 and t == "INT32"),
             "NNAPI only support float sub.")
    if t == "INT32":
        c.expect(node.opt("fusedActivationFunction", 0) == 0, "No activation function supported")
    c.expect(len(node.t(0).shape) <= 4 and len(node.t(1).shape) <= 4, "Input rank must be <= 4")


def _div(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 1)
    c.min_sdk(sdk, 28)
    c.input_in(node, FLOAT, "NNAPI only support float div.")


def _average_pool(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 2)
    c.input_in(node, FLOAT | QUANT8, "Input should be Float or Quant8")
    if node.t(0).type in QUANT8:
        c.expect(c.targets_devices or node.opt("filterWidth", 0) * node.opt("filterHeight", 0) <= 256,
                 "Large filter window would overflow on the reference CPU path")


def _float_or_quant8(max_version: int):
    def rule(c: _Check, node: Node, sdk: int) -> None:
        c.max_version(node, max_version)
        c.input_in(node, FLOAT | QUANT8, "Input should be Float or Quant8")
    return rule


def _conv(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 3)
    if sdk < 29:
        c.expect(not _hybrid(node), "Hybrid operators not supported before NNAPI 1.2")
        c.input_in(node, FLOAT | {"UINT8"}, "Input should be Float or UINT8")
        c.expect(node.t(1).n_scales <= 1, "Per-channel quantized convolution not supported before NNAPI 1.2.")
        if node.t(0).type == "UINT8":
            _restricted_scales(c, node)
    c.expect(len(node.inputs) == 3, "Conv2D with omitted bias not supported")
    if node.opt("dilationWFactor", 1) != 1 or node.opt("dilationHFactor", 1) != 1:
        c.expect(sdk >= 29, "NNAPI supports dilated Conv2D since NNAPI 1.2.")


def _depthwise(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 3)
    if sdk < 29:
        c.input_in(node, FLOAT | {"UINT8"}, "Input should be Float or UINT8")
        if node.t(0).type == "UINT8":
            _restricted_scales(c, node)
        c.expect(node.opt("dilationWFactor", 1) == 1 and node.opt("dilationHFactor", 1) == 1,
                 "dilation_width_factor and dilation_height_factor expected to be equal to 1")


def _fully_connected(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 5)
    c.expect(node.out().type != "INT16", "Unsupported output of type kTfLiteInt16")
    if sdk < 29:
        c.expect(not _hybrid(node), "Hybrid operators not supported before NNAPI 1.2")
        c.input_in(node, FLOAT | {"UINT8"}, "Input should be Float or UINT8")
        if node.t(0).type == "UINT8":
            _restricted_scales(c, node)
    if node.opt("keepNumDims", False):
        c.min_sdk(sdk, 30)


def _hard_swish(c: _Check, node: Node, sdk: int) -> None:
    c.input_in(node, FLOAT | QUANT8, "Input should be Float or Quant8")


def _softmax(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 2)
    c.input_in(node, FLOAT | QUANT8, "Input should be Float or Quant8")
    c.expect(node.out().type in FLOAT | QUANT8, "Output type should be one of kTfLiteFloat32, kTfLiteUInt8, "
                                                 "kTfLiteInt8.")
    rank = len(node.t(0).shape)
    c.expect(rank <= 4, "Input rank should be <= 4")
    if sdk < 29:
        c.expect(rank in (2, 4), "Before API level 29 only 2D and 4D input tensors were supported.")


def _reshape(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 1)
    c.input_in(node, FLOAT | QUANT8, "Input should be Float or Quant8")
    if len(node.inputs) >= 2:
        c.expect(node.t(1).const, "The shape input tensor must be constant.")
    else:
        shape = list(node.opt("newShape") if node.opt("newShape") is not None else [])
        c.expect(bool(shape) and shape != [0], "New shape rank should be > 0")


def _concatenation(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 2)
    c.expect(node.opt("fusedActivationFunction", 0) == 0, "No activation function supported")
    c.expect(len(node.t(0).shape) <= 4, "Input rank should be less than 4")
    c.input_in(node, {"FLOAT16", "FLOAT32", "UINT8", "INT8"}, "Input type not in expected list")
    if node.t(0).type == "UINT8" and sdk < 29:
        first = node.t(0)
        c.expect(all((node.t(k).scale, node.t(k).zero_point) == (first.scale, first.zero_point)
                     for k in range(1, len(node.inputs))),
                 "NNAPI 1.0-1 only supported concatenating quantized tensor of the same scale and offset.")


def _dequantize(c: _Check, node: Node, sdk: int) -> None:
    x = node.t(0)
    if sdk >= 30 and x.type == "FLOAT16" and not x.const:
        return
    c.expect(node.version in (1, 2), "Supported op versions are 1 and 2 only")
    if sdk < 29:
        c.input_in(node, {"UINT8"}, "Input type not in expected list kTfLiteUInt8")
    else:
        c.input_in(node, QUANT8, "Input type not in expected list kTfLiteUInt8, kTfLiteInt8")
        if sdk == 29 and x.type == "INT8":
            c.expect(x.zero_point == 0, "NN API supports int8 type since version 1.2 but only for symmetric "
                                        "quantization.")


def _quantize(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 2)
    c.min_sdk(sdk, 29)
    x, y = node.t(0), node.out()
    c.expect(x.type in FLOAT | QUANT8, "Value should be quantized or Float32.")
    if x.type in QUANT8:
        c.expect(x.scale > 0, "Quantization scale should be > 0.")
    c.expect(y.type == "UINT8" if sdk < 30 else y.type in QUANT8, "Output should be kTfLiteUInt8.")
    c.expect(y.scale > 0, "Quantization scale should be > 0.")


def _floor(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 1)


def _tanh(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 2)
    t = node.t(0).type
    c.expect(t in FLOAT or (t in QUANT8 and sdk >= 29), " NNAPI only support float tanh.")


def _pad(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 2)
    c.input_in(node, FLOAT | QUANT8, "Input should be Float or Quant8")
    c.min_sdk(sdk, 28)
    c.expect(0 not in node.t(0).shape, "NN API pad ops do not support input tensors with no elements")
    c.expect(len(node.inputs) >= 2, "Expecting at least 2 inputs")
    if len(node.inputs) == 3:
        c.expect(sdk >= 29, "Specification of the padding value is supported from NNAPI 1.2.")
    elif sdk < 29:
        c.input_in(node, FLOAT, "Only Float32 inputs are supported before NNAPI 1.2")


def _min_sdk_28(max_version: int):
    def rule(c: _Check, node: Node, sdk: int) -> None:  # SPACE_TO_BATCH_ND, STRIDED_SLICE
        c.max_version(node, max_version)
        c.min_sdk(sdk, 28)
    return rule


def _transpose(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 2)
    c.min_sdk(sdk, 28)
    c.expect(len(node.inputs) > 1 and node.t(1).const, "Dynamically-sized tensors not supported.")


def _float_math(c: _Check, node: Node, sdk: int) -> None:  # ABS, EXP, LOG, RSQRT, POW, SIN, SQRT
    c.max_version(node, 1)
    c.min_sdk(sdk, 29)
    c.input_in(node, FLOAT, "Input should be Float")


def _slice(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 2)
    c.min_sdk(sdk, 29)
    c.input_in(node, FLOAT | QUANT8 | {"INT32"}, "Input type not in expected list")
    c.expect(node.t(1).type == "INT32", "Begin type should be Int32")
    c.expect(node.t(2).type == "INT32", "Size type should be Int32")


def _mean(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 2)
    c.min_sdk(sdk, 28)
    if sdk >= 29:
        c.input_in(node, FLOAT | QUANT8, "Expected Float32 or Quantized input")
    else:
        c.input_in(node, FLOAT, "Expected Float32 input")
    c.expect(len(node.out().shape) > 0, "NNAPI does not support generating a scalar as output for MEAN.")
    x, y = node.t(0), node.out()
    c.expect(x.scale == y.scale and x.zero_point == y.zero_point,
             "NNAPI requires that the input and output have the same quantization parameters.")


def _max_min(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 3)
    c.min_sdk(sdk, 29)
    c.input_in(node, FLOAT | QUANT8 | {"INT32"}, "Input type not in expected list")
    for k in (0, 1):
        if not node.t(k).shape:
            c.expect(node.t(k).const, "Scalar operand should be constant")


def _leaky_relu(c: _Check, node: Node, sdk: int) -> None:  # LEAKY_RELU, PRELU
    c.max_version(node, 1)
    c.min_sdk(sdk, 29)
    c.input_in(node, FLOAT | QUANT8, "Input type not in expected list")


def _squeeze(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 1)
    c.min_sdk(sdk, 28)
    if sdk == 28:
        dims = node.opt("squeezeDims")
        c.expect(dims is not None and len(dims) != 0, "NNAPI 1.1 does not support null squeeze_dims properly.")


def _reduce_max_min(c: _Check, node: Node, sdk: int) -> None:
    c.max_version(node, 2)
    c.min_sdk(sdk, 29)
    c.input_in(node, FLOAT | QUANT8, "Input type not in expected list")
    c.expect(len(node.t(0).shape) != 0, "NNAPI does not support generating a scalar as output.")


def _sum(c: _Check, node: Node, sdk: int) -> None:  # SUM, REDUCE_PROD
    c.max_version(node, 1)
    c.min_sdk(sdk, 29)
    c.expect(len(node.out().shape) != 0, "NNAPI does not support generating a scalar as output")
    c.input_in(node, FLOAT, "NNAPI only supports floating point input.")


RULES = {
    "ADD": _add_mul, "MUL": _add_mul, "SUB": _sub, "DIV": _div,
    "AVERAGE_POOL_2D": _average_pool, "MAX_POOL_2D": _float_or_quant8(2),
    "CONV_2D": _conv, "DEPTHWISE_CONV_2D": _depthwise, "FULLY_CONNECTED": _fully_connected,
    "HARD_SWISH": _hard_swish, "SOFTMAX": _softmax, "RESHAPE": _reshape, "CONCATENATION": _concatenation,
    "DEQUANTIZE": _dequantize, "QUANTIZE": _quantize, "FLOOR": _floor,
    "RELU": _float_or_quant8(2), "RELU_N1_TO_1": _float_or_quant8(2), "RELU6": _float_or_quant8(2),
    "LOGISTIC": _float_or_quant8(2), "TANH": _tanh, "PAD": _pad, "PADV2": _pad,
    "SPACE_TO_BATCH_ND": _min_sdk_28(2), "STRIDED_SLICE": _min_sdk_28(2), "TRANSPOSE": _transpose,
    "ABS": _float_math, "EXP": _float_math, "LOG": _float_math, "RSQRT": _float_math, "POW": _float_math,
    "SIN": _float_math, "SQRT": _float_math, "SLICE": _slice, "MEAN": _mean,
    "MAXIMUM": _max_min, "MINIMUM": _max_min, "LEAKY_RELU": _leaky_relu, "PRELU": _leaky_relu,
    "SQUEEZE": _squeeze, "REDUCE_MAX": _reduce_max_min, "REDUCE_MIN": _reduce_max_min,
    "SUM": _sum, "REDUCE_PROD": _sum,
}


def validate(node: Node, sdk: int) -> list[str]:
    """The delegate's failure messages for ``node`` at Android API level ``sdk``; [] = supported."""
    rule = RULES.get(node.op)
    if rule is None:
        return ["no rule ported (pocketkd ports the rules of " + str(len(RULES)) + " op types)"]
    c = _Check(targets_devices=sdk >= TARGETS_DEVICES_FROM)
    rule(c, node, sdk)
    return c.failures
