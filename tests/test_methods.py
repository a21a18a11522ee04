"""Loss terms and methods on hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from pipeline.config import DistillConfig, load_config
from pipeline.methods import (METHODS, TrainingSet, build_method, option_sections, robust_scale, tor_loss,
                              tor_threshold)


def _t(*v):
    return torch.tensor(v, dtype=torch.float32).reshape(-1, 1)


def test_reject_gives_an_outlier_no_gradient_from_its_label():
    pred = _t(0.0, 0.0, 0.0).requires_grad_()
    y = _t(1.0, 2.0, 10.0)
    y_teacher = _t(1.0, 2.5, 0.0)  # residuals 0, 0.5, 10 -> with delta 1 only the last is an outlier
    loss, outlier = tor_loss(pred, y, y_teacher, delta=1.0, mode="reject")
    assert outlier.tolist() == [False, False, True]
    # mean over the two inliers: ((0-1)^2 + (0-2)^2) / 2
    assert loss.item() == pytest.approx(2.5)
    loss.backward()
    g = pred.grad.ravel().tolist()
    assert g[2] == 0.0
    assert g[0] == pytest.approx(2 * (0 - 1) / 2) and g[1] == pytest.approx(2 * (0 - 2) / 2)


def test_substitute_uses_the_teacher_value_as_target():
    pred = _t(0.0, 0.0).requires_grad_()
    y = _t(1.0, 10.0)
    y_teacher = _t(1.5, 3.0)  # residuals 0.5 and 7 -> second is an outlier, its target becomes 3.0
    loss, outlier = tor_loss(pred, y, y_teacher, delta=1.0, mode="substitute")
    assert outlier.tolist() == [False, True]
    assert loss.item() == pytest.approx(((0 - 1) ** 2 + (0 - 3) ** 2) / 2)
    loss.backward()
    assert pred.grad.ravel()[1].item() == pytest.approx(2 * (0 - 3.0) / 2)


def test_all_rejected_batch_gives_zero_loss_not_nan():
    pred = _t(0.0).requires_grad_()
    loss, _ = tor_loss(pred, _t(9.0), _t(0.0), delta=1.0, mode="reject")
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad.item() == 0.0


def test_mad_threshold_is_k_times_robust_scale():
    r = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 100.0])  # median 0.5, |r - 0.5| median = 1.5
    assert robust_scale(r) == pytest.approx(1.4826 * 1.5)
    cfg = load_config(None, ["distill.tor.delta_rule=mad", "distill.tor.k=2.5"]).distill.tor
    assert tor_threshold(cfg, r) == pytest.approx(2.5 * 1.4826 * 1.5)
    cfg = load_config(None, ["distill.tor.delta_rule=absolute", "distill.tor.delta=0.7"]).distill.tor
    assert tor_threshold(cfg, r) == 0.7


def test_robust_scale_recovers_gaussian_sigma_despite_outliers():
    rng = np.random.default_rng(0)
    r = np.concatenate([rng.normal(0, 0.3, 8000), rng.uniform(-5, 5, 2000)])
    # 20 % wide outliers inflate the MAD scale a little (~30 %) but the plain std by ~5x
    assert 0.3 <= robust_scale(r) < 0.45
    assert r.std() > 1.2


def test_kd_is_the_alpha_weighted_sum():
    cfg = load_config(None, ["distill.kd.alpha=0.25"]).distill
    m = build_method("kd", cfg, None)
    s, y, yt = _t(1.0, 2.0), _t(0.0, 0.0), _t(2.0, 2.0)
    expected = 0.25 * (1 + 4) / 2 + 0.75 * (1 + 0) / 2
    assert m.loss(s, s * 0, y, yt).item() == pytest.approx(expected)


def test_tor_mt_sums_label_tor_and_teacher_head_mse_with_weights():
    cfg = load_config(None, ["distill.tor.delta_rule=absolute", "distill.tor.delta=1.0",
                             "distill.tor_mt.label_weight=2", "distill.tor_mt.teacher_weight=0.5"]).distill
    m = build_method("tor_mt", cfg, None)
    label_out = _t(0.0, 0.0).requires_grad_()
    teacher_out = _t(1.0, 1.0).requires_grad_()
    y, yt = _t(1.0, 50.0), _t(1.0, 3.0)  # second label is an outlier
    loss = m.loss(label_out, teacher_out, y, yt)
    expected = 2 * ((0 - 1) ** 2) / 1 + 0.5 * ((1 - 1) ** 2 + (1 - 3) ** 2) / 2
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert label_out.grad.ravel()[1].item() == 0.0  # rejected
    assert teacher_out.grad.ravel()[1].item() == pytest.approx(0.5 * 2 * (1 - 3) / 2)


def test_scratch_ignores_the_teacher_and_registry_has_the_issue_methods():
    assert {"scratch", "kd", "tor", "tor_mt"} <= set(METHODS)
    m = build_method("scratch", load_config().distill, None)
    a = m.loss(_t(1.0), _t(0.0), _t(0.0), _t(5.0)).item()
    b = m.loss(_t(1.0), _t(0.0), _t(0.0), _t(-5.0)).item()
    assert a == b == pytest.approx(1.0)


def test_tor_method_reports_its_threshold_and_share():
    cfg = load_config().distill
    rng = np.random.default_rng(1)
    r = np.concatenate([rng.normal(0, 0.1, 900), np.full(100, 4.0)]).reshape(-1, 1)
    m = build_method("tor", cfg, r)
    d = m.describe()
    assert d["delta"] == pytest.approx(cfg.tor.k * robust_scale(r), rel=1e-9)
    # every one of the 10 % outliers is flagged, plus a few of the Gaussian tail beyond k sigma
    assert 0.10 <= d["train_outlier_share"] < 0.15


def test_robust_scale_of_vector_residuals_keeps_clean_samples():
    """Two outputs: the threshold k x scale must leave clean Gaussian residual vectors in (few rejected)
    and catch the wide outliers."""
    rng = np.random.default_rng(1)
    clean = rng.normal(0, 0.3, size=(8000, 2))
    r = np.concatenate([clean, rng.uniform(-5, 5, size=(2000, 2))])
    scale = robust_scale(r)
    assert 0.3 * np.sqrt(2) <= scale < 0.45 * np.sqrt(2)
    norms = np.linalg.norm(r, axis=1)
    assert np.mean(norms[:8000] > 2 * scale) < 0.05  # chi with 2 dof: P(|r| > 2 sqrt(2) sigma) = e^-4
    assert np.mean(norms[8000:] > 2 * scale) > 0.8


def test_gaussian_student_loss_and_abstention_metrics_by_hand():
    from pipeline.metrics import task_metrics

    cfg = load_config(overrides=["distill.method=gaussian", "distill.baselines=[]", "distill.kd.alpha=1.0"]).distill
    method = build_method("gaussian", cfg, None)
    assert method.n_extra(3) == 3  # one log-variance per output
    out = torch.tensor([[1.0, 0.0], [2.0, math.log(4.0)]])  # (mean, log-variance) per sample
    y = torch.tensor([[0.0], [0.0]])
    # alpha = 1: Gaussian NLL only, 0.5 * (log var + (y - mean)^2 / var), averaged
    expected = 0.5 * ((0.0 + 1.0) + (math.log(4.0) + 4.0 / 4.0)) / 2
    assert float(method.loss(out, None, y, torch.zeros(2, 1))) == pytest.approx(expected, rel=1e-6)
    # abstaining on the larger variance keeps sample 0 (error 1) at 50 % coverage
    m = task_metrics(np.array([[1.0, 0.0], [2.0, 5.0]]), np.array([[0.0], [0.0]]), "regression", abstain=True)
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 4) / 2))
    assert m["rmse_at_coverage"]["50"] == pytest.approx(1.0) and m["rmse_at_coverage"]["100"] == pytest.approx(m["rmse"])


def test_every_method_runs_on_the_options_sections_it_declares_alone():
    """build_method hands a method only its declared sections: a method that read any other would fail here."""
    assert set(option_sections()) == set(DistillConfig.model_fields) - {"method", "baselines", "train", "parallel"}
    g = torch.Generator().manual_seed(0)
    for name, cls in METHODS.items():
        for task in sorted(cls.tasks):
            if task == "regression":
                y, yt = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
            else:
                y, yt = torch.randint(0, 4, (16,), generator=g), torch.randn(16, 4, generator=g)
            ts = TrainingSet(y=y.numpy(), teacher=yt.numpy(), task=task, significance=np.linspace(0, 1, 16))
            method = build_method(name, {}, (y - yt).numpy() if task == "regression" else None, ts)
            assert {k for k in vars(method) if k in option_sections()} == set(cls.options), name
            width = yt.shape[1] + cls.n_extra(yt.shape[1])
            loss = method.loss(torch.randn(16, width, generator=g), torch.randn(16, yt.shape[1], generator=g), y, yt,
                               torch.arange(16))
            assert torch.isfinite(loss), (name, task)
            method.epoch_end()
            assert method.describe()["method"] == name


def test_ka_gambler_reads_its_alpha_from_its_own_section():
    base = ["data.name=digits", "distill.method=ka_gambler", "distill.baselines=[]"]
    ts = TrainingSet(y=np.arange(8) % 4, teacher=np.eye(4)[np.arange(8) % 4].astype(np.float32), task="classification")
    logits, y, yt = torch.randn(8, 5), torch.arange(8) % 4, torch.randn(8, 4)

    def loss_and_alpha(*sets):
        m = build_method("ka_gambler", load_config(None, base + list(sets)).distill, None, ts)
        return float(m.loss(logits, None, y, yt)), m.describe()["alpha"]

    default = loss_and_alpha()
    assert default[1] == 0.5 == load_config().distill.kd.alpha  # the same default as kd.alpha, read before
    assert loss_and_alpha("distill.kd.alpha=0.1") == default  # kd's alpha is kd's
    assert loss_and_alpha("distill.ka.alpha=0.1") == default  # ka's is ka's
    changed = loss_and_alpha("distill.ka.gambler_alpha=0.1")
    assert changed[1] == 0.1 and changed[0] != default[0]


@pytest.mark.parametrize("loss", ["l1", "huber"])
def test_robust_scratch_bounds_the_pull_of_a_gross_outlier_label(loss):
    """scratch with distill.scratch.loss = l1 / huber: an outlier's gradient is bounded (|d loss / d out|
    <= 1 for l1, <= delta for Huber), while MSE's grows with the error; inliers within delta see MSE/2."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=(64, 1)).astype(np.float32)
    ts = TrainingSet(y=y, teacher=y.copy())
    robust = build_method("scratch", load_config(None, [f"distill.scratch.loss={loss}"]).distill, train_set=ts)
    mse = build_method("scratch", load_config(None, []).distill, train_set=ts)
    target = torch.tensor([[0.1], [100.0]])
    grads = {}
    for name, m in (("robust", robust), ("mse", mse)):
        out = torch.zeros(2, 1, requires_grad=True)
        m.loss(out, out, target, target).backward()
        grads[name] = out.grad.abs().reshape(-1) * 2  # per-sample gradient (the loss is a mean over 2)
    assert grads["mse"][1] == pytest.approx(200.0)
    if loss == "l1":
        assert grads["robust"].tolist() == pytest.approx([1.0, 1.0])
    else:
        delta = robust.describe()["huber_delta"][0]
        mad = 1.4826 * np.median(np.abs(y - np.median(y)))
        assert delta == pytest.approx(1.345 * mad, rel=1e-5) and 0.1 < delta < 100
        assert grads["robust"].tolist() == pytest.approx([0.1, delta], rel=1e-5)
    assert robust.describe()["loss"] == loss
