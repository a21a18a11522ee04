"""Config section ``distill``: the deployed method, the baselines and every method's options."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.options import Strict, TrainConfig


class KDConfig(Strict):
    alpha: float = Field(
        0.5, ge=0, le=1,
        description="kd: alpha*MSE(s, y) + (1-alpha)*MSE(s, y_teacher); classification: alpha*CE + (1-alpha)*T^2*KL",
    )
    temperature: float = Field(4.0, gt=0, description="classification: softmax temperature T of Hinton KD")


class LRConfig(Strict):
    eta: float = Field(0.5, gt=0, lt=1, description="lr: beta = eta / (p_max - p_y + 1) mixes the teacher into the label")
    scale_k: float = Field(
        2.0, gt=0, description="regression lr: target weight exp(-|y_t - y| / (scale_k x MAD-scale of residuals))"
    )


class DSConfig(Strict):
    fraction: float = Field(
        0.6, gt=0, le=1, description="ds: fraction of training samples distilled (most reliable teacher); the rest: labels only"
    )


class KAConfig(Strict):
    alpha: float = Field(
        0.0, ge=0, le=1,
        description="ka: weight of cross-entropy on the labels beside the adjusted-teacher KD; 0 = the paper's rule "
        "(the student learns from the adjusted teacher alone, which already ranks the label first)",
    )
    payoff: float = Field(
        0.0, ge=0, description="ka_gambler: gambler payoff o in (1, m); 0 = automatic, (1 + m) / 2"
    )
    min_label_prob: float = Field(
        0.0, ge=0, lt=1,
        description="ka, ka_gambler: shift only where the teacher's (tempered) probability of the label is at least "
        "this; below it the label is more likely wrong than the teacher and the teacher is kept (0 = always shift, "
        "as in the paper)",
    )
    pretrain_epochs: int = Field(
        0, ge=0,
        description="ka_gambler: first epochs trained without the abstain option (cross-entropy over the m classes), "
        "as the deep gamblers reference code does, so the abstain output does not take over early",
    )


class SignificanceConfig(Strict):
    min_weight: float = Field(
        0.2, ge=0, lt=1, description="significance / hybrid: samples below this normalised significance are left out"
    )


class RegulatedConfig(Strict):
    tau: float = Field(0.9, gt=0, le=1, description="regulated / hybrid: the student skips samples it gets right with p_y >= tau")


class TORConfig(Strict):
    mode: Literal["reject", "substitute"] = Field(
        "reject", description="outliers: leave out of the label loss (reject) or use y_teacher as target (substitute)"
    )
    delta_rule: Literal["absolute", "mad"] = Field(
        "mad", description="outlier threshold: a fixed delta, or k x MAD-scale of the residuals y - y_teacher"
    )
    delta: float = Field(0.5, gt=0, description="threshold for delta_rule=absolute")
    k: float = Field(2.0, gt=0, description="multiplier for delta_rule=mad (delta = k * 1.4826 * MAD)")


class TORMTConfig(Strict):
    label_weight: float = Field(1.0, ge=0, description="weight of the TOR loss on the label head")
    teacher_weight: float = Field(0.5, ge=0, description="weight of MSE(teacher head, y_teacher)")


class DistillConfig(Strict):
    method: str = Field("tor_mt", description="method of the deployed student (registry: pipeline.methods.METHODS)")
    baselines: list[str] = Field(
        ["scratch", "kd"], description="extra students trained on the same data for comparison in the report"
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    kd: KDConfig = Field(default_factory=KDConfig)
    tor: TORConfig = Field(default_factory=TORConfig)
    tor_mt: TORMTConfig = Field(default_factory=TORMTConfig)
    lr: LRConfig = Field(default_factory=LRConfig)
    ds: DSConfig = Field(default_factory=DSConfig)
    ka: KAConfig = Field(default_factory=KAConfig)
    significance: SignificanceConfig = Field(default_factory=SignificanceConfig)
    regulated: RegulatedConfig = Field(default_factory=RegulatedConfig)

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        _check_method(name)
        return name

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, names: list[str]) -> list[str]:
        for name in names:
            _check_method(name)
        return names


def _check_method(name: str) -> None:
    from pipeline.methods import METHODS

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(sorted(METHODS))}")
