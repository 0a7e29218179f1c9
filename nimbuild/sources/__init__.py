"""Source checkpoints: where a recipe's weights come from."""

from __future__ import annotations

from nimbuild.recipe import Recipe
from nimbuild.sources.hf import HFCheckpoint, resolve_hf
from nimbuild.sources.nemo import NemoCheckpoint, resolve_nemo

Checkpoint = HFCheckpoint | NemoCheckpoint


def resolve_source(recipe: Recipe) -> Checkpoint:
    if recipe.source.hf is not None:
        return resolve_hf(recipe.source.hf, recipe.base_dir)
    return resolve_nemo(recipe.source.nemo, recipe.base_dir)
