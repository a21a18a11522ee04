"""A teacher that says when it learned little (issue 19, item 1): the robust losses (l1, huber with a
scale from the labels' MAD) and the warnings after training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.data import make_dataset
from pipeline.stages.common import label_scale, scaled
from pipeline.methods.losses import HUBER_K
from pipeline.stages.teacher import teacher_loss, teacher_warnings, train_teacher
from pipeline.train import History

SMALL = ["data.n_train=300", "data.n_val=100", "data.n_test=100", "teacher.hidden=[32,32]",
         "teacher.train.epochs=25", "teacher.train.patience=25"]


def test_huber_delta_is_huber_k_times_the_mad_scale_of_each_label_and_the_loss_is_hubers():
    rng = np.random.default_rng(0)
    y = np.stack([rng.normal(0, 1, 2001), rng.normal(0, 3, 2001)], axis=1)
    y[:400] = 50.0  # 20 % outliers barely move the MAD
    fn, delta = teacher_loss(load_config(None, ["teacher.loss=huber"]), y)
    mad = 1.4826 * np.median(np.abs(y - np.median(y, axis=0)), axis=0)
    assert delta == pytest.approx((HUBER_K * mad).tolist()) and 1.0 < delta[1] / delta[0] < 5
    d = delta[0]
    out, target = torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.5 * d, 0.0], [4 * d, 0.0]])
    got = fn(out, target)[:, 0].tolist()
    assert got == pytest.approx([0.5 * (0.5 * d) ** 2, d * (4 * d - 0.5 * d)], rel=1e-6)  # quadratic, then linear
    _, given = teacher_loss(load_config(None, ["teacher.loss=huber", "teacher.huber_delta=0.7"]), y)
    assert given == [0.7, 0.7]
    fn, none = teacher_loss(load_config(None, ["teacher.loss=l1"]), y)
    assert none is None and fn(out, target)[1, 0] == pytest.approx(4 * d)


def test_warnings_for_an_early_best_epoch_and_for_a_teacher_no_better_than_the_median():
    y_train = np.random.default_rng(1).normal(size=(500, 1)).astype(np.float32)
    y_val = np.random.default_rng(2).normal(size=(100, 1)).astype(np.float32)
    mse = lambda o, y: ((o - y) ** 2).mean(dim=1)  # noqa: E731
    trivial = float(((np.median(y_train) - y_val) ** 2).mean())
    good = History(best_epoch=20, epochs_run=40, best_val=0.2 * trivial)
    assert teacher_warnings(good, mse, y_train, y_val, "mse") == []
    early = teacher_warnings(History(best_epoch=1, epochs_run=32, best_val=0.2 * trivial), mse, y_train, y_val, "mse")
    assert len(early) == 1 and "best validation epoch is 2 of 32 run" in early[0] and "teacher.loss=l1" in early[0]
    useless = teacher_warnings(History(best_epoch=20, epochs_run=40, best_val=trivial * 1.01), mse, y_train, y_val,
                               "mse")
    assert len(useless) == 1 and "no better than predicting the median training label" in useless[0]


@pytest.mark.parametrize("loss", ["huber", "mse"])
def test_a_real_teacher_records_its_loss_scale_and_warnings(loss):
    cfg = load_config(None, [*SMALL, f"teacher.loss={loss}"])
    splits = make_dataset(cfg.data, cfg.seed)
    _, hist, preds, record = train_teacher(cfg, splits)
    y = scaled(splits.y["train"], label_scale(splits))
    if loss == "huber":
        mad = 1.4826 * np.median(np.abs(y - np.median(y, axis=0)), axis=0)
        assert record["huber_delta"] == pytest.approx((HUBER_K * mad).tolist(), rel=1e-5)
    else:
        assert record["huber_delta"] is None
    assert isinstance(record["warnings"], list) and hist.epochs_run == 25
    # the toy is learnable: a trained teacher beats the median predictor, whatever its loss
    assert not any("median training label" in w for w in record["warnings"])
