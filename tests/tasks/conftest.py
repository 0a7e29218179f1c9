"""Fixtures the task tests share: each example compiled (and served) once per test session, so
the text-generation tests and the LLM API tests use one build and one server."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.paths import REPO
from helpers.recipes import compiled


@pytest.fixture(scope="session")
def llm_compiled(tmp_path_factory) -> Path:
    return compiled(tmp_path_factory, REPO / "examples" / "tiny-llama" / "recipe.yaml")


@pytest.fixture(scope="session")
def llm_runtime(llm_compiled, tmp_path_factory):
    from helpers.runtime import Runtime

    served = Runtime(llm_compiled / "profiles.yaml", tmp_path_factory.mktemp("llm-cache"))
    served.wait_ready()
    yield served
    assert served.stop() == 0
