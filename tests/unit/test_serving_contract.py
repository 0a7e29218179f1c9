"""nimbuild.serving's contract (its __init__): code that runs in the build's gates and, copied whole,
inside Triton's Python models and runtime_min's front ends. It imports at its top only the standard
library, numpy and itself; inside functions, only what the `serve` extra installs. And every file
of it is in the profiles' build key, as is everything else a compile runs that shapes a profile."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.imports import ROOT, import_graph, reachable

SERVING = ROOT / "nimbuild" / "serving"
MODULES = sorted(p.stem for p in SERVING.glob("*.py") if p.stem != "__init__")
# what a Triton Python model's interpreter and runtime_min's front ends have (the `serve` extra)
# tokenizers: the Whisper Triton model has loaded it in its Python backend since it was added
LAZY_ALLOWED = {"numpy", "scipy", "soundfile", "sentencepiece", "text_unidecode", "llguidance", "safetensors", "tokenizers"}
# What a compile runs that does not shape a profile's bytes, and why
NOT_SHAPING = {
    "nimbuild": "its __version__ enters the build key on its own",
    "nimbuild.errors": "messages",
    "nimbuild.util.progress": "messages",
    "nimbuild.util.memory": "what a compile step cost (compile-record.json, beside the manifest)",
    "nimbuild.util.files": "hashes and atomic writes of bytes made elsewhere",
    "nimbuild.matrix.cells": "which CI cell builds a variant",
    "nimbuild.profiles.builders": "whether this machine can build a variant (a skip, not different bytes)",
    "nimbuild.profiles.gpus": "the same",
    "nimbuild.profiles.system": "the same",
    "nimbuild.profiles.index": "the listing index beside the manifest, not a profile",
}


def test_the_serving_package_holds_the_code_triton_runs():
    assert {"pooling", "audio", "transducer", "generation", "seq2seq", "griffin_lim", "tts_text",
            "translation_text"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_a_serving_module_imports_only_the_standard_library_numpy_and_itself(module):
    # numpy first: what it loads itself (its C extensions' helpers) is numpy's business
    probe = (f"import sys, numpy\nbefore = set(sys.modules)\nimport nimbuild.serving.{module}\n"
             "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    loaded = set(ast.literal_eval(result.stdout.strip().splitlines()[-1]))
    extra = loaded - set(sys.stdlib_module_names) - {"nimbuild"}
    assert extra == set(), f"nimbuild.serving.{module} loads {sorted(extra)} on import"
    nimbuild_modules = subprocess.run(
        [sys.executable, "-c", f"import sys, nimbuild.serving.{module}\n"
                               "print(sorted(m for m in sys.modules if m.startswith('nimbuild')))"],
        capture_output=True, text=True, timeout=60, cwd=ROOT).stdout
    assert all(m == "nimbuild" or m.startswith("nimbuild.serving") for m in ast.literal_eval(nimbuild_modules))


@pytest.mark.parametrize("module", MODULES)
def test_what_a_serving_module_imports_inside_functions_is_installed_where_it_serves(module):
    tree = ast.parse((SERVING / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module)
    tops = {n.split(".")[0] for n in names} - set(sys.stdlib_module_names)
    assert tops - {"nimbuild"} <= LAZY_ALLOWED, f"nimbuild.serving.{module} imports {sorted(tops - LAZY_ALLOWED)}"
    assert all(n == "nimbuild" or n.startswith("nimbuild.serving") for n in names if n.startswith("nimbuild"))


def test_every_serving_file_is_in_the_build_key():
    from nimbuild.compile import shaping_files

    hashed = set(shaping_files())
    assert {p.resolve() for p in SERVING.glob("*.py")} <= hashed
    assert (SERVING / "tts_text.py").resolve() in hashed and (SERVING / "translation_text.py").resolve() in hashed


def test_everything_a_compile_can_run_is_in_the_build_key_or_named_as_not_shaping():
    """The list cannot drift again: a module the compile reaches (lazy imports included) is hashed
    into every profile's build key, or named above with the reason it shapes nothing."""
    from nimbuild.compile import shaping_files

    hashed = {p.resolve() for p in shaping_files()}
    graph = import_graph()
    unkeyed = []
    for name in sorted(reachable(graph, ["nimbuild.compile"])):
        path = ROOT / Path(*name.split("."))
        files = {(path / "__init__.py").resolve(), path.with_suffix(".py").resolve()}
        if not files & hashed and name not in NOT_SHAPING:
            unkeyed.append(name)
    assert unkeyed == []
