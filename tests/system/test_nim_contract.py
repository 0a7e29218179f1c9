"""NIM's manifest contract: every manifest shape NIM containers carry (fixtures written here from the
documented formats), NIM's selection rules on simulated systems, and the listing as NIM prints it."""

from __future__ import annotations

import json

import pytest

from helpers.cli import run_installed as _cli  # nim_list_model_profiles as a user runs it
from nimbuild.errors import ManifestError, SelectionError
from nimbuild.profiles.nim import parse_profiles
from nimbuild.profiles.select import BUILDABLE, INCOMPATIBLE, LOW_MEMORY, RUNNABLE, select_profile
from nimbuild.profiles.system import system_from_dict


def _id(n: int) -> str:
    return f"{n:064x}"


# A non-LLM (embedding) NIM: generic ONNX, and TensorRT engines for one GPU each, named by
# product_name_regex (a look-ahead keeps the A10G engine off A100s) and key (GPU_TRT_CUDA).
NON_LLM = f"""\
{_id(1)}:
  model: nvidia/nv-embedqa-e5-v5
  release: 1.0.0
  tags: {{backend: onnx, key: onnx, precision: fp16}}
{_id(2)}:
  model: nvidia/nv-embedqa-e5-v5
  release: 1.0.0
  tags:
    backend: tensorrt
    key: NVIDIA-A10G_10.0.1_12
    precision: fp16
    product_name_regex: ^NVIDIA-A10(?!0).*
{_id(3)}:
  model: nvidia/nv-embedqa-e5-v5
  release: 1.0.0
  tags: {{backend: tensorrt, key: NVIDIA-A100-SXM4-80GB_10.0.1_12, precision: fp16}}
"""

# An LLM NIM 1.5+ dump: a top-level list. Prebuilt TensorRT-LLM engines for H100, a buildable
# TensorRT-LLM profile (HF weights compiled at start) for 2 GPUs, vLLM and SGLang, LoRA variants.
LIST_FORM = f"""\
- id: {_id(10)}
  tags: {{llm_engine: tensorrt_llm, precision: fp8, tp: '1', pp: '1', profile: throughput, gpu: H100,
          gpu_device: 2330:10de, feat_lora: 'false'}}
  workspace:
    files:
      rank0.engine: {{uri: 'ngc://nim/meta/llama:h100-fp8/rank0.engine'}}
- id: {_id(11)}
  tags: {{llm_engine: tensorrt_llm, precision: fp8, tp: '1', pp: '1', profile: throughput, gpu: H100,
          gpu_device: 2330:10de, feat_lora: 'true'}}
- id: {_id(12)}
  tags: {{llm_engine: tensorrt_llm, trtllm_buildable: 'true', precision: bf16, tp: '2', pp: '1', feat_lora: 'false'}}
- id: {_id(13)}
  tags: {{llm_engine: tensorrt_llm, trtllm_buildable: 'true', precision: bf16, tp: '1', pp: '1', feat_lora: 'false'}}
  requires: {{gpu_memory_mib: 90000}}
- id: {_id(14)}
  tags: {{llm_engine: vllm, precision: bf16, tp: '1', pp: '1', feat_lora: 'false'}}
  requires: {{gpu_memory_mib: 18000}}
- id: {_id(15)}
  tags: {{llm_engine: vllm, precision: bf16, tp: '1', pp: '1', feat_lora: 'true'}}
  requires: {{gpu_memory_mib: 22000}}
- id: {_id(16)}
  tags: {{llm_engine: sglang, precision: bf16, tp: '1', pp: '1', feat_lora: 'false', number_of_gpus: '4'}}
"""

V1_LLM = f"""\
{_id(20)}:
  model: meta/llama3-8b-instruct
  release: 1.0.0
  tags: {{llm_engine: tensorrt_llm, gpu: L40S, gpu_device: 26b9:10de, precision: fp16, tp: '1', pp: '1'}}
  container_url: nvcr.io/nim/meta/llama3-8b-instruct:1.0.0
  workspace: !workspace
    components:
      - dst: trtllm_engine
        src:
          repo_id: !repo ngc://nim/meta/llama3-8b-instruct:l40sx1-fp16
          files: [!name 'config.json', {{'rank0.engine': {{size: 1}}}}, tokenizer.json]
{_id(21)}:
  tags: {{llm_engine: vllm, precision: bf16, tp: '1'}}
"""

LEGACY = f"""\
model_profile: {_id(31)}
manifest:
  - id: {_id(30)}
    tags: {{llm_engine: vllm, precision: bf16, tp: '1'}}
  - profile_id: {_id(31)}
    tags: {{llm_engine: tensorrt_llm, precision: fp8, tp: '1', gpu: H200}}
"""

V2 = f"""\
schema_version: 2.1.0
profile_selection_criteria: default
profiles:
  - id: {_id(40)}
    tags: {{llm_engine: tensorrt_llm, precision: fp8, tp: '1', gpu: H200, gpu_device: 2335:10de}}
    workspace:
      files:
        rank0.engine: {{uri: 'ngc://nim/x:1/rank0.engine', checksum: 'sha256:{"a" * 64}'}}
        config.json: {{uri: 'ngc://nim/x:1/config.json', checksum: '{"b" * 64}'}}
        README.md: {{uri: 'ngc://nim/x:1/README.md'}}
"""


def _system(product: str | None, count: int = 1, **gpu):
    return system_from_dict({"gpus": [{"product": product, "index": i, **gpu} for i in range(count)] if product else []})


def _names(selection, status=None) -> list[int]:
    """The profiles' numbers (their ids are _id(n)), in the selection's order."""
    return [int(c.profile.id, 16) for c in selection.candidates if status is None or c.status == status]


# --- every manifest shape, and which one was read --------------------------------------------------

@pytest.mark.parametrize("text, shape, count", [
    (NON_LLM, "nim-v1", 3), (V1_LLM, "nim-v1", 2), (LIST_FORM, "nim-list", 7), (LEGACY, "nim-legacy", 2), (V2, "nim-v2", 1),
])
def test_every_manifest_shape_is_read_and_named(text, shape, count):
    read = parse_profiles(text, "model_manifest.yaml")
    assert read.format == shape and len(read.profiles) == count
    assert all(len(p.id) == 64 and p.tags for p in read.profiles)


def test_shape_details_are_kept():
    v2 = parse_profiles(V2)
    assert v2.details == {"profile_selection_criteria": "default"}
    assert v2.describe() == "NIM v2 manifest (schema_version 2.x), profile_selection_criteria default"
    files = v2.profiles[0].files  # per-file uri and checksum; a file without a checksum has nothing to verify
    assert files["rank0.engine"].digest == "sha256:" + "a" * 64 and files["config.json"].digest == "sha256:" + "b" * 64
    assert set(files) == {"rank0.engine", "config.json"}
    legacy = parse_profiles(LEGACY)
    assert legacy.details == {"model_profile": _id(31)} and legacy.profiles[1].id == _id(31)
    v1 = parse_profiles(V1_LLM)
    assert v1.profiles[0].model == "meta/llama3-8b-instruct" and v1.profiles[1].files == {}


@pytest.mark.parametrize("text, message", [
    ("just a string\n", "not a profile manifest; expected nimbuild's manifest"),
    ("a: 1\nb: 2\n", "not a profile manifest; expected"),
    ("schema_version: 3.0\nprofiles: []\n", "unsupported schema_version '3.0'"),
    ("schema_version: 2.0.0\nprofiles: {a: b}\n", "'profiles' must be a list"),
    (f"- {{id: {_id(1)}, tags: {{a: b}}}}\n- {{id: {_id(1)}, tags: {{a: c}}}}\n", "appears twice"),
    (f"- {{id: {_id(1)}, tags: {{a: b}}, workspace: {{files: {{f: {{checksum: x}}}}}}}}\n", "needs a uri"),
    (f"- {{id: {_id(1)}, tags: {{a: b}}, workspace: {{files: {{f: {{uri: u, checksum: x, size: big}}}}}}}}\n",
     "has size 'big'"),
])
def test_unknown_and_broken_shapes_are_one_line(text, message):
    with pytest.raises(ManifestError, match=message) as error:
        parse_profiles(text, "m.yaml")
    assert "\n" not in str(error.value)


# --- NIM's selection rules -------------------------------------------------------------------------

def test_product_name_regex_and_key_restrict_gpus_and_gpu_specific_beats_generic():
    profiles = parse_profiles(NON_LLM).profiles
    a10g = select_profile(profiles, _system("A10G"), {})
    assert a10g.selected.id == _id(2), "the TensorRT engine built for the A10G beats generic ONNX"
    assert _names(a10g, RUNNABLE) == [2, 1]
    a100 = select_profile(profiles, _system("A100 SXM 80GB"), {})
    assert a100.selected.id == _id(3)
    reasons = {c.profile.id: c.reasons for c in a100.candidates}
    assert reasons[_id(2)] == ["product_name_regex '^NVIDIA-A10(?!0).*' does not match this GPU (NVIDIA-A100-SXM4-80GB)"]
    l40s = select_profile(profiles, _system("L40S"), {})
    assert l40s.selected.id == _id(1) and _names(l40s, RUNNABLE) == [1]
    assert {c.profile.id: c.reasons for c in l40s.candidates}[_id(3)] == [
        "key NVIDIA-A100-SXM4-80GB_10.0.1_12 is for NVIDIA-A100-SXM4-80GB; this GPU is NVIDIA-L40S"]
    # the key's TensorRT version is checked where the system says what is installed
    pinned = system_from_dict({"gpus": [{"product": "A10G"}], "runtimes": {"tensorrt": "10.13.0"}})
    assert select_profile(profiles, pinned, {}).selected.id == _id(1)


def test_a_product_name_regex_that_is_not_a_regular_expression_is_a_reason_not_a_crash():
    profiles = parse_profiles(f"{_id(1)}: {{tags: {{backend: tensorrt, product_name_regex: '^NVIDIA-(A10'}}}}\n").profiles
    (candidate,) = select_profile(profiles, _system("A10G"), {}).candidates
    assert candidate.status == INCOMPATIBLE and "is not a valid regular expression" in candidate.reasons[0]


def test_llm_order_prebuilt_then_buildable_then_vllm_and_sglang():
    profiles = parse_profiles(LIST_FORM).profiles
    one = select_profile(profiles, _system("H100 SXM"), {})
    assert one.selected.id == _id(10)
    # prebuilt for this GPU, then LoRA variants after; TensorRT-LLM before vLLM within a tier
    assert _names(one)[:3] == [10, 11, 14]
    status = {int(c.profile.id, 16): (c.status, c.reasons) for c in one.candidates}
    assert status[12] == (INCOMPATIBLE, ["needs 2 GPUs (tp=2 x pp=1); this system has 1"])
    assert status[13] == (LOW_MEMORY, ["needs 90000 MiB of GPU memory; GPU 0 has 81559 MiB"])
    assert status[16] == (INCOMPATIBLE, ["needs 4 GPUs (tp=1 x pp=1); this system has 1"])
    two = select_profile(profiles, _system("H200", 2), {})
    # no engine for an H200: the buildable TensorRT-LLM profiles rank above vLLM and SGLang (tp2 on two GPUs first)
    assert two.selected.id == _id(12) and _names(two, BUILDABLE) == [12, 13]
    assert _names(two, RUNNABLE) == [14, 15]


def test_lora_enabled_skips_profiles_without_feat_lora():
    profiles = parse_profiles(LIST_FORM).profiles
    lora = select_profile(profiles, _system("H100 SXM"), {"NIM_PEFT_SOURCE": "/loras"})
    assert lora.selected.id == _id(11)
    reasons = {c.profile.id: c.reasons for c in lora.candidates}
    assert reasons[_id(10)] == ["LoRA is enabled (NIM_PEFT_SOURCE is set) and this profile does not support LoRA "
                                "(feat_lora is not true)"]


def test_allow_unsafe_lets_nim_model_profile_force_an_incompatible_profile():
    profiles = parse_profiles(LIST_FORM).profiles
    with pytest.raises(SelectionError, match="which this system cannot run: needs 4 GPUs.*set NIM_MANIFEST_ALLOW_UNSAFE=1"):
        select_profile(profiles, _system("H100 SXM"), {"NIM_MODEL_PROFILE": _id(16)})
    forced = select_profile(profiles, _system("H100 SXM"), {"NIM_MODEL_PROFILE": _id(16), "NIM_MANIFEST_ALLOW_UNSAFE": "1"})
    assert forced.selected.id == _id(16) and "starting it because NIM_MANIFEST_ALLOW_UNSAFE is set" in forced.warning


# --- the listing, as NIM prints it ----------------------------------------------------------------

def test_listing_line_by_line_in_nim_format(tmp_path):
    manifest = tmp_path / "model_manifest.yaml"
    manifest.write_text(LIST_FORM)
    system = tmp_path / "system.json"
    system.write_text(json.dumps({"gpus": [{"product": "H100 SXM", "utilization_percent": 0},
                                           {"product": "H100 SXM", "index": 1, "utilization_percent": 37}]}))
    result = _cli("-m", str(manifest), env={"NIMBUILD_SYSTEM": str(system)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"read {manifest} as a NIM 1.5+ manifest (a list of profiles)"
    assert result.stdout.splitlines() == [
        "SYSTEM INFO",
        "- Free GPUs:",
        "  -  [2330:10de] (0) NVIDIA H100 80GB HBM3 (H100 SXM) [current utilization: 0%]",
        "- Non-free GPUs:",
        "  -  [2330:10de] (1) NVIDIA H100 80GB HBM3 (H100 SXM) [current utilization: 37%]",
        "MODEL PROFILES",
        "- Compatible with system and runnable:",
        f"  - {_id(10)} (tensorrt_llm-h100-fp8-throughput)",
        f"  - {_id(14)} (vllm-bf16) [requires >=18 GB/gpu]",
        "  - With LoRA support:",
        f"    - {_id(11)} (tensorrt_llm-h100-fp8-throughput-lora)",
        f"    - {_id(15)} (vllm-bf16-lora) [requires >=22 GB/gpu]",
        "- Compatible with system but low memory:",
        f"  - {_id(13)} (tensorrt_llm-bf16-buildable) [requires >=88 GB/gpu]",
        "- Compilable to TRT-LLM using just-in-time compilation of HF models to TRTLLM engines:",
        f"  - {_id(12)} (tensorrt_llm-bf16-tp2-buildable)",
        "- Incompatible with system:",
        f"  - {_id(16)} (sglang-bf16)",
    ]
    data = json.loads(_cli("-m", str(manifest), "--format", "json", env={"NIMBUILD_SYSTEM": str(system)}).stdout)
    assert data["manifest"]["format"] == "nim-list" and data["free_gpus"] == [0]
    facts = {int(p["id"], 16): (p["group"], p["lora"], p["requires_gb_per_gpu"]) for p in data["profiles"]}
    assert facts[15] == ("Compatible with system and runnable", True, 22)
    assert facts[13] == ("Compatible with system but low memory", False, 88)
    assert data["system"]["gpus"][1]["utilization_percent"] == 37


def test_empty_groups_say_none_and_a_cpu_system_has_no_gpus(tmp_path):
    manifest = tmp_path / "model_manifest.yaml"
    manifest.write_text(NON_LLM)
    system = tmp_path / "cpu.json"
    system.write_text('{"gpus": []}')
    lines = _cli("-m", str(manifest), env={"NIMBUILD_SYSTEM": str(system)}).stdout.splitlines()
    assert lines[:5] == ["SYSTEM INFO", "- Free GPUs:", "  - <None>", "- Non-free GPUs:", "  - <None>"]
    assert lines[lines.index("- Compatible with system but low memory:") + 1] == "  - <None>"


def test_an_id_of_digits_keeps_its_leading_zeros():
    digits = "0" + "1234567890" * 6 + "123"
    for text in (f"{digits}:\n  tags: {{backend: onnx}}\n", f"- id: {digits}\n  tags: {{backend: onnx}}\n"):
        read = parse_profiles(text)
        assert [p.id for p in read.profiles] == [digits]


def test_a_system_file_with_a_word_for_utilisation_is_one_line(tmp_path):
    system = tmp_path / "system.json"
    system.write_text('{"gpus": [{"product": "L40S", "utilization_percent": "busy"}]}')
    manifest = tmp_path / "model_manifest.yaml"
    manifest.write_text(NON_LLM)
    result = _cli("-m", str(manifest), env={"NIMBUILD_SYSTEM": str(system)})
    assert result.returncode != 0 and "utilization_percent must be a whole number, got 'busy'" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_warns_of_a_product_name_regex_the_operators_go_regexp_cannot_compile(tmp_path):
    """nimbuild's selection takes Python's look-aheads; the NIM Operator's RE2 cannot, and there the
    profile silently never matches: the export for it names the profile."""
    import subprocess
    import sys

    from helpers import nim_operator as op

    manifest = tmp_path / "model_manifest.yaml"
    manifest.write_text(NON_LLM)
    result = subprocess.run([sys.executable, "-m", "nimbuild", "profiles", "export", "-m", str(manifest)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    (warning,) = result.stderr.splitlines()
    assert warning.startswith(f"warning: profile {_id(2)} (tensorrt-fp16): product_name_regex '^NVIDIA-A10(?!0).*' "
                              "is not RE2 syntax (invalid perl operator: (?!)")
    # what the warning foretells: the operator's matching never picks it for an A10G, nimbuild's does
    parsed = op.parse(result.stdout)
    assert _id(2) not in op.match_profiles(parsed, op.ModelSpec(engine="tensorrt"), ["NVIDIA-A10G"])
    system = system_from_dict({"gpus": [{"product": "A10G"}]})
    assert select_profile(parse_profiles(NON_LLM).profiles, system, {}).selected.id == _id(2)
