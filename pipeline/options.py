"""The base of every options class, and the training-loop options shared by several sections.

Every section of the config (and every method's options, which live next to the method) derives from
``Strict``: unknown keys are errors and defaults are validated too. Light: pydantic only.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class TrainConfig(Strict):
    epochs: int = Field(300, ge=1, description="maximum epochs")
    batch_size: int = Field(128, ge=1, description="mini-batch size")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    patience: int = Field(30, ge=1, description="early stopping: epochs without validation improvement")
