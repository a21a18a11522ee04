"""What the standard TFLite metadata of a bundle file says (``export.tflite_metadata`` writes it):
the input's normalisation (a ``NormalizationOptions`` process unit) and layout, the output's name,
axis names and per-column name / unit / meaning, the label file of a classifier (``labels.txt``,
``TENSOR_AXIS_LABELS``) or the column names of a regressor (``output_names.txt``), and the file's
``metadata.json`` entry as an associated file. Then the embedded file is run again: it must give
the very same outputs as before (metadata changes no computation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from export import tflite_metadata
from pipeline.io import atomic_write

COLOR_SPACE = {1: "GRAYSCALE", 3: "RGB"}


def standard_metadata(meta: dict, sig: dict, file_meta: dict) -> tuple[dict, dict[str, bytes]]:
    """(ModelMetadata in flatc's JSON form, {associated file name: bytes}) for one .tflite file."""
    inp, out = sig["inputs"][0], sig["outputs"][0]
    cols = meta["output_columns"]
    norm = meta["input_normalization"]
    classification = meta.get("classes") is not None
    quant = (f" It is int8: quantise x' with the tensor's scale {inp['quantization']['scale']:.6g} and zero point "
             f"{inp['quantization']['zero_point']}." if inp.get("quantization") else "")
    in_desc = (f"{inp['layout']} {inp['shape']} {inp['dtype']}. Normalise first, per "
               f"{'channel' if inp['layout'] == 'NHWC' else 'feature'}: x' = (x - mean) / std (the process unit's mean "
               f"and std).{quant}")
    if inp["layout"] == "NHWC":
        content = {"content_properties_type": "ImageProperties",
                   "content_properties": {"color_space": COLOR_SPACE.get(inp["shape"][-1], "UNKNOWN")}}
    else:
        content = {"content_properties_type": "FeatureProperties", "content_properties": {}}
    columns = "; ".join(f"[{k}] {c['name']} ({c['unit']}): {c['meaning']}" for k, c in enumerate(cols))
    out_quant = (f" int8: y = {out['quantization']['scale']:.6g} * (q - {out['quantization']['zero_point']})."
                 if out.get("quantization") else "")
    if classification:
        labels_name, labels = "labels.txt", [*map(str, meta["classes"]), *(["abstain"] if meta.get("abstain_output") else [])]
        labels_desc = "class of each logit" + (", then the gambler's abstain option" if meta.get("abstain_output") else "")
    else:
        labels_name, labels = "output_names.txt", [c["name"] for c in cols]
        labels_desc = "name of each output column (predicted values in the units of the tensor description, not scores)"
    output = {
        "name": "logits" if classification else (cols[0]["name"] if len(cols) == 1 else "outputs"),
        "description": f"{out['shape']} {out['dtype']}.{out_quant} {columns}",
        "dimension_names": ["batch", "class" if classification else "output"],
        "content": {"content_properties_type": "FeatureProperties", "content_properties": {}},
        "associated_files": [{"name": labels_name, "description": labels_desc, "type": "TENSOR_AXIS_LABELS"}],
    }
    model = {
        "name": f"pocketkd student ({file_meta['format']})",
        "description": f"{meta['task']}: {meta['output_meaning']}",
        "version": str(meta.get("pocketkd_version", "")),
        "author": "pocketkd",
        "subgraph_metadata": [{
            "input_tensor_metadata": [{
                "name": "input", "description": in_desc,
                "dimension_names": ["batch", "height", "width", "channel"] if inp["layout"] == "NHWC"
                else ["batch", "feature"],
                "content": content,
                "process_units": [{"options_type": "NormalizationOptions",
                                   "options": {"mean": list(norm["mean"]), "std": list(norm["std"])}}],
            }],
            "output_tensor_metadata": [output],
        }],
        "associated_files": [{"name": "metadata.json", "type": "DESCRIPTIONS",
                              "description": "pocketkd's metadata of this file (its entry of the bundle's metadata.json)"}],
        "min_parser_version": tflite_metadata.MIN_PARSER_VERSION,
    }
    files = {labels_name: ("\n".join(labels) + "\n").encode(),
             "metadata.json": json.dumps(file_meta, indent=1, sort_keys=True).encode()}
    return model, files


def embed_standard_metadata(path: Path, meta: dict, sig: dict, file_meta: dict) -> None:
    """Write the standard metadata into ``path`` (temp file, then rename), after checking that the
    embedded model computes exactly what the file computed before."""
    from ai_edge_litert.interpreter import Interpreter

    before = path.read_bytes()
    model, files = standard_metadata(meta, sig, file_meta)
    after = tflite_metadata.embed(before, model, files)
    probe = _probe_input(sig["inputs"][0])
    if not np.array_equal(_run(Interpreter(model_content=before), probe), _run(Interpreter(model_content=after), probe)):
        raise RuntimeError(f"{path.name}: the file with metadata computes other outputs than without (not written)")
    atomic_write(path, lambda f: f.write(after))


def _probe_input(t: dict) -> np.ndarray:
    rng = np.random.default_rng(0)
    if t["dtype"] in ("int8", "uint8"):
        info = np.iinfo(t["dtype"])
        return rng.integers(info.min, info.max + 1, size=t["shape"]).astype(t["dtype"])
    return rng.standard_normal(t["shape"]).astype(t["dtype"])


def _run(interp, x: np.ndarray) -> np.ndarray:
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"]).copy()
