"""Operator kinds of a parsed .tflite model (the flatbuffer object API, ``ModelT``): one name map for
every reader of TFLite graphs (the converter child, the output-grid choice, the NNAPI rules)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _builtin_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def op_kind(model, op) -> str:
    """The BuiltinOperator name of ``op`` in ``model``; "CUSTOM" for a custom op."""
    code = model.operatorCodes[op.opcodeIndex]
    return _builtin_names().get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
