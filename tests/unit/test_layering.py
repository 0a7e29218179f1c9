"""docs/design.md §2: what runs on target machines (profiles, selection, registry, runtime_min) never
imports build code, heavy ML libraries or the CLI; and no module of either package imports itself
through others (an import circle), lazy imports inside functions included."""

from helpers.imports import cycles, import_graph, reachable
from helpers.processes import modules_loaded_by

# Build code: what only `nimbuild compile` (and its CLI) runs. A target machine loads none of it.
BUILD_CODE = ("nimbuild.compile", "nimbuild.recipe", "nimbuild.export", "nimbuild.sources", "nimbuild.precision",
              "nimbuild.matrix", "nimbuild.cli", "nimbuild.k8s", "nimbuild.targets.generic",
              "nimbuild.targets.tensorrt_llm")
HEAVY = ("torch", "transformers", "onnx", "tensorrt", "tensorrt_rtx", "nemo")


def test_target_machine_code_imports_no_build_code_and_no_heavy_libraries():
    snippet = (
        "import nimbuild.registry, nimbuild.registry.oci, nimbuild.registry.layout, nimbuild.registry.ngc\n"
        "import nimbuild.profiles.select, nimbuild.profiles.nim, nimbuild.profiles.listing, nimbuild.profiles.system\n"
        "import runtime_min.service, runtime_min.triton, runtime_min.deploy, runtime_min.http, runtime_min.tasks.embedding\n"
        "import runtime_min.tasks.llm, runtime_min.tasks.asr, runtime_min.deploy.rmir, runtime_min.deploy.core\n"
        "import nimbuild.tasks, nimbuild.shapes, nimbuild.commands, nimbuild.serving.audio, nimbuild.serving.generation"
    )
    watched = ("torch", "transformers", "onnx", "tensorrt", "tensorrt_rtx", "nemo",
               "nimbuild.targets", "nimbuild.export", "nimbuild.sources", "nimbuild.recipe", "nimbuild.cli",
               "nimbuild.compile", "nimbuild.precision", "nimbuild.matrix")
    assert modules_loaded_by(snippet, watched) == []


def test_no_runtime_module_can_reach_build_code_even_through_lazy_imports():
    """Every import runtime_min could ever run, read from the source (inside functions too), leads to
    no build code: the check above sees only what importing happens to load."""
    graph = import_graph()
    runtime = [m for m in graph if m.startswith("runtime_min")]
    reached = reachable(graph, runtime)
    assert sorted(m for m in reached if m.startswith(BUILD_CODE)) == []
    assert "nimbuild.targets.rmir" in reached and "nimbuild.serving.audio" in reached, "the graph sees lazy imports"


def test_there_are_no_import_circles():
    graph = import_graph()
    assert len(graph) > 90, "the graph covers both packages"
    assert cycles(graph) == []


def test_an_rmir_deploy_builds_an_engine_without_loading_build_code(tmp_path):
    """The RMIR path run for real (a tiny graph, built by TensorRT-RTX for a compute capability with
    no GPU here), in a fresh interpreter: it may load the engine builder, and nothing of the compile."""
    import json

    import onnx
    from onnx import TensorProto, helper

    from nimbuild.targets.rmir import FORMAT_VERSION, pack

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "model.onnx")
    (tmp_path / "model_info.json").write_text(json.dumps({"task": "embedding", "inputs": [{"name": "x"}]}))
    meta = {"format_version": FORMAT_VERSION, "model": "tiny", "release": "1", "task": "embedding", "precision": "fp32",
            "min_compute_capability": "7.5", "inputs": {"x": {"batch": [1, 2, 4], "features": [8, 8, 8]}},
            "builder": {"strongly_typed": True}, "serving": {}}
    archive = tmp_path / "model.rmir"
    pack(archive, meta, {"model.onnx": tmp_path / "model.onnx", "model_info.json": tmp_path / "model_info.json"})
    snippet = (f"from pathlib import Path\nfrom runtime_min.deploy.rmir import build\n"
               f"engine, kind = build(Path({str(tmp_path)!r}), None, '8.6', Path({str(tmp_path / 'cache')!r}))\n"
               f"assert (engine / 'model.plan').stat().st_size > 0 and kind == 'tensorrt_rtx', kind")
    assert modules_loaded_by(snippet, HEAVY + BUILD_CODE) == ["tensorrt_rtx"], "the builder, nothing of the compile"

