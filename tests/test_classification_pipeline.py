"""Classification through the pipeline (issue 5): digits data with label noise, the classification
methods as registry entries, and a real end-to-end run whose exported files keep the m + 1 outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from pipeline.config import load_config
from pipeline.data import inject_label_noise, make_dataset
from pipeline.errors import UserError
from pipeline.methods import METHODS, TrainingSet, build_method
from pipeline.methods.knowledge_adjustment import gambler_loss
from tests.conftest import run_cli

CLS_METHODS = ["scratch", "kd", "lr", "ds", "lr_ds", "ka", "ka_gambler", "significance", "regulated", "hybrid"]


# --------------------------------------------------------------------------- data


@pytest.mark.parametrize("kind", ["symmetric", "pair"])
def test_label_noise_flips_exactly_the_requested_share(kind):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 50)
    noisy, flipped = inject_label_noise(y, 0.4, kind, 10, rng)
    assert flipped.sum() == 200
    assert np.all(noisy[flipped] != y[flipped]) and np.all(noisy[~flipped] == y[~flipped])
    if kind == "pair":
        assert np.all(noisy[flipped] == (y[flipped] + 1) % 10)
    else:  # symmetric: every wrong class is used
        assert len(np.unique((noisy[flipped] - y[flipped]) % 10)) == 9


def test_digits_splits_are_real_images_with_clean_test_labels():
    cfg = load_config(overrides=["data.name=digits", "data.image_size=8", "data.noise.label_noise=0.2",
                                 "distill.method=kd", "distill.baselines=[scratch]"])
    s = make_dataset(cfg.data, 0)
    assert s.task == "classification" and s.n_classes == 10 and s.out_features == 10
    assert sum(len(v) for v in s.y.values()) == 1797  # every image once
    assert s.x["train"].shape[1:] == (1, 8, 8)
    for split in ("train", "val"):
        assert s.outlier[split].mean() == pytest.approx(0.2, abs=0.01)
        assert np.all((s.y[split] != s.y_clean[split]) == s.outlier[split])
    assert np.array_equal(s.y["test"], s.y_clean["test"]) and not s.outlier["test"].any()
    assert s.y["train"].dtype == np.int64


def test_regression_only_method_on_classification_data_is_a_config_error():
    with pytest.raises(UserError, match="method 'tor_mt' does not work on classification data"):
        load_config(overrides=["data.name=digits"])  # default method tor_mt
    with pytest.raises(UserError, match="'ka'.*regression"):
        load_config(overrides=["distill.baselines=[ka]"])  # sinusoid is a regression


# --------------------------------------------------------------------------- methods


def _train_set(n=40, m=4, seed=0, significance=None):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, m, (n,), generator=g).numpy()
    teacher = torch.randn(n, m, generator=g).numpy() * 3
    return TrainingSet(y=y, teacher=teacher, task="classification", significance=significance)


def test_every_classification_method_trains_a_real_gradient():
    cfg = load_config(overrides=["data.name=digits", "distill.method=kd", "distill.baselines=[]"]).distill
    ts = _train_set(significance=np.linspace(0, 1, 40).astype(np.float32))
    for name in CLS_METHODS:
        method = build_method(name, cfg, None, ts)
        width = 4 + METHODS[name].n_extra(4)
        logits = torch.randn(40, width, requires_grad=True)
        loss = method.loss(logits, torch.zeros(40, 4), torch.as_tensor(ts.y), torch.as_tensor(ts.teacher),
                           torch.arange(40))
        loss.backward()
        assert torch.isfinite(loss) and logits.grad.abs().sum() > 0, name


def test_data_selection_distils_only_the_most_reliable_samples():
    cfg = load_config(overrides=["data.name=digits", "distill.method=ds", "distill.baselines=[]",
                                 "distill.ds.fraction=0.25"]).distill
    ts = _train_set(n=8)
    method = build_method("ds", cfg, None, ts)
    p = torch.softmax(torch.as_tensor(ts.teacher), 1)
    p_true = p[torch.arange(8), torch.as_tensor(ts.y)]
    assert set(torch.nonzero(method.selected).ravel().tolist()) == set(p_true.argsort(descending=True)[:2].tolist())
    # a non-selected sample's loss is plain cross-entropy: it does not depend on the teacher at all
    i = int(torch.nonzero(~method.selected)[0])
    logits = torch.randn(1, 4)
    y = torch.as_tensor(ts.y[i : i + 1])
    a = method.loss(logits, None, y, torch.randn(1, 4), torch.tensor([i]))
    b = method.loss(logits, None, y, torch.randn(1, 4) * 10, torch.tensor([i]))
    assert torch.allclose(a, b) and torch.allclose(a, torch.nn.functional.cross_entropy(logits, y))


def test_significance_leaves_out_insignificant_samples_and_counts_usage():
    cfg = load_config(overrides=["data.name=digits", "distill.method=significance", "distill.baselines=[]",
                                 "distill.significance.min_weight=0.5"]).distill
    sig = np.array([0.0, 0.2, 0.6, 1.0], dtype=np.float32)
    method = build_method("significance", cfg, None, _train_set(n=4, significance=sig))
    logits = torch.randn(4, 4, requires_grad=True)
    loss = method.loss(logits, None, torch.tensor([0, 1, 2, 3]), torch.randn(4, 4), torch.arange(4))
    loss.backward()
    grad_rows = logits.grad.abs().sum(dim=1)
    assert grad_rows[0] == 0 and grad_rows[1] == 0 and grad_rows[2] > 0 and grad_rows[3] > 0
    method.epoch_end()
    assert method.usage_per_epoch == [0.5]


def test_regulated_student_skips_samples_it_already_gets_confidently_right():
    cfg = load_config(overrides=["data.name=digits", "distill.method=regulated", "distill.baselines=[]"]).distill
    method = build_method("regulated", cfg, None, _train_set(n=2))
    logits = torch.tensor([[10.0, 0, 0, 0], [0.0, 0, 0, 0]], requires_grad=True)  # right+confident, unsure
    method.loss(logits, None, torch.tensor([0, 0]), torch.randn(2, 4), torch.arange(2)).backward()
    assert logits.grad[0].abs().sum() == 0 and logits.grad[1].abs().sum() > 0


def test_knowledge_adjustment_learns_from_the_adjusted_teacher_alone_by_default():
    # teacher logits favour class 0, the label says 2: the target is the tempered teacher with p[0] and
    # p[2] swapped, and (alpha 0, the paper) the labels enter only through that swap
    cfg = load_config(overrides=["data.name=digits", "distill.method=ka", "distill.baselines=[]"]).distill
    method = build_method("ka", cfg, None, _train_set(n=1, m=4))
    T = cfg.kd.temperature
    logits, teacher, y = torch.tensor([[0.5, -1.0, 2.0, 0.0]]), torch.tensor([[3.0, 1.0, -1.0, 0.0]]), torch.tensor([2])
    p = torch.softmax(teacher / T, dim=1)[0].tolist()
    target = torch.tensor([[p[2], p[1], p[0], p[3]]])
    by_hand = (target * (target.log() - torch.log_softmax(logits / T, dim=1))).sum() * T ** 2
    assert torch.allclose(method.loss(logits, None, y, teacher), by_hand)
    mixed = build_method("ka", load_config(overrides=["data.name=digits", "distill.method=ka", "distill.baselines=[]",
                                                      "distill.ka.alpha=0.25"]).distill, None, _train_set(n=1, m=4))
    assert torch.allclose(mixed.loss(logits, None, y, teacher),
                          0.25 * torch.nn.functional.cross_entropy(logits, y) + 0.75 * by_hand)


def test_gambler_payoff_must_lie_between_one_and_m():
    cfg = load_config(overrides=["data.name=digits", "distill.method=ka_gambler", "distill.baselines=[]",
                                 "distill.ka.payoff=12"]).distill
    method = build_method("ka_gambler", cfg, None, _train_set(n=4, m=4))
    with pytest.raises(ValueError, match=r"payoff must be in \(1, 4\)"):
        method.loss(torch.randn(4, 5), None, torch.tensor([0, 1, 2, 3]), torch.randn(4, 4), torch.arange(4))


def test_gambler_warm_up_trains_plain_cross_entropy_then_the_gambler_loss():
    cfg = load_config(overrides=["data.name=digits", "distill.method=ka_gambler", "distill.baselines=[]",
                                 "distill.ka.gambler_alpha=1", "distill.ka.pretrain_epochs=1"]).distill
    method = build_method("ka_gambler", cfg, None, _train_set(n=4, m=4))
    logits, y, yt = torch.randn(4, 5), torch.tensor([0, 1, 2, 3]), torch.randn(4, 4)
    ce, gamble = F.cross_entropy(logits[:, :4], y), gambler_loss(logits, y, method.payoff(4))
    assert not torch.allclose(ce, gamble)
    assert torch.allclose(method.loss(logits, None, y, yt), ce)  # epoch 0, training: warm-up
    with torch.no_grad():  # validation is always scored with the gambler loss
        assert torch.allclose(method.loss(logits, None, y, yt), gamble)
    method.epoch_end()
    assert torch.allclose(method.loss(logits, None, y, yt), gamble)


# --------------------------------------------------------------------------- end to end

SMALL_CLS = {
    "seed": 1,
    "data": {"name": "digits", "image_size": 8, "noise": {"label_noise": 0.2}},
    "teacher": {"backbone": "mlp", "hidden": [256, 256], "srl": {"enabled": True},
                "train": {"epochs": 25, "patience": 5, "lr": 0.002}},
    "student": {"backbone": "mlp", "hidden": [16]},
    "distill": {"method": "ka_gambler", "baselines": ["kd", "significance", "ds"], "ds": {"score": "influence"},
                "train": {"epochs": 30, "patience": 8}},
    "export": {"formats": ["onnx_fp32", "onnx_int8", "tflite_fp32"],
               "android": {"formats": ["onnx_fp32", "tflite_fp32"]}},
    "bench": {"targets": ["host"], "warmup": 2, "runs": 10},
}


def test_influence_score_is_the_damped_newton_influence_of_switching_label_to_teacher():
    """ds.score=influence by hand: autograd's Hessian of the mean training cross-entropy of the
    teacher's last layer W, autograd's validation gradient, and the change of a sample's gradient when
    its label is replaced by the teacher's distribution; rows the teacher gets wrong score lowest."""
    from pipeline.methods.label_revision import influence_scores

    rng = np.random.default_rng(0)
    n, d, m = 120, 3, 4
    w0 = torch.as_tensor(rng.normal(size=(m, d + 1)) * 2)
    feats = lambda a: torch.as_tensor(np.hstack([a, np.ones((len(a), 1))]))  # noqa: E731
    h, hv = feats(rng.normal(size=(n, d))), feats(rng.normal(size=(60, d)))
    logits, val_logits = (h @ w0.T).numpy(), (hv @ w0.T).numpy()
    y, yv = logits.argmax(1), val_logits.argmax(1)  # the labels are right

    def confuse(z, labels, rows):  # the teacher's one kind of mistake, on train and val rows alike
        z[rows] = np.roll(z[rows], 1, axis=1) + 3 * np.eye(m)[(labels[rows] + 2) % m]

    wrong = rng.choice(n, 15, replace=False)
    confuse(logits, y, wrong)
    confuse(val_logits, yv, rng.choice(60, 8, replace=False))
    scores, kind = influence_scores(h[:, :-1].numpy(), logits, y, hv[:, :-1].numpy(), val_logits, yv, damping=0.01)
    assert kind == "gauss-newton"

    # the teacher's logits as a linear layer W at W0 (an offset where the teacher is not W0's output)
    def ce(w, x, z, labels):
        return F.cross_entropy(x @ w.T + (torch.as_tensor(z) - x @ w0.T), torch.as_tensor(labels))

    hess = torch.autograd.functional.hessian(lambda w: ce(w, h, logits, y), w0).reshape(m * (d + 1), -1)
    hess += 0.01 * hess.diagonal().mean() * torch.eye(len(hess), dtype=torch.float64)
    g_val = torch.autograd.functional.jacobian(lambda w: ce(w, hv, val_logits, yv), w0).reshape(-1)
    p = torch.softmax(torch.as_tensor(logits), 1)
    delta = (F.one_hot(torch.as_tensor(y), m) - p)[:, :, None] * h[:, None, :]  # (e_y - p_t) h^T per row
    assert np.allclose(scores, (delta.reshape(n, -1) @ torch.linalg.solve(hess, g_val)).numpy(), rtol=1e-6,
                       atol=1e-9)
    # distilling the rows the teacher gets wrong is predicted to hurt the most
    assert len(set(np.argsort(scores)[:15].tolist()) & set(wrong.tolist())) >= 12
    assert scores[wrong].mean() < 5 * np.delete(scores, wrong).mean() < 0


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cls")
    (d / "cls.yaml").write_text(yaml.safe_dump(SMALL_CLS))
    proc = run_cli("run", "--config", d / "cls.yaml", "--out", d / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d / "run", proc


def test_classification_run_end_to_end(cls_run):
    run, proc = cls_run
    distill = json.loads((run / "distill.json").read_text())["methods"]
    teacher = json.loads((run / "teacher.json").read_text())
    assert teacher["loss"] == "cross_entropy" and teacher["test"]["accuracy"] > 0.8
    # SRL: the teacher back-propagated through fewer samples as it learned
    shares = teacher["srl"]["share_per_epoch"]
    assert shares[-1] < shares[0]
    assert set(distill) == {"ka_gambler", "kd", "significance", "ds"}
    # ds by influence: the teacher stage saved its penultimate features, the Hessian was solved exactly
    with np.load(run / "teacher_preds.npz") as z:
        assert z["features_train"].shape == (len(z["train"]), 256) and z["features_val"].shape[1] == 256
    assert distill["ds"]["ds_score"] == "influence" and distill["ds"]["influence_hessian"] == "gauss-newton"
    assert distill["ds"]["selected_share"] == pytest.approx(0.6, abs=0.01)
    for name, m in distill.items():
        assert m["test_label_head"]["accuracy"] > 0.5, name
    assert "risk_abstain" in distill["ka_gambler"]["test_label_head"]
    assert 0 < distill["significance"]["samples_used_share_mean"] <= 1
    assert "accuracy" in proc.stdout  # the closing table shows the task's metric


def test_exported_gambler_keeps_m_plus_1_outputs_and_matches_pytorch(cls_run):
    from device_bench.runner import load_model, predict_all
    from pipeline.data import Splits
    from pipeline.metrics import classification_metrics

    run, _ = cls_run
    exp = {r["format"]: r for r in json.loads((run / "export.json").read_text())["formats"] if r["model"] == "student"}
    assert exp["onnx_fp32"]["status"] == "ok" and exp["tflite_fp32"]["status"] == "ok"
    student = json.loads((run / "student.json").read_text())
    assert student["outputs"] == 11 and student["abstain_output"]
    splits = Splits.load(run / "data.npz")
    for fmt in ("onnx_fp32", "tflite_fp32", "onnx_int8"):
        out = predict_all(load_model(str(run / exp[fmt]["file"]), threads=1), splits.x["test"])
        assert out.shape == (len(splits.x["test"]), 11)
        m = classification_metrics(out, splits.y_clean["test"], abstain=True)
        assert m["accuracy"] == pytest.approx(exp[fmt]["accuracy"])
        assert set(m["risk_abstain"]) == {"100", "95", "90", "80", "70", "50"}
    assert exp["onnx_fp32"]["accuracy"] == pytest.approx(student["test"]["accuracy"])
    meta = json.loads((run / "android" / "metadata.json").read_text())
    assert meta["outputs"] == 11 and meta["abstain_output"] and "abstain" in meta["output_meaning"]
    bench = json.loads((run / "bench" / "host.json").read_text())["results"]
    row = next(r for r in bench if r["model"] == "student" and r["format"] == "onnx_fp32")
    assert row["accuracy"] == pytest.approx(exp["onnx_fp32"]["accuracy"]) and "risk_abstain" in row
    report = (run / "report.md").read_text()
    assert "Selective risk" in report and "abstain output (gambler)" in report


def test_influence_selection_with_an_onnx_teacher_is_one_config_line(tmp_path):
    """An ONNX teacher gives outputs, not penultimate features: asking for influence-based selection
    with one is refused when the config loads, naming the key and what to use instead."""
    from tests.conftest import tiny_onnx_model

    path, _, _ = tiny_onnx_model(tmp_path)
    sets = ["data.name=digits", "distill.method=kd", "distill.baselines=[lr_ds]", f"teacher.onnx={path}"]
    with pytest.raises(UserError, match=r"distill.ds.score: 'influence' needs .* teacher.onnx .* 'teacher_logp'"):
        load_config(None, [*sets, "distill.ds.score=influence"])
    assert load_config(None, sets).distill.ds.score == "teacher_logp"
