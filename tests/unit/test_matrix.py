"""CI build matrices: cells, their renderings, per-cell compiles, merging, and a local run that
equals a single compile byte for byte."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from helpers.paths import REPO
from helpers.recipes import recipe_text
from nimbuild.cli import main

TARGETS = ("{type: generic, backend: onnxruntime, precisions: [fp32, fp16]}",
           '{type: prebuilt, backend: tensorrt_rtx, compute_capabilities: ["8.9"], precisions: [fp16]}',
           '{type: prebuilt, backend: tensorrt, compute_capabilities: ["9.0", "8.0"], precisions: [fp16]}')


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def recipe(tmp_path, tiny_bert_dir):
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text(str(tiny_bert_dir), profile="throughput", precisions={"fp32": "{}", "fp16": "{}"},
                                targets=TARGETS))
    return path


def test_cells_one_cpu_and_one_gpu_per_datacenter_capability(recipe):
    cells = json.loads(_cli("matrix", recipe).stdout)
    assert [c["cell"] for c in cells] == ["cpu", "gpu-sm80", "gpu-sm90"]
    assert cells[0]["profiles"] == ["onnxruntime-fp32-throughput", "onnxruntime-fp16-throughput",
                                    "tensorrt_rtx-sm89-fp16-throughput"]
    assert cells[0]["runs_on"] == ["ubuntu-latest"] and cells[0]["node_selector"] == {}
    assert cells[2]["runs_on"] == ["self-hosted", "linux", "gpu", "sm90"]
    assert cells[2]["node_selector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert cells[1]["node_selector"] == {"nvidia.com/gpu.product": "NVIDIA-A30"}
    assert cells[2]["command"] == f"nimbuild compile {recipe} --cell gpu-sm90 --out out/gpu-sm90"


def test_renderings_for_github_gitlab_and_kubernetes(recipe):
    github = json.loads(_cli("matrix", recipe, "--format", "github").stdout)
    assert [c["cell"] for c in github["include"]] == ["cpu", "gpu-sm80", "gpu-sm90"]
    gitlab = yaml.safe_load(_cli("matrix", recipe, "--format", "gitlab").stdout)
    assert gitlab == {"parallel": {"matrix": [{"CELL": ["cpu", "gpu-sm80", "gpu-sm90"]}]}}
    jobs = list(yaml.safe_load_all(_cli("matrix", "show", recipe, "--format", "k8s").stdout))
    assert [j["metadata"]["name"] for j in jobs] == ["nimbuild-cpu", "nimbuild-gpu-sm80", "nimbuild-gpu-sm90"]
    for job in jobs:  # structural check of batch/v1 Jobs (no Kubernetes schema package is installed here)
        assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never" and pod["containers"][0]["command"][0] == "sh"
    gpu_pod = jobs[2]["spec"]["template"]["spec"]
    assert gpu_pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert gpu_pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert "resources" not in jobs[0]["spec"]["template"]["spec"]["containers"][0]


def test_local_run_equals_a_single_compile_byte_for_byte(recipe, tmp_path):
    single = _cli("-q", "compile", recipe, "--out", tmp_path / "single")
    assert single.exit_code == 0, single.output
    run = _cli("matrix", "run", recipe, "--local", "--out", tmp_path / "matrix")
    assert run.exit_code == 0, run.output
    assert "skipped cell gpu-sm80: needs a GPU of compute capability 8.0" in run.stdout
    assert (tmp_path / "single" / "profiles.yaml").read_bytes() == (tmp_path / "matrix" / "profiles.yaml").read_bytes()
    for path in (tmp_path / "single" / "profiles").rglob("*"):
        if path.is_file():
            twin = tmp_path / "matrix" / path.relative_to(tmp_path / "single")
            assert twin.read_bytes() == path.read_bytes(), path
    assert sorted(p.name for p in (tmp_path / "matrix").iterdir()) == ["profiles", "profiles.index.json", "profiles.yaml"]


def test_merge_names_missing_cells_and_cells_that_built_nothing(recipe, tmp_path):
    cells = tmp_path / "cells"
    assert _cli("-q", "compile", recipe, "--cell", "cpu", "--out", cells / "cpu").exit_code == 0
    missing = _cli("profiles", "merge", cells / "cpu", "--out", tmp_path / "m.yaml")
    assert missing.exit_code == 2 and "missing cells: gpu-sm80, gpu-sm90" in missing.stderr
    assert _cli("-q", "compile", recipe, "--cell", "gpu-sm90", "--out", cells / "gpu-sm90").exit_code == 0
    empty = _cli("profiles", "merge", cells / "cpu", cells / "gpu-sm90", "--out", tmp_path / "m.yaml")
    assert empty.exit_code == 2 and "cell gpu-sm90" in empty.stderr
    assert "did not build tensorrt-sm90-fp16-throughput: needs a GPU of compute capability 9.0" in empty.stderr
    allowed = _cli("profiles", "merge", cells / "cpu", "--out", tmp_path / "m.yaml", "--allow-missing")
    assert allowed.exit_code == 0 and "3 profile(s)" in allowed.stdout
    unknown = _cli("compile", recipe, "--cell", "gpu-sm75", "--out", tmp_path / "x")
    assert unknown.exit_code == 2 and "its cells are cpu, gpu-sm80, gpu-sm90" in unknown.stderr


def test_the_example_recipe_matrix(tmp_path):
    cells = json.loads(_cli("matrix", REPO / "examples" / "minilm-embed" / "recipe.yaml").stdout)
    assert [c["cell"] for c in cells] == ["cpu", "gpu-sm90"] and len(cells[0]["profiles"]) == 10


def test_engines_built_in_ngcs_triton_container_record_the_container_they_need(recipe, monkeypatch):
    """A datacenter TensorRT engine runs only with its TensorRT, which the NGC Triton release it was
    built in carries: built there (NVIDIA_TRITON_SERVER_VERSION set, as NGC's images set it) the
    profile names that image; elsewhere it records trt_version alone."""
    from nimbuild.compile import plan_variants
    from nimbuild.recipe import load_recipe

    def engine_tags() -> list[dict]:
        return [dict(v.tags) for v in plan_variants(load_recipe(recipe)) if dict(v.tags)["backend"] == "tensorrt"]

    monkeypatch.delenv("NVIDIA_TRITON_SERVER_VERSION", raising=False)
    assert all("triton_container" not in tags for tags in engine_tags())
    monkeypatch.setenv("NVIDIA_TRITON_SERVER_VERSION", "25.01")
    assert {tags["triton_container"] for tags in engine_tags()} == {"nvcr.io/nvidia/tritonserver:25.01-py3"}
    # TRT-RTX engines and generic graphs need no Triton container of a given release
    others = [dict(v.tags) for v in plan_variants(load_recipe(recipe)) if dict(v.tags)["backend"] != "tensorrt"]
    assert others and all("triton_container" not in tags for tags in others)
