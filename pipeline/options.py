"""The base of every options class, and the training-loop options shared by several sections.

Every section of the config (and every method's options, which live next to the method) derives from
``Strict``: unknown keys are errors and defaults are validated too. Light: pydantic only.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class TrainConfig(Strict):
    epochs: int = Field(300, ge=1, description="maximum epochs")
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="mini-batch size; auto: 128 up to 16k training rows, then doubling with the rows "
        "(128 x 2^floor(log2(rows / 8192))) up to 1024, so an epoch stays ~50-130 steps on big tables")
    max_steps: int | None = Field(
        6000, ge=1, description="at most this many optimizer steps (an epoch cap that scales with the data: "
        "the 2,000-row toy never reaches it); null: epochs alone")
    time_budget: float | None = Field(
        None, gt=0, description="stop after the epoch that passes this many seconds, keeping the best weights "
        "so far (wall time is not repeatable: a seeded run with a budget may stop at another epoch)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    patience: int = Field(30, ge=1, description="early stopping: epochs without validation improvement")


def batch_size_for(cfg: TrainConfig, rows: int) -> int:
    """The mini-batch size for ``rows`` training rows: the configured one, or the ``auto`` rule."""
    if cfg.batch_size != "auto":
        return int(cfg.batch_size)
    if rows < 16384:
        return 128
    return min(1024, 128 * 2 ** int(math.log2(rows / 8192)))
