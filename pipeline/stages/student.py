"""Stage ``student``: quantization-aware fine-tuning (``qat``), then drop the teacher head: the deployed
student has one output head. Its test predictions go to ``student_preds.npz`` for the report."""

from __future__ import annotations

import logging

import numpy as np

from models import count_parameters, drop_teacher_head
from pipeline import qat
from pipeline.checkpoints import load_checkpoint, save_model
from pipeline.data import Splits
from pipeline.io import atomic_write, atomic_write_json
from pipeline.metrics import max_abs_diff, require_finite
from pipeline.runner import Context
from pipeline.stages.common import DIVERGED, deployed_abstains, dims, metrics_of
from pipeline.train import predict

log = logging.getLogger(__name__)


def stage_student(ctx: Context) -> list[str]:
    """Drop the teacher head: the deployed student has one output."""
    cfg = ctx.cfg
    splits = Splits.load(ctx.path("data.npz"))
    two_head = load_checkpoint(ctx.path("student_mt.pt"), cfg)
    d_in, d_out = dims(splits)
    x = splits.x["test"]
    head_index = 0 if cfg.student.keep_head == "label" else 1
    qat_record = None
    if qat.applies(cfg):  # fine-tune with fake int8 quantization under the method loss (pipeline/qat.py)
        before = metrics_of(cfg, splits, predict(two_head, x)[head_index])
        with np.load(ctx.path("teacher_preds.npz")) as z:
            yt = {s: z[s] for s in ("train", "val")}
            significance = z["significance_train"] if "significance_train" in z.files else None
        qat_record = {**qat.qat_finetune(cfg, splits, yt, two_head, significance), "test_before": before,
                      "test_after": metrics_of(cfg, splits, predict(two_head, x)[head_index])}
    elif cfg.qat.enabled:
        log.info("qat: skipped, %s %s students are not covered (ReLU mlp / cnn and image backbones); "
                 "post-training int8 as before",
                 cfg.student.activation, cfg.student.backbone)
    deployed = drop_teacher_head(two_head, cfg.student.keep_head)
    test_pred = predict(deployed, x)
    require_finite(test_pred, "student: deployed student's outputs on the test split", DIVERGED)
    diff = max_abs_diff(test_pred, predict(two_head, x)[head_index])
    save_model(ctx.path("student.pt"), deployed, "deployed", d_in, deployed.head.out_features)
    atomic_write(ctx.path("student_preds.npz"), lambda f: np.savez(f, test=test_pred))
    atomic_write_json(
        ctx.path("student.json"),
        {
            "kept_head": cfg.student.keep_head,
            "params": count_parameters(deployed),
            "params_two_head": count_parameters(two_head),
            "outputs": deployed.head.out_features,
            "abstain_output": deployed_abstains(cfg),
            "head_drop_max_abs_diff": diff,
            "test": metrics_of(cfg, splits, test_pred),
            "qat": qat_record,  # None: no quantization-aware fine-tuning (qat.enabled false or a student not covered)
        },
    )
    return ["student.pt", "student_preds.npz", "student.json"]
