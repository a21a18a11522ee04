"""Which nodes of a .tflite file TensorFlow Lite's NNAPI delegate would take, by the delegate's own rules.

NNAPI runs only on Android (8.1 to 14; deprecated from Android 15) and no build of its delegate loads
off a device, so this is a port of the delegate's static side, read from TensorFlow's sources
(``tensorflow/lite/delegates/nnapi/nnapi_delegate.cc``: ``NNAPIDelegateKernel::Validate``,
``StatefulNnApiDelegate::DoPrepare``, ``LimitDelegatedPartitions``; ``tensorflow/lite/delegates/utils.cc``:
``FP16GraphPartitionHelper``; ``tensorflow/lite/graph_info.cc``: the greedy node partitioning):

- every node is validated at an Android API level: 27 (NNAPI 1.0), 28 (1.1), 29 (1.2), 30 (1.3; no
  rule changes after it, so it stands for Android 11 to 14), with the delegate's default options (no
  accelerator named, ``disallow_nnapi_cpu`` true);
- a graph with constant fp16 weights (``DEQUANTIZE`` of a FLOAT16 constant) goes the delegate's fp16
  way: consumers are validated on the fp16 constants, and a weight's ``DEQUANTIZE`` is delegated with
  the largest partition when every consumer of it is there;
- the nodes that pass are partitioned as TensorFlow Lite partitions them, and only the 3 largest
  partitions are delegated (``max_number_delegated_partitions`` = 3); the rest run on the CPU.

The per-op rules live in ``export/nnapi_rules.py``, for the op types in its ``RULES`` (every op
pocketkd's converters emit and their common neighbours); a node of another type is counted as
refused with the reason "no rule ported".
What this cannot tell, and a phone can: from API 29 the default delegate targets the phone's NNAPI
devices other than the CPU reference (none: it does nothing), validates at their feature level when
that is lower, and then asks their drivers which of the nodes above they run
(``GetNodesSupportedByAccelerator``); for a graph with fp16 weights, a driver refusing any node means
nothing is delegated. So from API 29 the figures are what the delegate offers the phone's drivers, an
upper bound; at API 27 / 28 they are what it delegates.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from export.nnapi_rules import TARGETS_DEVICES_FROM, Node, Tensor, validate

API_LEVELS = {27: "Android 8.1", 28: "Android 9", 29: "Android 10", 30: "Android 11-14"}
MAX_PARTITIONS = 3  # StatefulNnApiDelegate::Options::max_number_delegated_partitions
SOURCE = ("TensorFlow Lite's NNAPI delegate rules (nnapi_delegate.cc Validate, DoPrepare) ported to Python; "
          "static: from API 29 the delegate then asks the phone's NNAPI drivers, which may refuse nodes")


def read_graph(path: Path) -> tuple[list[Node], list[Tensor], list[int]]:
    """(nodes in execution order, tensors, graph outputs) of the main subgraph of a .tflite file."""
    from ai_edge_litert import schema_py_generated as schema

    from export.tflite_ops import op_kind

    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    g = model.subgraphs[0]
    tensors = []
    for t in g.tensors:
        buf = model.buffers[t.buffer]
        const = (buf.data is not None and len(buf.data) > 0) or (getattr(buf, "offset", 0) > 1
                                                                 and getattr(buf, "size", 0) > 0)
        q = t.quantization
        scales = [] if q is None or q.scale is None else list(q.scale)
        zps = [] if q is None or q.zeroPoint is None else list(q.zeroPoint)
        sig = [] if t.shapeSignature is None else list(t.shapeSignature)
        tensors.append(Tensor(type=type_names.get(t.type, str(t.type)),
                              shape=tuple(int(d) for d in (t.shape if t.shape is not None else [])), const=const,
                              # TfLiteTensor.params: set only for one scale and one zero point (per-tensor)
                              scale=float(scales[0]) if len(scales) == 1 and len(zps) == 1 else 0.0,
                              zero_point=int(zps[0]) if len(scales) == 1 and len(zps) == 1 else 0,
                              n_scales=len(scales), dynamic=any(int(d) < 0 for d in sig)))
    nodes = []
    for op in g.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = op_kind(model, op)
        if name == "CUSTOM" and code.customCode:
            name = "CUSTOM:" + code.customCode.decode(errors="replace")
        nodes.append(Node(name, int(code.version), [int(i) for i in op.inputs], [int(i) for i in op.outputs],
                          op.builtinOptions, tensors))
    return nodes, tensors, [int(i) for i in g.outputs]


# --------------------------------------------------------------------------- partitioning

def partition(nodes: list[Node], supported: set[int]) -> list[tuple[bool, list[int]]]:
    """(delegated?, node indices) of each subset, as PartitionGraphIntoIndependentNodeSubsets (greedy):
    each epoch takes every ready node of the kind of its first ready node, until none is left."""
    produced = {t for n in nodes for t in n.outputs if t >= 0}
    ready = {t: -2 for t in produced}  # -2: not ready; anything else: ready
    done: set[int] = set()
    subsets: list[tuple[bool, list[int]]] = []
    while len(done) < len(nodes):
        kind, members = None, []
        progress = True
        while progress:
            progress = False
            for i, n in enumerate(nodes):
                if i in done or any(ready.get(t) == -2 for t in n.inputs if t >= 0):
                    continue
                if kind is None:
                    kind = i in supported
                if (i in supported) != kind:
                    continue
                done.add(i)
                members.append(i)
                for t in n.outputs:
                    if t >= 0:
                        ready[t] = len(subsets)
                progress = True
        if not members:  # a cycle: cannot happen in a valid model
            break
        subsets.append((bool(kind), members))
    return subsets


def _largest(subsets: list[tuple[bool, list[int]]], n: int) -> list[list[int]]:
    parts = [m for kind, m in subsets if kind]
    return sorted(parts, key=len, reverse=True)[:n]


def delegation(path: Path, sdk: int, graph=None) -> dict:
    """What the NNAPI delegate takes of ``path`` at API level ``sdk``: {"nodes", "delegated",
    "partitions", "fully_delegated", "refused": {"OP: reason": count}}."""
    nodes, tensors, _ = graph or read_graph(path)
    fp16_weight = {n.outputs[0]: i for i, n in enumerate(nodes)
                   if n.op == "DEQUANTIZE" and n.t(0).type == "FLOAT16" and n.t(0).const}
    refused: Counter = Counter()
    supported: set[int] = set()
    consumers: Counter = Counter()
    view = nodes
    if fp16_weight:  # FP16GraphPartitionHelper: validate consumers on the fp16 constants themselves
        to_fp16 = {out: nodes[i].inputs[0] for out, i in fp16_weight.items()}
        view = [Node(n.op, n.version, [to_fp16.get(t, t) for t in n.inputs], n.outputs, n.options, tensors)
                if i not in fp16_weight.values() else n for i, n in enumerate(nodes)]
        for i, n in enumerate(nodes):
            if i not in fp16_weight.values():
                consumers.update(t for t in n.inputs if t in fp16_weight)
    for i, n in enumerate(view):
        if fp16_weight and i in fp16_weight.values():
            continue  # not accepted on its own: its consumers may run on the CPU
        failures = validate(n, sdk)
        if failures:
            refused[f"{n.op}: {failures[0]}"] += 1
        else:
            supported.add(i)
    if fp16_weight:
        parts = _largest(partition(nodes, supported), MAX_PARTITIONS)
        take = set()
        if parts:
            first = set(parts[0])
            in_first = Counter(t for i in first for t in nodes[i].inputs if t in fp16_weight)
            take = first | {fp16_weight[t] for t, k in in_first.items() if consumers[t] == k}
            for p in parts[1:]:
                take |= set(p)
        supported = take  # RemapFp16InputTensors: the delegated consumers now read the fp16 constants
        nodes = [view[i] if i in take else n for i, n in enumerate(nodes)]
    parts = _largest(partition(nodes, supported), MAX_PARTITIONS) if supported else []
    delegated = sorted(i for p in parts for i in p)
    taken = set(delegated)
    left = Counter(view[i].op for i in range(len(view)) if i not in taken)
    return {"api_level": sdk, "asks_drivers": sdk >= TARGETS_DEVICES_FROM, "nodes": len(view),
            "delegated": len(delegated), "partitions": len(parts),
            "fully_delegated": len(delegated) == len(view) and len(parts) == 1,
            "not_delegated": dict(sorted(left.items())), "refused": dict(sorted(refused.items()))}


def _short(reason: str, count: int) -> str:
    """'MEAN x6: NNAPI requires ...' from the 'MEAN: NNAPI requires ...' key of ``refused``."""
    op, why = reason.split(": ", 1)
    return f"{op} x{count}: {why.rstrip('.')}"


def nnapi_verdict(path: Path) -> dict:
    """The delegation at every API level in ``API_LEVELS`` and a one-line summary: "all N nodes from
    API L" (the lowest level that delegates every node in one partition), or the API-30 figures."""
    graph = read_graph(path)
    levels = {sdk: delegation(path, sdk, graph) for sdk in API_LEVELS}
    full = [sdk for sdk, d in levels.items() if d["fully_delegated"]]
    top = levels[max(API_LEVELS)]
    if full and full == list(range(full[0], max(API_LEVELS) + 1)):
        summary = f"all {top['nodes']} nodes from API {full[0]}"
    else:
        summary = f"{top['delegated']}/{top['nodes']}" + (
            "" if top["partitions"] == 1 else f" in {top['partitions']} partitions") + f" at API {max(API_LEVELS)}"
        if top["refused"]:
            summary += " (refused: " + "; ".join(_short(k, v) for k, v in top["refused"].items()) + ")"
    dynamic = any(t.dynamic for t in graph[1])
    return {"summary": summary, "dynamic_shape": dynamic, "levels": {str(k): v for k, v in levels.items()},
            "source": SOURCE}
