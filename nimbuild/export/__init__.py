"""Stage 2 of a compile: a source checkpoint to a reference fp32 ONNX, refused unless it matches the source.

One module per kind of model, each with `export(checkpoint, recipe, dest, reporter)`; the task
table (nimbuild.tasks) names which one a task uses. What they share (the exporter call, graph
checks, the record they return) is in reference.py, and the figures of a parity check in parity.py.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from nimbuild.errors import ExportError
from nimbuild.tasks import task

if TYPE_CHECKING:
    from nimbuild.export.reference import ReferenceExport
    from nimbuild.recipe import Recipe
    from nimbuild.util.progress import Reporter


def export_reference(checkpoint, recipe: Recipe, dest: Path, reporter: Reporter) -> ReferenceExport:
    """The reference graph(s) of the recipe's checkpoint, checked against the source."""
    from nimbuild.sources.nemo import NemoCheckpoint

    row = task(recipe.task)
    if (row.source == "nemo") != isinstance(checkpoint, NemoCheckpoint):  # the recipe schema refuses this first
        kind = "NeMo checkpoints (source.nemo)" if row.source == "nemo" else "Hugging Face checkpoints (source.hf)"
        raise ExportError(f"task {recipe.task} builds {kind}")
    exporter = importlib.import_module(f"nimbuild.export.{row.module}")
    return exporter.export(checkpoint, recipe, dest, reporter)
