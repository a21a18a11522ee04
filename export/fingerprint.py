"""What a PyTorch model's ONNX export depends on, as one sha256: the conversion cache's input hash
for ``torch.onnx.export`` (``export.onnx_export``).

It covers the module tree (``repr``, each module's class and the source file that defines it, its
plain attributes such as flags and sizes), every parameter and buffer (name, dtype, shape, bytes)
and the train/eval mode. The export's own options and the tool versions are the other key parts.
A change this misses (code outside the classes' files that a ``forward`` calls) would still be
caught: every exported file is run and compared with the PyTorch model to ``export.parity_atol``.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import torch
from torch import nn

_PLAIN = (bool, int, float, str, type(None))


def model_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    h.update(repr(model).encode())
    h.update(b"training" if model.training else b"eval")
    files: dict[str, bytes] = {}
    for name, module in model.named_modules():
        cls = type(module)
        h.update(f"\0{name}\0{cls.__module__}.{cls.__qualname__}".encode())
        for key, value in sorted(vars(module).items()):
            if not key.startswith("_") and (isinstance(value, _PLAIN) or
                                            isinstance(value, (tuple, list)) and all(isinstance(v, _PLAIN) for v in value)):
                h.update(f"\0{key}={value!r}".encode())
        try:
            src = inspect.getsourcefile(cls)
        except TypeError:  # builtin
            src = None
        if src and src not in files:
            files[src] = Path(src).read_bytes() if Path(src).is_file() else b""
    for src in sorted(files):
        h.update(hashlib.sha256(files[src]).digest())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
