"""Input shapes: the [min, opt, max] ranges a recipe gives each input axis, and an input's spec.

Recipes, exporters, engine builders and the RMIR deploy on a target machine all read them, so they
live here rather than in the recipe schema (which a target machine never loads): this module
imports only pydantic, a core dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict


class DimRange(BaseModel):
    """[min, opt, max] for one dynamic dimension; they size ONNX axes and engine profiles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: int
    opt: int
    max: int


# Bounds far past any real model (a million-token context is 2**20) that still refuse at `recipe
# check` what the exporter would only fail on much later (a dimension of 1e26, a batch of 2**40).
MAX_DIM = 1 << 24
MAX_BATCH = 1 << 16  # Triton's max_batch_size is an int32, and no batch comes near this


def _dim_range(value: Any) -> Any:
    if isinstance(value, list):
        if len(value) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError("expected [min, opt, max] as three integers")
        lo, opt, hi = value
        if not 1 <= lo <= opt <= hi:
            raise ValueError(f"expected 1 <= min <= opt <= max, got {value}")
        if hi > MAX_DIM:
            raise ValueError(f"max {hi} is over {MAX_DIM}, beyond any model's dimension")
        return {"min": lo, "opt": opt, "max": hi}
    return value


Dims = dict[str, Annotated[DimRange, BeforeValidator(_dim_range)]]


@dataclass
class InputSpec:
    name: str
    dims: dict[str, DimRange]  # axis name -> [min, opt, max], in axis order
    dtype: str = "int64"  # token ids; speech features are float32
