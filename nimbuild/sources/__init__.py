"""Source checkpoints: where a recipe's weights come from."""

from __future__ import annotations

from nimbuild.errors import SourceError
from nimbuild.recipe import Recipe
from nimbuild.sources.hf import HFCheckpoint, resolve_hf


def resolve_source(recipe: Recipe) -> HFCheckpoint:
    if recipe.source.hf is not None:
        return resolve_hf(recipe.source.hf, recipe.base_dir)
    raise SourceError("NeMo sources (source.nemo) are not supported by this version of nimbuild yet")
