"""Models: sizes, the two-head student and drop_teacher_head."""

import pytest
import torch

from models import TwoHeadStudent, build_backbone, count_parameters, drop_teacher_head
from pipeline.config import load_config
from pipeline.checkpoints import build_student, build_teacher
from pipeline.preflight import check_model_sizes


def test_default_sizes_meet_the_brief():
    cfg = load_config()
    sizes = check_model_sizes(cfg)
    assert sizes["teacher_params"] >= 100_000
    assert sizes["student_params"] <= sizes["teacher_params"] / 20
    assert sizes["deployed_params"] < sizes["student_params"]


@pytest.mark.parametrize("keep, index", [("label", 0), ("teacher", 1)])
def test_drop_teacher_head_keeps_one_output_and_matches_the_head(keep, index):
    torch.manual_seed(0)
    student = TwoHeadStudent(build_backbone("mlp", (3,), [16, 8]), out_features=2)
    x = torch.randn(64, 3)
    deployed = drop_teacher_head(student, keep)
    out = deployed(x)
    assert isinstance(out, torch.Tensor) and out.shape == (64, 2)
    torch.testing.assert_close(out, student(x)[index], rtol=0, atol=0)
    # a copy: training the student further does not move the deployed model
    with torch.no_grad():
        student.backbone.net[0].weight.add_(1.0)
    torch.testing.assert_close(deployed(x), out)
    assert count_parameters(deployed) == count_parameters(student) - (8 * 2 + 2)


def test_drop_teacher_head_rejects_unknown_head():
    with pytest.raises(ValueError, match="keep must be one of"):
        drop_teacher_head(TwoHeadStudent(build_backbone("mlp", (1,), [4])), "both")


def test_builders_follow_the_config():
    cfg = load_config(None, ["teacher.hidden=[10, 20]", "student.hidden=[3]"])
    t = build_teacher(cfg, (2,), 1)
    s = build_student(cfg, (2,), 1)
    assert count_parameters(t) == (2 * 10 + 10) + (10 * 20 + 20) + (20 + 1)
    assert count_parameters(s) == (2 * 3 + 3) + 2 * (3 + 1)


def test_cnn_backbone_shapes_and_a_cnn_on_vectors_is_refused():
    from models import CNN

    cnn = CNN((1, 16, 16), [32], channels=[8, 16])
    assert cnn(torch.zeros(5, 1, 16, 16)).shape == (5, 32)
    with pytest.raises(ValueError, match="needs \\(C, H, W\\) inputs"):
        CNN((1,), [4])
    cfg = load_config(None, ["student.backbone=cnn"])
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="does not fit data 'sinusoid'"):
        check_model_sizes(cfg)
