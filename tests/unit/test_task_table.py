"""The task table (nimbuild.tasks) is the one place that lists tasks: each row's parts exist and fit."""

import importlib
import inspect

import pytest

from helpers.paths import REPO
from nimbuild.tasks import TASKS, task, task_for_architectures, task_for_nemo_class
from runtime_min.tasks import RivaTaskHooks, TaskHooks


@pytest.mark.parametrize("row", TASKS, ids=[t.id for t in TASKS])
def test_each_row_names_an_exporter_a_target_rule_and_a_runtime_folder_that_exist(row):
    from nimbuild.compile import _TAG_RULES

    exporter = importlib.import_module(f"nimbuild.export.{row.module}")
    assert list(inspect.signature(exporter.export).parameters) == ["checkpoint", "recipe", "dest", "reporter"]
    assert row.targets in _TAG_RULES
    runtime = importlib.import_module(f"runtime_min.tasks.{row.module}")
    for hook in [n for n in dir(TaskHooks) if not n.startswith("_")]:
        assert callable(getattr(runtime, hook, None)), f"runtime_min.tasks.{row.module} lacks {hook}"
    riva_hooks = [n for n in dir(RivaTaskHooks) if not n.startswith("_") and not hasattr(TaskHooks, n)]
    assert riva_hooks == ["add_servicers"]
    assert all(callable(getattr(runtime, hook, None)) == row.riva for hook in riva_hooks)
    assert row.source in ("hf", "nemo") and row.takes


def test_checkpoints_are_matched_to_tasks_by_architecture_or_nemo_class():
    assert task_for_architectures(["Qwen2ForCausalLM"]).id == "text-generation"
    assert task_for_architectures(["BertModel"]).id == "embedding"
    assert task_for_architectures(["MarianMTModel"]).id == "translation"
    assert task_for_architectures(["BertForSequenceClassification"]).id == "ranking"
    assert task_for_architectures(["BertForTokenClassification"]) is None
    assert task_for_nemo_class("EncDecRNNTBPEModel").id == "asr-rnnt"
    assert task_for_nemo_class("HifiGanModel") is None, "a vocoder is a tts recipe's part, not a task"


def test_an_unknown_task_is_named_with_those_there_are():
    from nimbuild.errors import NimbuildError

    with pytest.raises(NimbuildError, match="unknown task 'ocr'; nimbuild knows embedding, ranking, text-generation"):
        task("ocr")


def test_every_example_recipe_is_a_row_of_the_table():
    from nimbuild.recipe import load_recipe

    recipes = sorted(REPO.glob("examples/*/recipe.yaml"))
    assert {load_recipe(r).task for r in recipes} == {t.id for t in TASKS}
