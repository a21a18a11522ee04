"""Atomic file writes and content hashes: nothing is ever half-written in a run directory.

Under torchrun (``pipeline.distributed``) only rank 0 writes: on the other ranks the writes here do
nothing and return the path, so code that runs on every rank (the training stages) needs no
``if rank == 0`` of its own. Those ranks read what rank 0 wrote only after the runner's barrier."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from pipeline import distributed


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fileobj)`` on a temp file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    if not distributed.is_main():  # one writer: rank 0 (torchrun)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    if not distributed.is_main():
        return Path(dst)
    data = Path(src).read_bytes()
    return atomic_write(dst, lambda f: f.write(data))


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
