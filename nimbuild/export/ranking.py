"""Cross-encoders (rerankers: BERT, XLM-R, DeBERTa-v2, ModernBERT `*ForSequenceClassification` with
one label) to one ONNX graph: a query-passage pair's token ids in, its relevance logit out. The
export and its parity check are the encoder path's (nimbuild.export.embedding), with the model's
classifier head kept and pairs as inputs (token type 1 over the passage)."""

from __future__ import annotations

from pathlib import Path

from nimbuild.export import embedding
from nimbuild.export.adapters import ranking_labels
from nimbuild.export.reference import ReferenceExport, Starter
from nimbuild.recipe import Recipe
from nimbuild.sources.hf import HFCheckpoint
from nimbuild.util.progress import Reporter


def export(checkpoint: HFCheckpoint, recipe: Recipe, dest: Path, reporter: Reporter) -> ReferenceExport:
    return embedding.export(checkpoint, recipe, dest, reporter)


def unproved(checkpoint: HFCheckpoint) -> str | None:
    """Why `recipe init` does not take this sequence classifier as a reranker: it has more than one
    label (a classifier of categories, not a relevance score)."""
    labels = ranking_labels(checkpoint.config)
    if labels != 1:
        return (f"it is a sequence classifier with {labels} labels; a reranker has one (a relevance score), and no "
                "task here serves classes: --task embedding builds the encoder beneath it as sentence embeddings")
    return None


def starter(checkpoint: HFCheckpoint) -> Starter:
    """Pairs of up to 512 tokens (or the model's position limit), batches of up to 64 (one request's
    passages go to the model as one batch)."""
    started = embedding.starter(checkpoint)
    started.inputs_note = started.inputs_note.replace("tokens per sentence", "tokens per query-passage pair")
    return started


def explains(checkpoint: HFCheckpoint) -> str:
    """Why recipe init chose ranking, in the recipe's header."""
    return "a cross-encoder with one label, served as a reranker (a relevance logit per query-passage pair)"
