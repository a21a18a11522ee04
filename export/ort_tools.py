"""ONNX Runtime's mobile tools: ORT-format conversion (with the operator list for a reduced build)
and the mobile usability checker (NNAPI / CoreML verdicts)."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import tempfile
from pathlib import Path

from pipeline.io import atomic_copy, atomic_write_text

VERDICT = re.compile(r"Model should perform well with (NNAPI|CoreML NeuralNetwork|CoreML MLProgram) as is: (YES|NO|MAYBE)")
KEYS = {"NNAPI": "nnapi", "CoreML NeuralNetwork": "coreml_neuralnetwork", "CoreML MLProgram": "coreml_mlprogram"}


def _is_qdq(path: Path) -> bool:
    import onnx

    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in onnx.load(str(path)).graph.node)


def preoptimize(src: Path, dst: Path, target_platform: str = "arm", short_names: bool = True) -> Path:
    """Apply the converter's own optimizations (level all, the target's QDQ setting, no NCHWc
    transformer off amd64) and save the result as ONNX, without what the fusions leave behind.

    Converting a QDQ model straight to .ort keeps one NodeArg (name, type, shape) for every tensor
    of the QDQ graph, including the ~30 that the QDQ -> QLinearConv/QGemm fusions remove, plus the
    fusions' doc strings: for the 34k-parameter CNN student that is ~4 kB of the int8 .ort's ~54 kB.
    Saving the fused graph and dropping unused value_info and node doc strings first means the
    .ort made from it holds only the tensors and opset imports its nodes use; the converter's second pass finds
    nothing left to fuse, so the graph and the numbers are those of the direct conversion.
    ``short_names`` also renames the internal tensors and nodes (``_shorten_names``)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(dst)
    so.add_session_config_entry("session.qdqisint8allowed", "1" if target_platform == "arm" else "0")
    disabled = ["NchwcTransformer"] if target_platform != "amd64" else None
    ort.InferenceSession(str(src), sess_options=so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    model = onnx.load(str(dst))
    used = {t for n in model.graph.node for t in (*n.input, *n.output)}
    keep = [v for v in model.graph.value_info if v.name in used]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    for node in model.graph.node:
        node.doc_string = ""
    # the optimizer's saved model imports every domain ORT knows (ml, training, nchwc, aten, ...)
    domains = {n.domain for n in model.graph.node} | {""}
    opsets = [o for o in model.opset_import if o.domain in domains]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    if short_names:
        _shorten_names(model)
    onnx.save(model, str(dst))
    return dst


def _shorten_names(model) -> None:
    """Rename internal tensors and nodes to t0, t1, ... / n0, n1, ... (graph inputs and outputs keep
    their names): the .ort stores every tensor name three times (NodeArg, initializer, node edge),
    and the QDQ names ("<weight>_DequantizeLinear_Output", ...) are long."""
    g = model.graph
    keep = {v.name for v in (*g.input, *g.output)}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for init in g.initializer:
        init.name = short(init.name)
    for node in g.node:
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    for v in g.value_info:
        v.name = short(v.name)
    for i, node in enumerate(g.node):
        node.name = f"n{i}"


def convert_to_ort(onnx_files: list[Path], out_dir: Path, target_platform: str = "arm",
                   compact_qdq: bool = True, style: str = "Fixed") -> tuple[dict[str, Path], str]:
    """Convert ONNX files to .ort in onnxruntime's ``style``: "Fixed" (every optimization applied at
    conversion: the CPU EP's file) or "Runtime" (basic optimizations applied, the rest saved and
    replayed at load on the nodes a compiling EP such as NNAPI leaves to the CPU; files named
    ``<name>.with_runtime_opt.ort``, as the tool names them). Returns ({onnx file name: .ort path},
    the tool's ``required_operators`` config text covering these files).

    ``compact_qdq`` (Fixed style only): QDQ (int8) files go through ``preoptimize`` first, so their .ort
    carries no NodeArgs of the tensors the QDQ fusions removed; every file gets short internal tensor
    names. The Runtime style must keep the QDQ nodes (an EP fuses them its own way), so it is never
    pre-optimized."""
    if style not in STYLES:
        raise ValueError(f"unknown ORT optimization style {style!r}; allowed: {', '.join(STYLES)}")
    with tempfile.TemporaryDirectory(prefix="pocketkd-ort-") as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "dst"
        src.mkdir()
        for f in onnx_files:
            if compact_qdq and style == "Fixed" and _is_qdq(f):
                preoptimize(Path(f), src / f.name, target_platform)
            elif compact_qdq:  # the same short internal names in every .ort, so sizes compare like with like
                import onnx

                model = onnx.load(str(f))
                _shorten_names(model)
                onnx.save(model, str(src / f.name))
            else:
                shutil.copy(f, src / f.name)
        _run_converter(src, dst, target_platform, style)
        suffix = STYLES[style]
        made = {}
        for f in onnx_files:
            ort_file = dst / (f.name[: -len(".onnx")] + suffix)
            if not ort_file.exists():
                raise RuntimeError(f"ORT conversion wrote no {ort_file.name}")
            made[f.name] = atomic_copy(ort_file, out_dir / ort_file.name)
        config = (dst / f"required_operators{suffix[:-len('.ort')]}.config").read_text()
    return made, config


STYLES = {"Fixed": ".ort", "Runtime": ".with_runtime_opt.ort"}  # style -> the tool's file suffix


def write_operator_config(out_dir: Path, configs: list[str]) -> Path:
    """One ``required_operators.config`` (the reduced-operator build's ``--include_ops_by_config``)
    covering every .ort file of ``configs`` (the tool's config texts, one per style): the union of
    their ``domain;opset;op,...`` lines, with the tool's header naming each file (base names only:
    the tool writes absolute temp paths)."""
    files, ops = set(), {}
    for text in configs:
        for line in text.splitlines():
            if m := re.match(r"^# - .*?([^/\n]+)$", line):
                files.add(m.group(1))
            elif line.strip() and not line.startswith("#"):
                domain, opset, names = line.split(";")
                ops.setdefault((domain, int(opset)), set()).update(n for n in names.split(",") if n)
    lines = ["# Generated from model/s:", *(f"# - {f}" for f in sorted(files))]
    lines += [f"{d};{o};{','.join(sorted(names))}" for (d, o), names in sorted(ops.items())]
    return atomic_write_text(out_dir / "required_operators.config", "\n".join(lines) + "\n")


def _run_converter(src: Path, dst: Path, target_platform: str, style: str = "Fixed") -> None:
    """``python -m onnxruntime.tools.convert_onnx_models_to_ort SRC --output_dir DST --optimization_style
    STYLE``, called in this process: as a command it costs a Python start and ~10 s of imports
    (the tool imports torch and onnx) for a conversion of milliseconds. Its prints are kept and
    shown only when it fails."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    tool_log = logging.getLogger("ort_format_model.utils")  # logs each file at INFO through the root logger
    level = tool_log.level
    tool_log.setLevel(logging.WARNING)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            convert_onnx_models_to_ort(src, output_dir=dst, optimization_styles=[OptimizationStyle[style]],
                                       target_platform=target_platform)
    except Exception as exc:
        tail = "\n".join(out.getvalue().strip().splitlines()[-10:])
        raise RuntimeError(f"ORT format conversion failed: {type(exc).__name__}: {exc}\n{tail}") from None
    finally:
        tool_log.setLevel(level)


def mobile_usability(path: Path, skip_optimize: bool = False) -> dict[str, str]:
    """The "as is" verdicts of ORT's mobile usability checker, e.g. {"nnapi": "YES", ...}.

    Runs the same code as ``python -m onnxruntime.tools.check_onnx_model_mobile_usability``
    (``usability_checker.analyze_model``) in-process, capturing its log lines. ``skip_optimize``:
    the tool's ``--skip_optimize`` (check the graph as it is, not after BASIC optimizations)."""
    from onnxruntime.tools.mobile_helpers import usability_checker

    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger(f"pocketkd.usability.{path.name}")
    logger.handlers[:] = [Capture()]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    usability_checker.analyze_model(Path(path), skip_optimize=skip_optimize, logger=logger)
    verdicts = {KEYS[m.group(1)]: m.group(2) for m in VERDICT.finditer("\n".join(lines))}
    if not verdicts:
        raise RuntimeError(f"ORT mobile usability checker gave no verdict for {path.name}: {lines[-3:]}")
    return verdicts


def ort_ops(path: Path) -> set[str]:
    """The operators (``domain:op_type``) of the nodes in a .ort file, read with onnxruntime's own
    ORT-format reader (the one behind ``required_operators.config``)."""
    from onnxruntime.tools.ort_format_model.ort_model_processor import OrtFormatModelProcessor

    required: dict = {}
    OrtFormatModelProcessor(str(path), required, None).process()
    return {f"{_domain(d)}:{op}" for d, opsets in required.items() for ops in opsets.values() for op in ops}


def _domain(domain: str) -> str:
    return domain or "ai.onnx"


def ort_file_usability(ort_path: Path, source_onnx: Path, style: str, target_platform: str = "arm") -> dict:
    """ORT's mobile usability verdicts for the graph an .ort file holds, and whether that is the graph
    checked. The checker reads ONNX, so the file's graph is rebuilt from its source ONNX the way the
    converter built it: BASIC optimizations for the Runtime style (the rest is only saved), every
    optimization (the target's QDQ setting, no NCHWc transformer) for the Fixed style; the checker then
    runs on it as it is (``--skip_optimize``). ``graph_is_the_files``: the rebuilt graph's operators are
    exactly those read from the .ort file."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="pocketkd-ortcheck-") as tmp:
        graph = Path(tmp) / source_onnx.name
        so = ort.SessionOptions()
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if style == "Runtime"
                                       else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        so.optimized_model_filepath = str(graph)
        so.add_session_config_entry("session.qdqisint8allowed", "1" if target_platform == "arm" else "0")
        disabled = ["NchwcTransformer"] if target_platform != "amd64" and style == "Fixed" else None
        ort.InferenceSession(str(source_onnx), sess_options=so, providers=["CPUExecutionProvider"],
                             disabled_optimizers=disabled)
        verdicts = mobile_usability(graph, skip_optimize=True)
        checked = {f"{_domain(n.domain)}:{n.op_type}" for n in onnx.load(str(graph)).graph.node}
    in_file = ort_ops(ort_path)
    return {**verdicts, "ops": sorted(in_file), "graph_is_the_files": in_file == checked,
            **({} if in_file == checked else {"ops_checked": sorted(checked)})}
