"""The converter child's main loop (started by ``export.converter.Converter``, never by hand).

``python -m export.converter_child FD [MODULES]``: imports MODULES (comma-separated; default
TensorFlow, onnx2tf and tf_keras: ``WARM``) once, writes a ready line to file descriptor FD, then answers each JSON request line of stdin with one JSON line on FD:
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ..., "trace": ...}``. A failed request
(including onnx2tf's own ``sys.exit``) is an answer, not the end of the child; end of stdin ends it.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback

from export import litert_convert, tflite_convert

HANDLERS = {"onnx2tf": tflite_convert.convert, "tf_load": tflite_convert.tf_load,
            "litert_torch": litert_convert.convert}
WARM = {"onnx2tf": ("tensorflow", "onnx2tf", "tf_keras"),  # what a converter's child imports before its ready line
        "litert_torch": ("litert_torch", "ai_edge_quantizer")}


def _warm_up(modules: tuple[str, ...]) -> str | None:
    """Import the heavy modules now, while the parent exports PyTorch -> ONNX. (Converting a tiny
    graph here as well, to pay onnx2tf's first-call set-up early, was measured: no gain on 2 cores.)"""
    try:
        for name in modules:
            importlib.import_module(name)
    except Exception as exc:  # the requests that need them report it
        return f"{type(exc).__name__}: {exc}"
    return None


def main(fd: int, modules: tuple[str, ...] = WARM["onnx2tf"]) -> None:
    answers = os.fdopen(fd, "w", buffering=1, encoding="utf-8")

    def say(obj: dict) -> None:
        answers.write(json.dumps(obj) + "\n")
        answers.flush()

    t0 = time.perf_counter()
    error = _warm_up(modules)
    say({"ready": True, "import_error": error, "seconds": round(time.perf_counter() - t0, 2)})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            say({"ok": True, "result": HANDLERS[req["op"]](**req["args"])})
        except BaseException as exc:  # noqa: BLE001  SystemExit from onnx2tf, errors of any kind
            if isinstance(exc, KeyboardInterrupt):
                raise
            trace = traceback.format_exc().strip().splitlines()
            say({"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:2000]}", "trace": "\n".join(trace[-12:])})


if __name__ == "__main__":
    main(int(sys.argv[1]), *([tuple(filter(None, sys.argv[2].split(",")))] if len(sys.argv) > 2 else []))
