"""DESIGN.md §2: what runs on target machines (profiles, selection, registry, runtime_min) never
imports build code, heavy ML libraries or the CLI."""

from conftest import modules_loaded_by


def test_target_machine_code_imports_no_build_code_and_no_heavy_libraries():
    snippet = (
        "import nimbuild.registry, nimbuild.registry.oci, nimbuild.registry.layout, nimbuild.registry.ngc\n"
        "import nimbuild.profiles.select, nimbuild.profiles.nim, nimbuild.profiles.listing, nimbuild.profiles.system\n"
        "import runtime_min.service, runtime_min.triton, runtime_min.deploy, runtime_min.http, runtime_min.tasks.embedding\n"
        "import runtime_min.tasks.llm, runtime_min.tasks.asr, runtime_min.deploy.rmir, runtime_min.deploy.core"
    )
    watched = ("torch", "transformers", "onnx", "tensorrt", "tensorrt_rtx", "nemo",
               "nimbuild.targets", "nimbuild.export", "nimbuild.sources", "nimbuild.recipe", "nimbuild.cli")
    assert modules_loaded_by(snippet, watched) == []
