"""Export the deployed student: ONNX (+onnxsim), ONNX Runtime int8 (static QDQ), TFLite via onnx2tf.

``FORMATS`` is the table of what can be written; ``export_all`` writes the chosen rows and runs
every file it wrote against the PyTorch model (``parity``). They are imported on first use, so
light modules of this package (``format_table``, ``calibration``, ``int8_arith``) import without torch;
``format_table`` holds the format names and their properties (``FORMAT_NAMES``), stdlib only."""

__all__ = ["FORMATS", "ExportJob", "Format", "export_all"]


def __getattr__(name: str):
    if name in __all__:
        from export import formats

        return getattr(formats, name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
