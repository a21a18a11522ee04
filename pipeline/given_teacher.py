"""A teacher you already have: ``teacher.onnx`` (run by onnxruntime) or ``teacher.checkpoint`` (a
state_dict of the configured architecture). Every check runs before anything is written; every
failure is one ``UserError`` line."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from device_bench.runner import ModelFileError, check_model_file, one_line
from models import SingleHeadNet
from pipeline.checkpoints import Shape, build_teacher
from pipeline.config import Config
from pipeline.data import Splits
from pipeline.errors import UserError
from pipeline.metrics import require_finite


def onnx_param_count(path: Path) -> int:
    import onnx

    model = onnx.load(str(path))
    return int(sum(np.prod(t.dims) for t in model.graph.initializer))


def _given_onnx_session(path: Path):
    """An onnxruntime session of teacher.onnx after a check of its name and bytes; one UserError line."""
    import onnxruntime as ort

    if path.suffix.lower() != ".onnx":
        raise UserError(f"teacher.onnx {path}: extension {path.suffix or '(none)'!r}; expected a .onnx file "
                        "(an ONNX model; a PyTorch state_dict goes under teacher.checkpoint)")
    try:
        check_model_file(str(path))
    except ModelFileError as exc:
        raise UserError(f"teacher.onnx {exc}") from None
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UserError(f"teacher.onnx {path}: onnxruntime cannot load it ({one_line(exc)}); expected an ONNX "
                        "model") from None


def _torch_load_user(path: Path):
    """``torch.load(weights_only=True)`` of a file the user gave, every failure one clear line."""

    what = f"teacher.checkpoint {path}"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise UserError(f"{what}: cannot be read: {' '.join(str(exc.strerror or exc).split())}") from None
    if not head:
        raise UserError(f"{what}: empty file; expected a PyTorch state_dict saved with torch.save") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{what}: refused by torch.load(weights_only=True): the file holds Python objects other "
                        "than tensors and plain containers, which could run code when loaded; save only the "
                        "weights with torch.save(model.state_dict(), path)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise UserError(f"{what}: not a readable PyTorch checkpoint ({type(exc).__name__}); expected a "
                        "state_dict saved with torch.save(model.state_dict(), path)") from None


def check_given_teacher(cfg: Config, shape: Shape, out_features: int) -> None:
    """Before anything is written: a given teacher file loads, runs on the data's input shape and has
    the right number of outputs (teacher.onnx), or fits the configured architecture (teacher.checkpoint)."""
    if cfg.teacher.onnx:
        path = Path(cfg.teacher.onnx).expanduser()
        sess = _given_onnx_session(path)
        inp = sess.get_inputs()
        if len(inp) != 1:
            raise UserError(f"teacher.onnx {path} has {len(inp)} inputs; a teacher takes exactly one (the data's x)")
        try:
            out = sess.run(None, {inp[0].name: np.zeros((2, *shape), np.float32)})[0]
        except Exception as exc:

            raise UserError(f"teacher.onnx {path} fails on inputs of shape {list(shape)} (plus batch): "
                            f"{one_line(exc)}") from None
        width = int(np.prod(np.shape(out)[1:])) if np.ndim(out) > 1 else 1
        if width != out_features:
            raise UserError(f"teacher.onnx {path} gives {width} outputs per sample; this data needs {out_features}")
    elif cfg.teacher.checkpoint:
        path = Path(cfg.teacher.checkpoint).expanduser()
        _state_dict_into(build_teacher(cfg, shape, out_features), _torch_load_user(path), cfg, path, out_features)


def _state_dict_into(model: torch.nn.Module, payload, cfg: Config, path: Path, d_out: int) -> None:
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"teacher.checkpoint {path} holds a {type(payload).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise UserError(f"teacher.checkpoint {path} does not fit the configured teacher ({cfg.teacher.backbone}, "
                        f"hidden {cfg.teacher.hidden}, {d_out} outputs): "
                        f"{' '.join(str(exc).split())[:300]}") from None


def given_teacher_predictions(cfg: Config, splits: Splits, path: Path) -> dict[str, np.ndarray]:
    """Outputs of a teacher you already have (``teacher.onnx``) on every split, from onnxruntime."""
    sess = _given_onnx_session(path)
    inp = sess.get_inputs()
    if len(inp) != 1:
        raise UserError(f"teacher.onnx {path} has {len(inp)} inputs; a teacher takes exactly one (the data's x)")
    xs = splits.x_raw if cfg.teacher.onnx_input == "raw" else splits.x
    want = splits.out_features
    preds = {}
    for s in ("train", "val", "test"):
        outs = []
        for i in range(0, len(xs[s]), 256):
            try:
                outs.append(sess.run(None, {inp[0].name: xs[s][i : i + 256].astype(np.float32)})[0])
            except Exception as exc:
                raise UserError(f"teacher.onnx {path} failed on the {s} inputs of shape "
                                f"{list(xs[s].shape[1:])} (plus batch): {str(exc).splitlines()[0][:200]}") from None
        out = np.concatenate(outs).astype(np.float32).reshape(len(xs[s]), -1)
        if out.shape[1] != want:
            raise UserError(f"teacher.onnx {path} gives {out.shape[1]} outputs per sample; this data needs {want} "
                            f"({'logits of each class' if splits.task == 'classification' else 'one per label'})")
        require_finite(out, f"teacher.onnx {path}: outputs on the {s} split", "check the model and teacher.onnx_input")
        preds[s] = out
    return preds


def load_given_checkpoint(cfg: Config, splits: Splits, path: Path) -> SingleHeadNet:
    """``teacher.checkpoint``: a state_dict (or pocketkd's teacher.pt) of the configured architecture."""
    d_in, d_out = tuple(splits.x["train"].shape[1:]), splits.out_features
    model = build_teacher(cfg, d_in, d_out)
    _state_dict_into(model, _torch_load_user(path), cfg, path, d_out)
    return model.eval()
