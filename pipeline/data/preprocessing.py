"""The preprocessing an app must repeat to build a model input from a raw record, as one JSON-able
spec (saved in ``data.json`` and embedded in every exported file's metadata), the function that
applies it (``apply_spec``: what ``python -m pipeline predict`` runs), and the same steps rendered
as Kotlin (``kotlin_build_input``) for the Android bundle's README.

A table's spec, in input order: a numeric column is ``(value - mean) / std`` (float32); a
categorical column is a one-hot block over its categories (those of the train split, in sorted
order), a category never seen in training giving an all-zero block. Regression labels are learned
standardised, but the scale is folded into the output layer: every exported file predicts in label
units, so the app does not un-scale (``labels`` records the scale and the training label range).
No torch here: ``pipeline predict`` and the docs read it without it.
"""

from __future__ import annotations

import numpy as np

SPEC_FORMAT = "pocketkd-preprocessing/1"
UNKNOWN_RULE = "a category not seen in the train split gives an all-zero one-hot block"
MATCH_RULE = "categories match the cell text exactly, surrounding spaces removed"


def _f(v) -> float:
    return float(np.float32(v))  # float32 values, exact through JSON and back


def build_spec(splits, columns: list[dict] | None = None) -> dict:
    """The spec of a run's data (``Splits`` after standardisation). ``columns``: the raw columns of a
    table in input order, ``{"column", "type": "numeric"}`` or ``{"column", "type": "categorical",
    "categories"}``; None: one numeric column per input (named by ``feature_names``, else x0, x1...)."""
    train = splits.x_raw["train"]
    spec: dict = {"format": SPEC_FORMAT, "input_shape": list(train.shape[1:])}
    if train.ndim != 2:
        spec.update(input="image", layout="NCHW", channel_mean=[_f(v) for v in splits.x_mean],
                    channel_std=[_f(v) for v in splits.x_std],
                    formula="pixels in [0, 1], then (x - channel_mean[c]) / channel_std[c] per channel")
    else:
        d = train.shape[1]
        if columns is None:
            names = list(getattr(splits, "feature_names", None) or (["x"] if d == 1 else [f"x{j}" for j in range(d)]))
            columns = [{"column": n, "type": "numeric"} for n in names]
        lo, hi = train.min(axis=0), train.max(axis=0)
        features, j = [], 0
        for c in columns:
            if c["type"] == "numeric":
                features.append({"column": c["column"], "type": "numeric", "input_index": j,
                                 "mean": _f(splits.x_mean[j]), "std": _f(splits.x_std[j]),
                                 "train_min": _f(lo[j]), "train_max": _f(hi[j])})
                j += 1
            else:
                cats = list(c["categories"])
                features.append({"column": c["column"], "type": "categorical", "input_index": j,
                                 "categories": cats, "unknown": "all zeros"})
                j += len(cats)
        if j != d:
            raise ValueError(f"preprocessing: the columns describe {j} inputs but the data has {d}")
        spec.update(input="table", input_width=d, features=features, input_names=_input_names(features),
                    formula="numeric: (float32(value) - mean) / std; categorical: 1 at input_index + position "
                            "of the value in categories, 0 elsewhere", unknown_category=UNKNOWN_RULE,
                    category_match=MATCH_RULE)
    if splits.task == "regression":
        y = splits.y["train"]
        mean = splits.y_mean if splits.y_mean is not None else np.zeros(y.shape[1])
        std = splits.y_std if splits.y_std is not None else np.ones(y.shape[1])
        spec["labels"] = {"names": list(splits.output_names) or [f"y{k}" for k in range(y.shape[1])],
                          "mean": [_f(v) for v in mean], "std": [_f(v) for v in std],
                          "scale_applied": "inside the model: outputs are in label units (nothing to un-scale)",
                          "train_min": [_f(v) for v in y.min(axis=0)], "train_max": [_f(v) for v in y.max(axis=0)]}
    else:
        spec["labels"] = {"classes": list(range(splits.n_classes)), "outputs": "logits"}
    return spec


def _input_names(features: list[dict]) -> list[str]:
    out = []
    for f in features:
        out += [f["column"]] if f["type"] == "numeric" else [f"{f['column']}={v}" for v in f["categories"]]
    return out


def raw_columns(spec: dict) -> list[str]:
    """The columns a raw record needs, in input order."""
    return [f["column"] for f in spec.get("features", [])]


def apply_spec(spec: dict, numeric: dict[str, np.ndarray], text: dict[str, list[str]]) -> tuple[np.ndarray, dict]:
    """Model inputs (n, input_width) float32 from raw columns: ``numeric[column]`` float64 values of the
    numeric columns, ``text[column]`` stripped cells of the categorical ones. Returns the inputs and
    what was met on the way: unknown categories per column, rows with a numeric value outside the
    training range (per column and in total)."""
    n = len(next(iter(numeric.values()))) if numeric else len(next(iter(text.values())))
    x = np.zeros((n, spec["input_width"]), dtype=np.float32)
    unknown: dict[str, int] = {}
    outside = np.zeros(n, dtype=bool)
    outside_by: dict[str, int] = {}
    for f in spec["features"]:
        j = f["input_index"]
        if f["type"] == "numeric":
            v = numeric[f["column"]].astype(np.float32)
            x[:, j] = (v - np.float32(f["mean"])) / np.float32(f["std"])
            out = (v < np.float32(f["train_min"])) | (v > np.float32(f["train_max"]))
            outside |= out
            if out.any():
                outside_by[f["column"]] = int(out.sum())
        else:
            pos = {c: k for k, c in enumerate(f["categories"])}
            hits = np.array([pos.get(v, -1) for v in text[f["column"]]], dtype=np.int64)
            rows = np.flatnonzero(hits >= 0)
            x[rows, j + hits[rows]] = 1.0
            if (miss := int((hits < 0).sum())):
                unknown[f["column"]] = miss
    return x, {"unknown_categories": unknown, "rows_outside_training_range": int(outside.sum()),
               "outside_by_column": outside_by}


def _kt_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("\n", "\\n") + '"'


def _kt_float(v: float) -> str:
    return np.format_float_positional(np.float32(v), unique=True, trim="0") + "f"


def kotlin_build_input(spec: dict, normalise: bool = True) -> str:
    """``fun buildInput(record: Map<String, Any>): FloatArray``, generated from a table's spec: the
    same steps as ``apply_spec`` (float32 arithmetic, an unknown category all zeros). With
    ``normalise=False`` it is ``buildRaw``: numeric values as they are, the one-hot blocks the same;
    the Android bundle's ``StudentModel.normalize`` (input_normalization: the spec's mean/std for
    numeric inputs, 0/1 for one-hot ones) then gives exactly ``buildInput``'s values."""
    if spec.get("input") != "table":
        raise ValueError("buildInput is generated for tables only; images are scaled to [0, 1] and "
                         "standardised per channel (channel_mean / channel_std in the metadata)")
    w = spec["input_width"]
    lines = [
        f"// Generated by pocketkd from the run's preprocessing spec ({spec['format']}): {w} inputs.",
        "// Numeric: (value - mean) / std. Categorical: one-hot in the training categories' order;" if normalise else
        "// Numeric: the value as it is (StudentModel.normalize standardises it). Categorical: one-hot in the "
        "training categories' order;",
        "// a category never seen in training leaves its block all zeros.",
        "fun buildInput(record: Map<String, Any>): FloatArray {" if normalise else
        "fun buildRaw(record: Map<String, Any>): FloatArray {",
        f"    val x = FloatArray({w})",
        "    fun num(name: String): Float = when (val v = record[name] ?: error(\"missing column '$name'\")) {",
        "        is Number -> v.toFloat()",
        "        else -> v.toString().trim().toFloat()",
        "    }",
        "    fun cat(name: String): String = (record[name] ?: error(\"missing column '$name'\")).toString().trim()",
    ]
    for f in spec["features"]:
        j, col = f["input_index"], _kt_string(f["column"])
        if f["type"] == "numeric":
            lines.append(f"    x[{j}] = (num({col}) - {_kt_float(f['mean'])}) / {_kt_float(f['std'])}" if normalise
                         else f"    x[{j}] = num({col})")
        else:
            lines.append(f"    when (cat({col})) {{")
            lines += [f"        {_kt_string(c)} -> x[{j + k}] = 1f" for k, c in enumerate(f["categories"])]
            lines.append("        else -> {}  // not seen in training: all zeros")
            lines.append("    }")
    lines += ["    return x", "}"]
    return "\n".join(lines) + "\n"
