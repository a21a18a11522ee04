"""How much of a .tflite file LiteRT's XNNPACK delegate (its default CPU delegate) takes.

LiteRT replaces each run of nodes XNNPACK supports with one DELEGATE node whose inputs and outputs
are the run's boundary tensors; nodes it does not take stay with the builtin kernels, between
partitions. The interpreter does not expose its execution plan, so the partitions are rebuilt from
the graph: walking back from each DELEGATE node's outputs to its inputs visits exactly the nodes it
replaced. A fully delegated graph is one partition with every node in it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def xnnpack_partitions(path: Path) -> tuple[list[dict], list[set[int]]]:
    """(the file's operators as LiteRT lists them without delegates, the node indices each XNNPACK
    partition replaced)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    plain = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    plain.allocate_tensors()
    ops = plain._get_ops_details()  # not public API; callers treat a failure as "unknown"
    delegated = Interpreter(model_path=str(path))  # the default: XNNPACK applied
    delegated.allocate_tensors()
    partitions = [op for op in delegated._get_ops_details() if op["op_name"] == "DELEGATE"]
    producer = {int(t): i for i, op in enumerate(ops) for t in op["outputs"]}
    parts = []
    for part in partitions:
        boundary = {int(t) for t in part["inputs"]}
        stack = [int(t) for t in part["outputs"]]
        covered: set[int] = set()
        while stack:
            t = stack.pop()
            i = producer.get(t)
            if t in boundary or i is None or i in covered:
                continue
            covered.add(i)
            stack.extend(int(u) for u in ops[i]["inputs"] if u >= 0)
        parts.append(covered)
    return ops, parts


def xnnpack_delegation(path: Path) -> dict:
    """{"nodes", "delegated", "partitions", "fully_delegated", "not_delegated": {op: count}}."""
    ops, parts = xnnpack_partitions(path)
    covered = set().union(*parts)
    left = Counter(ops[i]["op_name"] for i in range(len(ops)) if i not in covered)
    return {"nodes": len(ops), "delegated": len(covered), "partitions": len(parts),
            "fully_delegated": not left and len(parts) == 1, "not_delegated": dict(sorted(left.items()))}
