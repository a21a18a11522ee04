"""Deployment rewrites: hard-sigmoid / hard-swish as ReLU6 arithmetic keep the function and the keys."""

import torch

from models import build_backbone
from models.deploy import HardSigmoidReLU6, HardSwishReLU6, mobile_friendly
from models.heads import TwoHeadStudent


def test_relu6_forms_equal_torch_hard_functions():
    x = torch.linspace(-8, 8, 20001)
    torch.testing.assert_close(HardSigmoidReLU6()(x), torch.nn.functional.hardsigmoid(x), atol=1e-7, rtol=0)
    torch.testing.assert_close(HardSwishReLU6()(x), torch.nn.functional.hardswish(x), atol=1e-6, rtol=0)


def test_mobilenet_v3_rewritten_same_outputs_and_keys():
    torch.manual_seed(0)
    model = TwoHeadStudent(build_backbone("mobilenet_v3_small", (3, 32, 32), [], width_mult=0.25), 2).eval()
    out = mobile_friendly(model)
    assert out is not model
    assert not any(isinstance(m, (torch.nn.Hardswish, torch.nn.Hardsigmoid)) for m in out.modules())
    assert sum(isinstance(m, (HardSwishReLU6, HardSigmoidReLU6)) for m in out.modules()) > 10
    assert list(out.state_dict()) == list(model.state_dict())
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(out(x), model(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert any(isinstance(m, torch.nn.Hardswish) for m in model.modules())  # the original is untouched


def test_models_without_hard_activations_are_returned_as_they_are():
    mlp = TwoHeadStudent(build_backbone("mlp", (1,), [8]), 1)
    assert mobile_friendly(mlp) is mlp
