"""Export the deployed student: ONNX (+onnxsim), ONNX Runtime int8 (static QDQ), TFLite via onnx2tf.

``FORMATS`` is the table of what can be written; ``export_all`` writes the chosen rows and runs
every file it wrote against the PyTorch model (``parity``)."""

from export.formats import FORMATS, ExportJob, Format, export_all

__all__ = ["FORMATS", "ExportJob", "Format", "export_all"]
