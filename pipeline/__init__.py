"""pocketkd: distil a large regressor into a phone-sized student and prove it on the target CPU.

``from pipeline import run`` is the Python API (``pipeline/api.py``); it is imported on first use, so
importing a light module such as ``pipeline.options`` does not import torch.
"""

from pipeline.version import __version__

__all__ = ["__version__", "run"]


def __getattr__(name: str):
    if name in ("run", "Report"):  # PEP 562: defer torch, onnx, ... to the first use of the API
        from pipeline import api

        return getattr(api, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
