"""NIM manifests (v1 and v2), system description files, and the listing CLI end to end."""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers.cli import run_installed as _cli
from helpers.paths import REPO, VENV_BIN
from helpers.processes import modules_loaded_by
from nimbuild.errors import ManifestError, SystemDescriptionError
from nimbuild.profiles.nim import parse_profiles
from nimbuild.profiles.select import select_profile
from nimbuild.profiles.system import detect_system, load_system_file, system_from_dict

NIM_V1 = """\
1f8d0c7a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccd:
  model: meta/llama3-8b-instruct
  release: 1.0.0
  tags:
    feat_lora: 'false'
    gpu: L40S
    gpu_device: 26b9:10de
    llm_engine: tensorrt_llm
    pp: '1'
    precision: fp16
    profile: throughput
    tp: '1'
  container_url: nvcr.io/nim/meta/llama3-8b-instruct:1.0.0
  workspace: !workspace
    components:
      - dst: ''
        src:
          files:
            - !name 'LICENSE.txt'
            - !name 'config.json'
          repo_id: ngc://nim/meta/llama3-8b-instruct:0.10.0+1.0.0-l40sx1-fp16-throughput
2a9e8d7c6b5a4f3e2d1c0b0a99887766554433221100ffeeddccbbaa99887766:
  model: meta/llama3-8b-instruct
  release: 1.0.0
  tags:
    feat_lora: 'false'
    gpu: H100
    gpu_device: 2330:10de
    llm_engine: tensorrt_llm
    pp: '1'
    precision: fp8
    profile: latency
    tp: 2
  workspace: !workspace
    components: []
3b0f9e8d7c6b5a4f3e2d1c0b0a99887766554433221100ffeeddccbbaa998877:
  model: meta/llama3-8b-instruct
  release: 1.0.0
  tags:
    llm_engine: vllm
    precision: bf16
    tp: '1'
    feat_lora: 'false'
  workspace: !workspace {components: []}
  something_new: !future_tag {x: 1}
"""

NIM_V2 = """\
schema_version: 2.0.0
profiles:
  - id: 9c1e5c7f0a2b4d6e8f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d4e
    tags: {llm_engine: tensorrt_llm, precision: fp8, tp: '1', pp: '1', profile: throughput, gpu: H200}
    workspace:
      files:
        rank0.engine: {uri: 'ngc://nim/x:1', digest: 'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', size: 10}
  - id: 0d2f6d8a1b3c5e7f9a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e4f
    tags: {llm_engine: vllm, precision: bf16, tp: '1', pp: '1', feat_lora: 'true'}
"""


def test_nim_v1_with_custom_yaml_tags():
    read = parse_profiles(NIM_V1, "model_manifest.yaml")
    profiles, kind = read.profiles, read.format
    assert kind == "nim-v1" and len(profiles) == 3
    first = profiles[0]
    assert first.id.startswith("1f8d0c7a") and first.model == "meta/llama3-8b-instruct"
    assert first.tags["llm_engine"] == "tensorrt_llm" and first.description == "tensorrt_llm-l40s-fp16-throughput"
    assert profiles[1].tags["tp"] == "2", "numbers in tags become strings"


def test_nim_v1_selection_on_l40s_and_h100():
    profiles = parse_profiles(NIM_V1).profiles
    l40s = system_from_dict({"gpus": [{"product": "L40S"}]})
    selection = select_profile(profiles, l40s, {})
    assert selection.selected.id.startswith("1f8d0c7a"), "the engine built for this exact GPU wins"
    reasons = {c.profile.id[:8]: c.reasons for c in selection.candidates}
    assert reasons["2a9e8d7c"] == ["built for GPU H100 / 2330:10de; this system has NVIDIA L40S (26b9:10de)",
                                   "needs 2 GPUs (tp=2 x pp=1); this system has 1"]
    h100x2 = system_from_dict({"gpus": [{"product": "H100 SXM"}] * 2})
    assert select_profile(profiles, h100x2, {}).selected.id.startswith("2a9e8d7c")
    cpu = system_from_dict({"gpus": []})
    none = select_profile(profiles, cpu, {})
    assert none.selected is None and "needs a GPU (backend vllm)" in none.why_none


def test_nim_v2():
    read = parse_profiles(NIM_V2)
    profiles, kind = read.profiles, read.format
    assert kind == "nim-v2" and [p.tags["llm_engine"] for p in profiles] == ["tensorrt_llm", "vllm"]
    assert profiles[0].files["rank0.engine"].uri == "ngc://nim/x:1"
    h200 = system_from_dict({"gpus": [{"product": "H200"}]})
    assert select_profile(profiles, h200, {"NIM_TAGS_SELECTOR": "feat_lora=true"}).selected.id.startswith("0d2f")
    assert select_profile(profiles, h200, {}).selected.id.startswith("9c1e"), "prebuilt for this GPU beats generic"


@pytest.mark.parametrize("text,message", [
    ("a: [b\n", "not valid YAML"),
    ("- 1\n", "expected a mapping"),
    ("abc:\n  model: m\n", "'tags' must be a non-empty mapping"),
    ("abc: 3\n", "not a profile manifest; expected nimbuild's manifest"),
    ("schema_version: 2.0.0\nprofiles:\n  - {tags: {a: b}}\n", "missing 'id'"),
    ("schema_version: 7\nprofiles: []\n", "unsupported schema_version"),
])
def test_bad_nim_manifests(text, message):
    with pytest.raises(ManifestError, match=message):
        parse_profiles(text, "m.yaml")


def test_system_files(tmp_path):
    path = tmp_path / "system.json"
    path.write_text(json.dumps({"gpus": [{"index": 0, "name": "NVIDIA L40S", "device_id": "26b9:10de",
                                          "compute_capability": "8.9", "memory_mib": 46068}]}))
    system = detect_system({"NIMBUILD_SYSTEM": str(path)})
    assert system.gpus[0].product == "L40S" and system.source == "file" and system.runtimes is None
    custom = system_from_dict({"gpus": [{"name": "Prototype", "compute_capability": "11.0", "memory_mib": 1000}]})
    assert custom.gpus[0].cc == (11, 0) and custom.gpus[0].product is None
    # the listing's JSON is itself a valid system file
    assert system_from_dict({"system": system.to_dict()}).gpus == system.gpus


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('{"gpus": "many"}', "expected an object like"),
    ('{"gpus": [{"name": "Mystery GPU"}]}', "unknown GPU"),
    ('{"gpus": [{"product": "L4", "compute_capability": "fast"}]}', "compute_capability must look like"),
    ('{"gpus": [], "runtimes": {"tensorrt": 10}}', "runtimes"),
])
def test_malformed_system_files(tmp_path, content, message):
    path = tmp_path / "system.json"
    path.write_text(content)
    with pytest.raises(SystemDescriptionError, match=message):
        load_system_file(path)
    with pytest.raises(SystemDescriptionError, match="file not found"):
        load_system_file(tmp_path / "absent.json")


def test_nvml_absence_is_a_cpu_system_not_an_error():
    system = detect_system({})
    if system.source == "nvml":  # pragma: no cover - a GPU host
        pytest.skip("this host has an NVIDIA driver")
    assert system.gpus == () and system.note
    assert system.runtimes is not None and "onnxruntime" in system.runtimes


# --- the CLI, as a user runs it ---------------------------------------------------------------


@pytest.fixture
def l40s_system(tmp_path):
    path = tmp_path / "l40s.json"
    path.write_text(json.dumps({"gpus": [{"product": "L40S"}], "runtimes": {"tensorrt": "10.13.0"}}))
    return str(path)


def test_listing_text_in_nim_shape(tmp_path, l40s_system):
    manifest = tmp_path / "model_manifest.yaml"
    manifest.write_text(NIM_V1)
    result = _cli("-m", str(manifest), env={"NIMBUILD_SYSTEM": l40s_system})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"read {manifest} as a NIM v1 manifest (a mapping of profile ids)"
    assert result.stdout.splitlines() == [
        "SYSTEM INFO",
        "- Free GPUs:",
        "  -  [26b9:10de] (0) NVIDIA L40S (L40S)",
        "- Non-free GPUs:",
        "  - <None>",
        "MODEL PROFILES",
        "- Compatible with system and runnable:",
        "  - 1f8d0c7a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccd (tensorrt_llm-l40s-fp16-throughput)",
        "  - 3b0f9e8d7c6b5a4f3e2d1c0b0a99887766554433221100ffeeddccbbaa998877 (vllm-bf16)",
        "- Compatible with system but low memory:",
        "  - <None>",
        "- Compilable to TRT-LLM using just-in-time compilation of HF models to TRTLLM engines:",
        "  - <None>",
        "- Incompatible with system:",
        "  - 2a9e8d7c6b5a4f3e2d1c0b0a99887766554433221100ffeeddccbbaa99887766 (tensorrt_llm-h100-fp8-tp2-latency)",
    ]
    explained = _cli("-m", str(manifest), "--explain", env={"NIMBUILD_SYSTEM": l40s_system}).stdout.splitlines()
    assert explained[2] == "  -  [26b9:10de] (0) NVIDIA L40S (L40S) (compute capability 8.9, 46068 MiB)"
    assert explained[explained.index("- Compatible with system and runnable:") + 1].endswith("[selected]")
    assert "built for GPU H100" in explained[-1]


def test_listing_json_shape(l40s_system):
    result = _cli("-m", str(REPO / "profiles.yaml"), "--format", "json", env={"NIMBUILD_SYSTEM": l40s_system})
    data = json.loads(result.stdout)
    assert data["system"]["gpus"][0] == {"index": 0, "name": "NVIDIA L40S", "device_id": "26b9:10de",
                                         "compute_capability": "8.9", "memory_mib": 46068}
    assert data["selected"] == data["profiles"][0]["id"]
    # no TensorRT-RTX here, so no TRT-RTX engine runs; datacenter TensorRT builds the RMIR on this GPU
    first = data["profiles"][0]
    assert first["description"] == "rmir-fp16-throughput" and first["status"] == "buildable" and first["reasons"] == []
    runnable = [p for p in data["profiles"] if p["status"] == "runnable"]
    assert runnable and all(p["tags"]["backend"] == "onnxruntime" and p["reasons"] == [] for p in runnable)


def test_manifest_from_environment_and_profiles_subcommands(tmp_path, l40s_system):
    manifest = tmp_path / "model_manifest.yaml"
    manifest.write_text(NIM_V1)
    env = {"NIMBUILD_SYSTEM": l40s_system, "NIM_MANIFEST_PATH": str(manifest)}
    assert _cli(env=env).stdout.startswith("SYSTEM INFO")
    selected = _cli("profiles", "select", env=env, exe="nimbuild")
    assert selected.returncode == 0 and selected.stdout.strip().startswith("1f8d0c7a")
    shown = _cli("profiles", "show", "2a9e8d7c", "--format", "json", env=env, exe="nimbuild")
    data = json.loads(shown.stdout)
    assert data["status"] == "incompatible" and data["selected"] is False and data["tags"]["gpu"] == "H100"
    none = _cli("profiles", "select", env={**env, "NIM_TAGS_SELECTOR": "precision=fp4"}, exe="nimbuild")
    assert none.returncode == 1 and "no profile is compatible" in none.stderr and "Traceback" not in none.stderr


@pytest.mark.parametrize("setup,expected", [
    (lambda d: ("-m", str(d / "bad.yaml")), "not valid YAML"),
    (lambda d: ("-m", str(d / "notags.yaml")), "'tags' must be a non-empty mapping"),
    (lambda d: ("-m", str(d / "absent.yaml")), "manifest not found"),
])
def test_listing_bad_manifests_exit_nonzero_with_one_line(tmp_path, setup, expected, l40s_system):
    (tmp_path / "bad.yaml").write_text("profiles: [\n  - {id: x\n")
    (tmp_path / "notags.yaml").write_text("abc:\n  model: m\n  tags: {}\n")
    result = _cli(*setup(tmp_path), env={"NIMBUILD_SYSTEM": l40s_system})
    assert result.returncode == 2 and expected in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_listing_bad_environment(tmp_path):
    bad_system = tmp_path / "system.json"
    bad_system.write_text("[1, 2")
    result = _cli("-m", str(REPO / "profiles.yaml"), env={"NIMBUILD_SYSTEM": str(bad_system)})
    assert result.returncode == 2 and "NIMBUILD_SYSTEM" in result.stderr and "Traceback" not in result.stderr
    result = _cli("-m", str(REPO / "profiles.yaml"), env={"NIM_TAGS_SELECTOR": "precision"})
    assert result.returncode == 2 and "is not key=value" in result.stderr and "Traceback" not in result.stderr


def test_listing_imports_nothing_heavy():
    snippet = ("import contextlib, io, sys\nfrom nimbuild.commands import list_model_profiles_main\n"
               f"sys.argv = ['nim_list_model_profiles', '-m', {str(REPO / 'profiles.yaml')!r}]\n"
               "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
               "    list_model_profiles_main()")
    watched = ("torch", "transformers", "onnx", "onnxruntime", "pydantic", "rich", "numpy")
    assert modules_loaded_by(snippet, watched) == []


def test_nims_command_names_are_executables_that_list_as_nim_list_model_profiles_does(minilm_compiled):
    """The NIM Operator and NIM's docs call `list-model-profiles` by name; `runtime_min
    list-model-profiles` forwards to the same command, --help included."""
    import sys

    manifest = str(minilm_compiled[0] / "profiles.yaml")
    by_name, nim = (subprocess.run([str(VENV_BIN / name), "-m", manifest, "--format", "json"], capture_output=True,
                                   text=True) for name in ("list-model-profiles", "nim_list_model_profiles"))
    assert by_name.returncode == 0 and json.loads(by_name.stdout) == json.loads(nim.stdout)
    forwarded = subprocess.run([sys.executable, "-m", "runtime_min", "list-model-profiles", "--help"],
                               capture_output=True, text=True)
    assert forwarded.returncode == 0 and "--explain" in forwarded.stdout and "--format" in forwarded.stdout
