"""The recipe "adding a method = one module + one registry line + one test file", followed once.

This file is the module and the test file: a test-only method with its own options section, registered
through the same ``register`` the built-in methods use (in a fixture instead of an import line in
``pipeline/methods/__init__.py``, so the registry is left as it was). The config then accepts the
method and its section, and a real student is distilled with it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import Field

from pipeline.config import config_reference, load_config
from pipeline.data import make_dataset
from pipeline.errors import UserError
from pipeline.methods import METHODS, Method, build_method, option_sections, register, unregister
from pipeline.methods.baselines import KDConfig
from pipeline.methods.tor import TORConfig, TORMTConfig
from pipeline.options import Strict
from pipeline.stages.distill import train_student
from pipeline.stages.teacher import train_teacher
from pipeline.train import predict


class BlendConfig(Strict):
    teacher_share: float = Field(0.5, ge=0, le=1, description="blend: weight of MSE(student, y_teacher)")


class Blend(Method):
    """(1 - s) * MSE(student, y) + s * MSE(student, y_teacher), s = ``distill.blend.teacher_share``."""

    options = {"blend": BlendConfig}
    blend: BlendConfig

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        s = self.blend.teacher_share
        return (1 - s) * F.mse_loss(label_out, y) + s * F.mse_loss(label_out, y_teacher)

    def describe(self):
        return {**super().describe(), "teacher_share": self.blend.teacher_share}


@pytest.fixture
def blend():
    register("blend")(Blend)
    try:
        yield Blend
    finally:
        unregister("blend")


TINY = ["data.n_train=200", "data.n_val=60", "data.n_test=100", "teacher.hidden=[32, 32]", "teacher.train.epochs=30",
        "teacher.train.lr=0.003", "student.hidden=[8]", "distill.train.epochs=20", "distill.baselines=[]"]


def test_the_config_accepts_a_registered_method_and_its_options_section(blend):
    cfg = load_config(None, ["distill.method=blend", "distill.blend.teacher_share=0.8"])
    assert cfg.distill.method == "blend" and cfg.distill.blend.teacher_share == 0.8
    assert cfg.to_dict()["distill"]["blend"] == {"teacher_share": 0.8}  # in config.yaml and the cache hash
    assert load_config(None, ["distill.method=blend"]).distill.blend.teacher_share == 0.5  # the default
    assert "| `distill.blend.teacher_share` | float | `0.5` |" in config_reference()
    with pytest.raises(UserError, match=r"distill\.blend\.teacher_share.*less than or equal to 1"):
        load_config(None, ["distill.blend.teacher_share=2"])
    with pytest.raises(UserError, match=r"unknown key 'distill\.blend\.share'; allowed keys here: teacher_share"):
        load_config(None, ["distill.blend.share=0.2"])
    method = build_method("blend", cfg.distill)
    assert method.blend.teacher_share == 0.8 and method.describe()["teacher_share"] == 0.8


def test_a_registered_method_distils_a_real_student(blend):
    cfg = load_config(None, TINY + ["distill.method=blend", "distill.blend.teacher_share=0.5"])
    splits = make_dataset(cfg.data, cfg.seed)
    _, _, yt, _ = train_teacher(cfg, splits)
    student, hist, method = train_student(cfg, splits, yt, "blend")
    assert method.describe() == {"method": "blend", "teacher_share": 0.5}
    assert hist.best_val < hist.val_loss[0]  # it learned
    pred = predict(student, splits.x["test"])
    # with teacher_share 0.5 the loss is kd's with alpha 0.5, operation for operation: the same student
    kd_student, _, _ = train_student(cfg, splits, yt, "kd")
    assert np.array_equal(pred, predict(kd_student, splits.x["test"]))
    other = load_config(None, TINY + ["distill.method=blend", "distill.blend.teacher_share=1.0"])
    teacher_only, _, _ = train_student(other, splits, yt, "blend")
    assert not np.array_equal(pred, predict(teacher_only, splits.x["test"]))  # the option reaches the loss


def test_unregister_leaves_the_registry_and_the_config_as_they_were():
    before, reference = dict(METHODS), config_reference()
    register("blend")(Blend)
    unregister("blend")
    assert METHODS == before and "blend" not in option_sections()
    assert config_reference() == reference
    with pytest.raises(UserError, match="unknown method 'blend'"):
        load_config(None, ["distill.method=blend"])
    with pytest.raises(UserError, match=r"unknown key 'distill\.blend'"):
        load_config(None, ["distill.blend.teacher_share=0.5"])


@pytest.mark.parametrize("section, cls, message", [
    ("kd", BlendConfig, "options section 'kd' is KDConfig elsewhere"),  # one class per section
    ("train", BlendConfig, "would hide the key distill.train"),
    ("loss", BlendConfig, "not usable as an attribute"),
    ("blend", dict, "must be a pipeline.options.Strict class"),
])
def test_a_bad_options_section_is_refused_and_leaves_the_registry_unchanged(section, cls, message):
    bad = type("Bad", (Method,), {"options": {section: cls}})
    before = dict(METHODS)
    with pytest.raises((TypeError, ValueError), match=message):
        register("bad")(bad)
    assert METHODS == before
    assert load_config().distill.kd == KDConfig()


def test_build_method_takes_only_the_sections_a_method_declares():
    tor = TORConfig(delta_rule="absolute", delta=0.5)
    method = build_method("tor_mt", {"tor": tor})  # a mapping may leave sections out: their defaults
    assert method.tor is tor and method.tor_mt == TORMTConfig() and not hasattr(method, "kd")
    with pytest.raises(TypeError, match="needs options section 'tor' as TORConfig"):
        METHODS["tor"]({"tor": KDConfig()})
    # label head: MSE 1 (no outlier), teacher head: 0.5 x MSE 1
    assert float(method.loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.ones(2, 1), torch.ones(2, 1))) == 1.5
