"""The reference architectures (models/resnet.py, mobilenet.py, efficientnet.py): torchvision's
published parameter counts and state-dict key names, local weight files, any input size and channel
count, the two-head student and head drop on top of them, and an ONNX export with batch norm folded."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models import ARCHITECTURES, BACKBONES, ImageBackbone, TwoHeadStudent, build_backbone, count_parameters, \
    drop_teacher_head
from models.blocks import StochasticDepth, _make_divisible
from models.pretrained import load_torchvision_weights

torch.set_num_threads(1)

# torchvision's published figures (the weights' meta["num_params"]), 1000 classes, 3 channels, width 1.0
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
    "efficientnet_b0": 5_288_548,
}

# key -> shape, written from torchvision's definitions (resnet.py, mobilenetv2.py, mobilenetv3.py,
# efficientnet.py, ops/misc.py), 1000 classes, 3 channels, width 1.0
TORCHVISION_KEYS = {
    "resnet18": {"conv1.weight": (64, 3, 7, 7), "bn1.running_mean": (64,), "layer1.0.conv1.weight": (64, 64, 3, 3),
                 "layer2.0.downsample.0.weight": (128, 64, 1, 1), "layer2.0.downsample.1.running_var": (128,),
                 "layer4.1.bn2.running_var": (512,), "bn1.num_batches_tracked": (), "fc.weight": (1000, 512)},
    "resnet34": {"layer3.5.conv2.weight": (256, 256, 3, 3), "layer4.2.bn2.bias": (512,), "fc.bias": (1000,)},
    "resnet50": {"layer1.0.conv3.weight": (256, 64, 1, 1), "layer1.0.downsample.0.weight": (256, 64, 1, 1),
                 "layer4.2.bn3.running_mean": (2048,), "fc.weight": (1000, 2048)},
    "mobilenet_v2": {"features.0.0.weight": (32, 3, 3, 3), "features.0.1.running_var": (32,),
                     "features.1.conv.0.0.weight": (32, 1, 3, 3), "features.1.conv.1.weight": (16, 32, 1, 1),
                     "features.1.conv.2.running_mean": (16,), "features.2.conv.0.0.weight": (96, 16, 1, 1),
                     "features.2.conv.3.weight": (24,), "features.18.0.weight": (1280, 320, 1, 1),
                     "classifier.1.weight": (1000, 1280)},
    "mobilenet_v3_large": {"features.0.0.weight": (16, 3, 3, 3), "features.1.block.0.0.weight": (16, 1, 3, 3),
                           "features.4.block.2.fc1.weight": (24, 72, 1, 1), "features.4.block.3.1.bias": (40,),
                           "features.16.0.weight": (960, 160, 1, 1), "classifier.0.weight": (1280, 960),
                           "classifier.3.weight": (1000, 1280)},
    "mobilenet_v3_small": {"features.1.block.0.0.weight": (16, 1, 3, 3),
                           "features.1.block.1.fc1.weight": (8, 16, 1, 1),
                           "features.1.block.1.fc2.bias": (16,), "features.1.block.2.0.weight": (16, 16, 1, 1),
                           "features.12.0.weight": (576, 96, 1, 1), "classifier.0.weight": (1024, 576),
                           "classifier.3.bias": (1000,)},
    "efficientnet_b0": {"features.0.0.weight": (32, 3, 3, 3), "features.1.0.block.0.0.weight": (32, 1, 3, 3),
                        "features.1.0.block.1.fc1.weight": (8, 32, 1, 1),
                        "features.2.0.block.0.0.weight": (96, 16, 1, 1),
                        "features.2.0.block.2.fc2.bias": (96,), "features.6.3.block.3.1.running_var": (192,),
                        "features.8.0.weight": (1280, 320, 1, 1), "classifier.1.weight": (1000, 1280)},
}

TINY = 0.25  # width used wherever the test is about behaviour rather than torchvision's figures


def _randomise_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics and affine parameters, so folding them is really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return model


@pytest.mark.parametrize("arch", list(TORCHVISION_PARAMS))
def test_parameter_count_and_key_names_match_torchvision(arch):
    model = ARCHITECTURES[arch]()
    assert count_parameters(model) == TORCHVISION_PARAMS[arch]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in TORCHVISION_KEYS[arch].items():
        assert shapes.get(key) == shape, (arch, key, shapes.get(key))


def test_make_divisible_and_mobilenet_v3_hyperparameters():
    assert [_make_divisible(v, 8) for v in (16 * 0.25, 72 * 0.25, 100, 10, 91 * 0.35)] == [8, 24, 104, 16, 32]
    model = ARCHITECTURES["mobilenet_v3_small"]()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 0.001 and m.momentum == 0.01 for m in bns)
    # as a pocketkd backbone it trains with momentum 0.1 (few steps an epoch), eps kept
    from models.backbones import ImageBackbone

    pk = [m for m in ImageBackbone("mobilenet_v3_small", (1, 32, 32)).modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(pk) == len(bns) and all(m.eps == 0.001 and m.momentum == 0.1 for m in pk)
    names = Counter(type(m).__name__ for m in model.modules())
    assert names["Hardswish"] > 0 and names["Hardsigmoid"] == 9  # one per SE block (9 of the 11 bnecks)
    eff = ARCHITECTURES["efficientnet_b0"]()
    assert sum(isinstance(m, StochasticDepth) for m in eff.modules()) == 16
    assert max(m.p for m in eff.modules() if isinstance(m, StochasticDepth)) == pytest.approx(0.2 * 15 / 16)


def test_state_dict_round_trip_strict(tmp_path):
    model = _randomise_batch_norm(ARCHITECTURES["mobilenet_v3_small"]())
    path = tmp_path / "mnv3s.pth"
    torch.save(model.state_dict(), path)
    fresh = ARCHITECTURES["mobilenet_v3_small"]()
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    # the constructors take the same file as weights=
    again = ARCHITECTURES["mobilenet_v3_small"](weights=path)
    assert torch.equal(again.state_dict()["features.12.1.running_var"], model.state_dict()["features.12.1.running_var"])


def test_partial_load_names_the_skipped_keys(tmp_path, caplog):
    model = _randomise_batch_norm(ARCHITECTURES["mobilenet_v3_small"](width_mult=TINY))
    path = tmp_path / "mnv3s.pth"
    torch.save(model.state_dict(), path)

    ten = ARCHITECTURES["mobilenet_v3_small"](num_classes=10, width_mult=TINY)
    with caplog.at_level("WARNING"):
        report = load_torchvision_weights(ten, path)
    assert report["skipped"] == ["classifier.3.weight", "classifier.3.bias"]
    assert report["missing"] == ["classifier.3.weight", "classifier.3.bias"]
    assert "classifier.3.weight" in caplog.text
    assert torch.equal(ten.state_dict()["classifier.0.weight"], model.state_dict()["classifier.0.weight"])

    # into a pocketkd student: the keys sit under backbone.net., the classifier is gone, heads stay new
    student = TwoHeadStudent(build_backbone("mobilenet_v3_small", (3, 32, 32), [], width_mult=TINY), 2)
    report = load_torchvision_weights(student, path)
    assert report["skipped"] == ["classifier.0.weight", "classifier.0.bias", "classifier.3.weight",
                                 "classifier.3.bias"]
    assert set(report["missing"]) == {"label_head.weight", "label_head.bias", "teacher_head.weight",
                                      "teacher_head.bias"}
    assert torch.equal(student.backbone.net.features[0][1].running_mean, model.features[0][1].running_mean)


def test_hub_weight_names_are_refused_with_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="never downloads.*local"):
        ARCHITECTURES["resnet18"](weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="never downloads.*local"):
        load_torchvision_weights(nn.Linear(1, 1), "DEFAULT")
    with pytest.raises(ValueError, match="never downloads"):
        ARCHITECTURES["mobilenet_v2"](weights=tmp_path / "missing.pth")


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_forward_shapes_channels_sizes_and_eval_determinism(arch):
    torch.manual_seed(0)
    for channels in (1, 3):
        model = ARCHITECTURES[arch](num_classes=5, in_channels=channels, width_mult=TINY).eval()
        for size in (32, 64):
            x = torch.randn(2, channels, size, size)
            with torch.no_grad():
                out, again = model(x), model(x)
            assert out.shape == (2, 5)
            assert torch.equal(out, again)
            assert torch.isfinite(out).all()
    features = ARCHITECTURES[arch](num_classes=0, in_channels=1, width_mult=TINY).eval()
    assert count_parameters(features) < count_parameters(ARCHITECTURES[arch](num_classes=5, in_channels=1,
                                                                               width_mult=TINY))
    assert features(torch.randn(2, 1, 40, 48)).shape == (2, features.num_features)


def test_stochastic_depth_is_a_no_op_in_eval_only():
    torch.manual_seed(0)
    layer = StochasticDepth(0.5)
    x = torch.ones(64, 3, 2, 2)
    assert torch.equal(layer.eval()(x), x)
    dropped = layer.train()(x)
    per_sample = dropped.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()  # whole samples ("row" mode)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_registry_two_heads_and_head_drop(arch):
    torch.manual_seed(0)
    assert arch in BACKBONES
    backbone = build_backbone(arch, (1, 32, 32), [16], "relu", width_mult=TINY)
    assert isinstance(backbone, ImageBackbone) and backbone.out_features == 16
    plain = build_backbone(arch, (3, 32, 32), [], width_mult=TINY)
    assert plain.out_features == plain.net.num_features
    assert not any(k.startswith(("net.fc", "net.classifier")) for k in plain.state_dict())
    student = TwoHeadStudent(backbone, out_features=2).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        label, teacher = student(x)
        single = drop_teacher_head(student)(x)
    assert label.shape == teacher.shape == single.shape == (3, 2)
    assert torch.allclose(single, label, atol=1e-6)
    assert not torch.allclose(label, teacher)


def test_build_backbone_keeps_its_old_signature():
    assert build_backbone("mlp", (4,), [8], "relu").out_features == 8
    assert build_backbone("cnn", (1, 16, 16), [8], "relu", (4,)).out_features == 8
    wide = build_backbone("mobilenet_v3_small", (1, 32, 32), [], "relu", width_mult=1.0)
    narrow = build_backbone("mobilenet_v3_small", (1, 32, 32), [], "relu", width_mult=0.5)
    assert count_parameters(narrow) < count_parameters(wide)
    with pytest.raises(ValueError, match="needs \\(C, H, W\\)"):
        build_backbone("resnet18", (32, 32), [])


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 3])
def test_onnx_export_folds_batch_norm_and_runs_hard_swish_and_se(tmp_path, channels):
    """mobilenet_v3_small at width 0.25, head dropped: no BatchNormalization node in the exported
    file, HardSwish / SE (HardSigmoid, Mul) present and run by ONNX Runtime, parity within 1e-4."""
    import onnx
    import onnxruntime as ort

    from export.onnx_export import export_onnx

    torch.manual_seed(channels)
    student = TwoHeadStudent(build_backbone("mobilenet_v3_small", (channels, 32, 32), [], width_mult=TINY), 2)
    _randomise_batch_norm(student, seed=channels)
    nn.init.normal_(student.label_head.weight, 0.0, 1.0)  # outputs of order 1, so 1e-4 is a real bound
    deployed = drop_teacher_head(student)
    path = export_onnx(deployed, tmp_path / "mnv3s.onnx", (channels, 32, 32))
    ops = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    assert ops["BatchNormalization"] == 0, ops
    assert ops["HardSwish"] > 0 and ops["HardSigmoid"] > 0 and ops["Conv"] > 0, ops
    x = np.random.default_rng(channels).standard_normal((4, channels, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    with torch.no_grad():
        want = deployed(torch.from_numpy(x)).numpy()
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_models_do_not_import_pipeline():
    code = ("import sys, models, models.pretrained; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pipeline', 'export', 'torchvision')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
