"""Training defaults that scale with the data: the auto batch size, the step budget, the time budget,
and progress lines with the time left when no progress bar is shown (a log file, CI, nohup)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.options import TrainConfig, batch_size_for
from pipeline import train as train_module
from pipeline.train import Heartbeat, History, fit


@pytest.mark.parametrize("rows, batch", [(400, 128), (2000, 128), (16383, 128), (16384, 256), (50000, 512),
                                         (100000, 1024), (10**7, 1024)])
def test_auto_batch_grows_with_the_rows_and_leaves_the_shipped_data_sets_at_128(rows, batch):
    assert batch_size_for(TrainConfig(), rows) == batch
    assert batch_size_for(TrainConfig(batch_size=64), rows) == 64


def test_every_shipped_config_keeps_batch_128_and_is_not_capped_by_max_steps():
    """The toy, digits, rotated digits and pose configs train exactly as before issue 16."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for cfg_file in [None, *sorted((root / "configs").glob("*.yaml"))]:
        cfg = load_config(cfg_file)
        rows = cfg.data.n_train if cfg.data.name != "digits" else 1078
        for train in (cfg.teacher.train, cfg.distill.train):
            batch = batch_size_for(train, rows)
            assert batch == (128 if train.batch_size == "auto" else train.batch_size), cfg_file
            assert train.max_steps is None or train.epochs * -(-rows // batch) <= train.max_steps, cfg_file


def test_a_table_under_the_default_config_gets_the_auto_batch():
    """Your own data inherits pipeline/default.yaml: its training sections must say auto, or a 50k-row
    table trains at batch 128 and the step budget cuts the teacher off after ~20 epochs."""
    cfg = load_config(None)
    for train in (cfg.teacher.train, cfg.distill.train):
        assert train.batch_size == "auto"
        assert batch_size_for(train, 40000) == 512 and batch_size_for(train, 2000) == 128


def _data(rows, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], dtype=np.float32)).astype(np.float32)
    return x, y


def _mse(model, batch):
    return torch.nn.functional.mse_loss(model(batch[0]), batch[1])


def test_max_steps_stops_training_at_the_budget():
    x, y = _data(1000)
    model = torch.nn.Linear(3, 1)
    hist = fit(model, _mse, (x, y), (x[:100], y[:100]), TrainConfig(epochs=50, batch_size=100, max_steps=35,
                                                                        patience=100), seed=0)
    assert hist.batch_size == 100 and hist.stopped_by == "max_steps"
    assert hist.epochs_run == 4 and hist.steps == 40  # the epoch that crosses the budget is finished


def test_without_a_budget_epochs_alone_decide():
    x, y = _data(1000)
    hist = fit(torch.nn.Linear(3, 1), _mse, (x, y), (x[:100], y[:100]),
               TrainConfig(epochs=6, batch_size=100, max_steps=None, patience=100), seed=0)
    assert hist.epochs_run == 6 and hist.steps == 60 and hist.stopped_by == ""


def test_a_time_budget_stops_after_the_epoch_that_passes_it():
    x, y = _data(2000)
    hist = fit(torch.nn.Linear(3, 1), _mse, (x, y), (x[:100], y[:100]),
               TrainConfig(epochs=10**6, batch_size=50, max_steps=None, patience=10**6, time_budget=0.3), seed=0)
    assert hist.stopped_by == "time_budget" and 0.3 <= hist.seconds < 30 and hist.epochs_run < 10**6


def test_progress_lines_say_where_training_is_and_how_long_is_left(caplog):
    beat = Heartbeat("teacher", epochs=300, enabled=True, every=0.0)
    hist = History(train_loss=[0.5, 0.4], val_loss=[0.6, 0.45], best_epoch=1)
    with caplog.at_level(logging.INFO, logger="pipeline.train"):
        beat.epoch_done(1, hist)
    line = caplog.messages[-1]
    assert line.startswith("teacher: epoch 2/300, train 0.40000, val 0.45000, best epoch 2")
    assert "left" in line
    silent = Heartbeat("teacher", epochs=300, enabled=False, every=0.0)
    n = len(caplog.messages)
    silent.epoch_done(1, hist)
    assert len(caplog.messages) == n


def test_fit_logs_progress_when_no_bar_is_shown(caplog, monkeypatch):
    """Under pytest stderr is not a terminal, so tqdm shows no bar: fit must log progress lines."""
    monkeypatch.setattr(train_module, "PROGRESS_EVERY", 0.0)  # a line after every epoch
    x, y = _data(500)
    with caplog.at_level(logging.INFO, logger="pipeline.train"):
        fit(torch.nn.Linear(3, 1), _mse, (x, y), (x[:50], y[:50]),
            TrainConfig(epochs=3, batch_size=100, patience=100), seed=0, desc="student[test]")
    assert sum(m.startswith("student[test]: epoch ") for m in caplog.messages) == 3


def test_patience_waits_until_batch_norm_statistics_have_settled():
    """With batch norm at momentum 0.01 (torchvision's MobileNetV3) the eval-mode network is scored
    with mostly initial running statistics for ~300 steps; patience does not stop training before.
    A validation loss that never improves after the first epoch shows it: without batch norm patience
    stops at epoch 1 + patience, with it only after the warm-up."""
    assert train_module.batchnorm_warmup_steps(torch.nn.BatchNorm1d(4, momentum=0.01)) == 299
    assert train_module.batchnorm_warmup_steps(torch.nn.BatchNorm1d(4)) == 29  # momentum 0.1
    assert train_module.batchnorm_warmup_steps(torch.nn.BatchNorm1d(4, momentum=None)) == 0
    assert train_module.batchnorm_warmup_steps(torch.nn.Linear(3, 1)) == 0
    x, y = _data(640)
    rng = np.random.default_rng(1)
    xv, yv = x[:64], rng.standard_normal((64, 1)).astype(np.float32) * 100  # unlearnable: no improvement

    def run(model):
        return fit(model, _mse, (x, y), (xv, yv), TrainConfig(epochs=100, batch_size=64, patience=2), seed=0)

    plain = run(torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)))
    slow_bn = run(torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8, momentum=0.01),
                                      torch.nn.ReLU(), torch.nn.Linear(8, 1)))
    assert plain.stopped_by == slow_bn.stopped_by == "patience"
    assert plain.patience_from_step == 0 and plain.epochs_run == plain.best_epoch + 3 < 30
    assert slow_bn.patience_from_step == 299 and slow_bn.steps >= 299 and slow_bn.epochs_run >= 30
