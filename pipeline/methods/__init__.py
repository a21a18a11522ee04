"""Distillation methods: the registry ``METHODS`` and one module per family of methods.

A family module holds its methods' options classes (the ``distill.<key>`` config sections), their
loss terms and the method classes, each registered with ``@register("name")``. The config composes
``distill`` from the registered methods' options (``pipeline.config.distill``). Adding a method is one
module (or one class in a family's module), one import line below, and one test file.
"""

from pipeline.methods.base import (MAD_TO_SIGMA, METHODS, Method, TrainingSet, build_method, on_registry_change,
                                   option_sections, register, residual_norm, robust_scale, unregister)

# the families, in registration order (their options sections appear in docs/CONFIG.md in this order)
from pipeline.methods import baselines  # scratch, kd
from pipeline.methods import tor  # tor, tor_mt
from pipeline.methods import label_revision  # lr, ds, lr_ds
from pipeline.methods import knowledge_adjustment  # ka, ka_gambler
from pipeline.methods import self_regulation  # significance, regulated, hybrid
from pipeline.methods import gaussian  # gaussian

from pipeline.methods.tor import TORConfig, tor_loss, tor_threshold

__all__ = ["MAD_TO_SIGMA", "METHODS", "Method", "TORConfig", "TrainingSet", "baselines", "build_method", "gaussian",
           "knowledge_adjustment", "label_revision", "on_registry_change", "option_sections", "register",
           "residual_norm", "robust_scale", "self_regulation", "tor", "tor_loss", "tor_threshold", "unregister"]
