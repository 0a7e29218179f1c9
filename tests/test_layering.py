"""DESIGN.md §2: what runs on target machines (profiles, selection, registry, runtime_min) never
imports build code, heavy ML libraries or the CLI."""

import subprocess
import sys


def test_target_machine_code_imports_no_build_code_and_no_heavy_libraries():
    code = (
        "import sys\n"
        "import nimbuild.registry, nimbuild.registry.oci, nimbuild.registry.layout, nimbuild.registry.ngc\n"
        "import nimbuild.profiles.select, nimbuild.profiles.nim, nimbuild.profiles.listing, nimbuild.profiles.system\n"
        "import runtime_min.service, runtime_min.triton, runtime_min.repository, runtime_min.api\n"
        "heavy = ('torch', 'transformers', 'onnx', 'tensorrt', 'tensorrt_rtx', 'nemo', 'pydantic_core.core_schema_')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.split('.')[:2] in "
        "(['nimbuild', 'build'], ['nimbuild', 'export'], ['nimbuild', 'sources'], ['nimbuild', 'recipe'], ['nimbuild', 'cli']))\n"
        "print(bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
