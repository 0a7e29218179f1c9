"""`nimbuild compile`: profiles and manifest on disk, reproducibility, skip-on-unchanged, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from helpers.paths import REPO, VENV_BIN
from helpers.processes import modules_loaded_by
from helpers.recipes import recipe_text
from nimbuild.cli import main
from nimbuild.profiles.manifest import load_manifest


def _compile(recipe, out, *extra):
    result = CliRunner().invoke(main, ["compile", str(recipe), "--out", str(out), *extra])
    return result


def test_compile_writes_workspace_and_manifest(write_recipe, tmp_path, tiny_bert_dir):
    out = tmp_path / "out"
    result = _compile(write_recipe(recipe_text(str(tiny_bert_dir))), out, "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    manifest = load_manifest(out / "profiles.yaml")
    (profile,) = manifest.profiles
    assert report["built"] == [profile.id] and report["unchanged"] == []
    assert profile.description == "onnxruntime-fp32-latency"
    assert profile.tags == {"backend": "onnxruntime", "type": "generic", "precision": "fp32",
                            "profile": "latency", "tp": "1"}
    assert set(profile.files) == {"model.onnx", "model_info.json", "tokenizer/tokenizer.json",
                                  "tokenizer/tokenizer_config.json", "tokenizer/vocab.txt",
                                  "tokenizer/special_tokens_map.json"}
    for f in profile.files.values():
        assert (out / f.uri).stat().st_size == f.size
    info = json.loads((out / profile.files["model_info.json"].uri).read_text())
    assert info["inputs"][0]["shapes"] == {"batch": [1, 2, 4], "sequence": [1, 16, 64]}
    assert info["serving"]["max_batch_size"] == 4
    assert profile.build["parity"]["outputs"]["last_hidden_state"]["cosine_min"].startswith("1.0")
    assert not list(out.glob(".nimbuild-*")), "no staging or lock left behind"


def test_two_compiles_give_identical_bytes_and_ids(write_recipe, tmp_path, tiny_bert_dir):
    recipe = write_recipe(recipe_text(str(tiny_bert_dir)))
    assert _compile(recipe, tmp_path / "a").exit_code == 0
    assert _compile(recipe, tmp_path / "b").exit_code == 0
    a = (tmp_path / "a" / "profiles.yaml").read_bytes()
    assert a == (tmp_path / "b" / "profiles.yaml").read_bytes()
    for rel in ("model.onnx", "model_info.json"):
        path = f"profiles/onnxruntime-fp32-latency/{rel}"
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()


def test_unchanged_recompile_skips_and_says_so(write_recipe, tmp_path, tiny_bert_dir):
    recipe = write_recipe(recipe_text(str(tiny_bert_dir)))
    out = tmp_path / "out"
    assert _compile(recipe, out).exit_code == 0
    before = (out / "profiles.yaml").read_bytes()
    onnx_mtime = (out / "profiles/onnxruntime-fp32-latency/model.onnx").stat().st_mtime_ns
    again = _compile(recipe, out)
    assert again.exit_code == 0 and "up to date: 1 profile(s)" in again.stdout and "nothing rebuilt" in again.stdout
    assert (out / "profiles.yaml").read_bytes() == before
    assert (out / "profiles/onnxruntime-fp32-latency/model.onnx").stat().st_mtime_ns == onnx_mtime


def test_a_damaged_workspace_or_changed_recipe_is_rebuilt(write_recipe, tmp_path, tiny_bert_dir):
    out = tmp_path / "out"
    recipe = write_recipe(recipe_text(str(tiny_bert_dir)))
    assert _compile(recipe, out).exit_code == 0
    graph = out / "profiles/onnxruntime-fp32-latency/model.onnx"
    graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")  # same size, different bytes
    rebuilt = _compile(recipe, out)
    assert "1 built" in rebuilt.stdout
    first_id = load_manifest(out / "profiles.yaml").profiles[0].id
    # serving settings change what the runtime is told: a new build, a new profile id
    changed = write_recipe(recipe_text(str(tiny_bert_dir)).replace("max_batch_size: 4", "max_batch_size: 8"))
    assert "1 built" in _compile(changed, out).stdout
    (profile,) = load_manifest(out / "profiles.yaml").profiles
    assert profile.id != first_id and len(list((out / "profiles").iterdir())) == 1


def test_a_failed_compile_leaves_previous_results_intact(write_recipe, tmp_path, tiny_bert_dir):
    out = tmp_path / "out"
    assert _compile(write_recipe(recipe_text(str(tiny_bert_dir))), out).exit_code == 0
    before = {name: (out / name).read_bytes() for name in ("profiles.yaml", "profiles.index.json")}
    failing = write_recipe(recipe_text(str(tiny_bert_dir), parity="{atol: 0, rtol: 0, cosine_min: 1.0}"))
    result = _compile(failing, out)
    assert result.exit_code == 2 and "does not match the source model" in result.stderr
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["compile-record.json", "profiles", "profiles.index.json", "profiles.yaml"]


def test_a_failed_first_compile_leaves_no_output_directory(write_recipe, tmp_path, tiny_bert_dir):
    out = tmp_path / "out"
    failing = write_recipe(recipe_text(str(tiny_bert_dir), parity="{atol: 0, rtol: 0, cosine_min: 1.0}"))
    assert _compile(failing, out).exit_code == 2
    assert not out.exists()


def test_precisions_this_version_cannot_build_are_refused_before_any_work(write_recipe, tmp_path, tiny_bert_dir):
    text = recipe_text(str(tiny_bert_dir)).replace("  fp32: {}\n", "  fp32: {}\n  fp8: {}\n").replace(
        "targets:\n", "targets:\n  - {type: generic, precisions: [fp8]}\n")
    result = _compile(write_recipe(text), tmp_path / "out")
    assert result.exit_code == 2 and "targets[0]: precision fp8 is not supported for onnxruntime" in result.stderr
    assert not (tmp_path / "out").exists()
    too_old = write_recipe(text.replace("{type: generic, precisions: [fp8]}", "{type: rmir, precisions: [fp8]}"))
    result = _compile(too_old, tmp_path / "out")
    assert result.exit_code == 2 and "targets[0]: fp8 needs compute capability 8.9 or newer; this target lists 7.5" \
        in result.stderr


def test_merge_cli_combines_and_rebases(write_recipe, tmp_path, tiny_bert_dir, tiny_llama_dir):
    bert = write_recipe(recipe_text(str(tiny_bert_dir), name="bert"), "bert.yaml")
    llama = write_recipe(recipe_text(str(tiny_llama_dir), "text-generation", name="llama"), "llama.yaml")
    assert _compile(bert, tmp_path / "cells" / "bert").exit_code == 0
    assert _compile(llama, tmp_path / "cells" / "llama").exit_code == 0
    merged_path = tmp_path / "profiles.yaml"
    result = CliRunner().invoke(main, ["profiles", "merge", str(tmp_path / "cells" / "llama"),
                                       str(tmp_path / "cells" / "bert"), "--out", str(merged_path)])
    assert result.exit_code == 0, result.output
    merged = load_manifest(merged_path)
    assert [p.model for p in merged.profiles] == ["bert", "llama"]
    for p in merged.profiles:
        for f in p.files.values():
            assert (tmp_path / f.uri).stat().st_size == f.size


# --- the real CLI in a subprocess: exit codes, one-line errors, no tracebacks, no heavy imports -------

def _run(*args, **env):
    return subprocess.run([str(VENV_BIN / "nimbuild"), *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


@pytest.mark.parametrize("make_input,expected", [
    (lambda d, t: recipe_text(str(d / "missing")), "checkpoint not found"),
    (lambda d, t: recipe_text(str(t)), "not a Hugging Face checkpoint (no config.json)"),
    (lambda d, t: recipe_text("TRUNCATED"), "safetensors file is truncated"),
    (lambda d, t: recipe_text(str(d)).replace("opset: 18", "opset: eighteen"), "export.opset"),
    (lambda d, t: recipe_text(str(d)).replace("task: embedding", "task: embedding\nflavour: x"), "unknown key 'flavour'"),
])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, tiny_bert_dir, make_input, expected):
    import shutil

    empty = tmp_path / "empty"
    empty.mkdir()
    truncated = tmp_path / "TRUNCATED"
    shutil.copytree(tiny_bert_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(make_input(tiny_bert_dir, empty))
    out = tmp_path / "out"
    result = _run("compile", str(recipe), "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists(), "nothing may be left under --out after a failure"


def test_help_and_recipe_check_do_not_import_heavy_libraries():
    snippet = (
        "from click.testing import CliRunner; from nimbuild.cli import main\n"
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0\n"
        f"assert CliRunner().invoke(main, ['recipe', 'check', {str(REPO / 'examples' / 'minilm-embed' / 'recipe.yaml')!r}]).exit_code == 0"
    )
    assert modules_loaded_by(snippet, ("torch", "transformers", "onnx", "onnxruntime", "tensorrt", "nemo")) == []


def test_version_and_recipe_check_json():
    assert _run("--version").stdout.strip() == "nimbuild, version 0.1.0"
    result = _run("recipe", "check", str(REPO / "examples" / "minilm-embed" / "recipe.yaml"), "--format", "json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["variants"] == [
        "onnxruntime-fp32-throughput", "onnxruntime-fp16-throughput", "onnxruntime-int8-throughput",
        "tensorrt_rtx-sm80-fp16-throughput", "tensorrt_rtx-sm86-fp16-throughput", "tensorrt_rtx-sm89-fp16-throughput",
        "tensorrt_rtx-sm120-fp16-throughput", "tensorrt_rtx-sm89-fp8-throughput", "tensorrt_rtx-sm120-fp8-throughput",
        "tensorrt-sm90-fp16-throughput", "tensorrt-sm90-fp8-throughput", "rmir-fp16-throughput"]


def test_example_recipe_compiles_to_the_committed_manifest(minilm_compiled):
    """`profiles.yaml` at the top level is what the example recipe gives, id for id."""
    out, output = minilm_compiled
    committed = load_manifest(REPO / "profiles.yaml")
    built = load_manifest(out / "profiles.yaml")
    assert [p.id for p in committed.profiles] == [p.id for p in built.profiles]
    assert [p.to_dict()["tags"] for p in committed.profiles] == [p.to_dict()["tags"] for p in built.profiles]


def test_graphs_carry_no_machine_specific_paths(minilm_compiled):
    """The exporter's stack traces name files on the build machine; left in, ids would differ per runner."""
    out, _ = minilm_compiled
    graph = (out / "profiles/onnxruntime-fp32-throughput/model.onnx").read_bytes()
    for marker in (str(REPO).encode(), sys.prefix.encode(), b"site-packages", b"stack_trace"):
        assert marker not in graph, marker


def test_two_targets_making_the_same_profile_are_refused_before_any_work(write_recipe, tmp_path, tiny_bert_dir):
    text = recipe_text(str(tiny_bert_dir)).replace(
        "targets:\n", "targets:\n  - {type: generic, backend: onnxruntime, precisions: [fp32]}\n")
    result = _compile(write_recipe(text), tmp_path / "out")
    assert result.exit_code == 2 and "targets[0] and targets[1] both make onnxruntime-fp32-latency" in result.stderr
    assert not (tmp_path / "out").exists()
