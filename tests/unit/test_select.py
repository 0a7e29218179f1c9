"""Selection over simulated systems: the chosen profile and every reason, table-driven."""

from __future__ import annotations

import hashlib

import pytest

from nimbuild.errors import NimbuildError, SelectionError
from nimbuild.profiles.manifest import Profile, WorkspaceFile
from nimbuild.profiles.select import BUILDABLE, INCOMPATIBLE, LOW_MEMORY, RUNNABLE, parse_selector, select_profile
from nimbuild.profiles.system import system_from_dict

RUNTIMES = {"tensorrt": "10.13.0", "tensorrt_rtx": "1.7.1", "onnxruntime": "1.31.1"}


def _p(tags: dict, requires: dict | None = None) -> Profile:
    content = repr(sorted(tags.items())).encode()
    file = WorkspaceFile("x", "sha256:" + hashlib.sha256(content).hexdigest(), 1)
    return Profile.create("m", "1.0", tags, {"model.bin": file}, requires=requires)


def _rtx(cc, **kw):
    return _p({"backend": "tensorrt_rtx", "type": "prebuilt", "precision": "fp16", "compute_capability": cc,
               "trt_version": "1.7.1", "profile": "throughput", "tp": "1", **kw})


def _trt(cc, precision, tp="1", profile="throughput", requires=None, **kw):
    return _p({"backend": "tensorrt", "type": "prebuilt", "precision": precision, "compute_capability": cc,
               "trt_version": "10.13.0", "profile": profile, "tp": tp, **kw}, requires)


PROFILES = {
    "G32": _p({"backend": "onnxruntime", "type": "generic", "precision": "fp32", "profile": "throughput"}),
    "G16": _p({"backend": "onnxruntime", "type": "generic", "precision": "fp16", "profile": "throughput"}),
    "G8": _p({"backend": "onnxruntime", "type": "generic", "precision": "int8", "profile": "latency"}),
    "R16": _p({"backend": "rmir", "type": "rmir", "precision": "fp16"}, {"min_compute_capability": "7.5"}),
    "R8": _p({"backend": "rmir", "type": "rmir", "precision": "fp8"}, {"min_compute_capability": "8.9"}),
    "RTX89": _rtx("8.9"),
    "RTX80_86": _rtx("8.0,8.6"),
    "T90_8": _trt("9.0", "fp8"),
    "T90_8_tp8_lat": _trt("9.0", "fp8", tp="8", profile="latency"),
    "T90_16_tp2": _trt("9.0", "fp16", tp="2"),
    "TL40S": _trt("8.9", "bf16", gpu="L40S", gpu_device="26b9:10de"),
    "T80_mem": _trt("8.0", "fp16", tp="2", requires={"gpu_memory_mib": 60000}),
}
NAME = {p.id: name for name, p in PROFILES.items()}


def _system(product: str | None, count: int = 1, runtimes=RUNTIMES):
    gpus = [{"product": product, "index": i} for i in range(count)] if product else []
    return system_from_dict({"gpus": gpus, "runtimes": runtimes})


def _run(system, env=None, profiles=None):
    selection = select_profile(list((profiles or PROFILES).values()), system, env or {})
    status = {NAME[c.profile.id]: (c.status, c.reasons) for c in selection.candidates}
    chosen = NAME[selection.selected.id] if selection.selected else None
    return chosen, status, selection


# system, expected choice, the compatible set in preference order: tier first (exact GPU, this compute
# capability, rmir, generic), then precision (on a GPU fp8 > int8 > fp16/bf16 > fp32; on a CPU
# int8 > fp32 > fp16), then throughput over latency, then tp x pp closest to the GPU count
CASES = [
    ("CPU only", None, 1, "G8", ["G8", "G32", "G16"]),
    ("1x L4", "L4", 1, "RTX89", ["RTX89", "R8", "R16", "G8", "G16", "G32"]),
    ("1x L40S", "L40S", 1, "TL40S", ["TL40S", "RTX89", "R8", "R16", "G8", "G16", "G32"]),
    ("2x A100 40GB", "A100 SXM 40GB", 2, "RTX80_86", ["RTX80_86", "R16", "G8", "G16", "G32"]),
    ("8x H100 SXM", "H100 SXM", 8, "T90_8", ["T90_8", "T90_8_tp8_lat", "T90_16_tp2", "R8", "R16", "G8", "G16", "G32"]),
    ("1x H200", "H200", 1, "T90_8", ["T90_8", "R8", "R16", "G8", "G16", "G32"]),
    ("1x RTX 4090", "RTX 4090", 1, "RTX89", ["RTX89", "R8", "R16", "G8", "G16", "G32"]),
]


@pytest.mark.parametrize("label,product,count,expected,order", CASES, ids=[c[0] for c in CASES])
def test_choice_and_preference_order(label, product, count, expected, order):
    chosen, status, selection = _run(_system(product, count))
    assert chosen == expected
    compatible = [NAME[c.profile.id] for c in selection.candidates if c.compatible]
    assert compatible == order
    for name in order:
        assert status[name][1] == [], f"{name} is compatible and has no reasons"
    for name, (state, reasons) in status.items():
        if name not in order:
            assert state in (INCOMPATIBLE, LOW_MEMORY) and reasons, f"{name} on {label} must say why"
    rmir = {"R16", "R8"}
    assert {status[n][0] for n in order if n in rmir} <= {BUILDABLE}
    assert {status[n][0] for n in order if n not in rmir} == {RUNNABLE}


def test_every_reason_on_a_cpu_system():
    _, status, _ = _run(_system(None))
    assert status["RTX89"][1] == ["needs a GPU (backend tensorrt_rtx); this system has none"]
    assert status["R16"][1] == ["needs a GPU (backend rmir); this system has none"]
    assert status["G16"][0] == RUNNABLE


def test_every_reason_on_one_l4():
    _, status, _ = _run(_system("L4"))
    assert status["TL40S"][1] == ["built for GPU L40S / 26b9:10de; this system has NVIDIA L4 (27b8:10de)"]
    assert status["RTX80_86"][1] == ["compute capability 8.9 is not among the engine's 8.0, 8.6"]
    assert status["T90_8_tp8_lat"][1] == [
        "compute capability 8.9 is not among the engine's 9.0",
        "needs 8 GPUs (tp=8 x pp=1); this system has 1",
    ]
    assert status["T80_mem"][1] == [
        "compute capability 8.9 is not among the engine's 8.0",
        "needs 2 GPUs (tp=2 x pp=1); this system has 1",
        "needs 60000 MiB of GPU memory; GPU 0 has 23034 MiB",
    ]


def test_precision_the_hardware_cannot_run_is_incompatible():
    _, status, _ = _run(_system("A100 SXM 40GB", 2))
    assert status["R8"][1] == ["needs compute capability 8.9 or newer; this GPU has 8.0",
                               "precision fp8 needs compute capability 8.9+; this GPU has 8.0"]
    # short of memory alone: NIM's "compatible with system but low memory", never selected
    assert status["T80_mem"] == (LOW_MEMORY, ["needs 60000 MiB of GPU memory; GPU 0 has 40960 MiB"])


def test_bf16_below_ampere():
    bf16 = _p({"backend": "onnxruntime", "type": "generic", "precision": "bf16"})
    NAME[bf16.id] = "Gbf16"
    chosen, status, selection = _run(_system("T4"), profiles={"Gbf16": bf16})
    assert chosen is None
    assert status["Gbf16"][1] == ["precision bf16 needs compute capability 8.0+; this GPU has 7.5"]
    assert "no profile is compatible with this system (Tesla T4 (7.5))" in selection.why_none
    with pytest.raises(SelectionError, match="no profile is compatible"):
        selection.require()


def test_engine_runtime_version_must_be_installed():
    _, status, _ = _run(_system("H200", runtimes={"tensorrt": "10.12.0"}))
    assert "engine was built with tensorrt 10.13.0; 10.12.0 is installed" in status["T90_8"][1]
    _, status, _ = _run(_system("H200", runtimes={}))
    assert "engine needs tensorrt 10.13.0, which is not installed" in status["T90_8"][1]
    # a simulated system that does not describe its runtimes is not judged on them
    chosen, _, _ = _run(_system("H200", runtimes=None))
    assert chosen == "T90_8"


def test_an_rmir_needs_a_builder_for_this_gpu_installed():
    _, status, _ = _run(_system("L4", runtimes={}))
    assert status["R16"] == (INCOMPATIBLE, ["building the engine for compute capability 8.9 at first start needs "
                                            "tensorrt_rtx or, on that GPU, tensorrt; neither is installed"])
    for builder in ("tensorrt_rtx", "tensorrt"):  # either builds for an Ada GPU
        _, status, _ = _run(_system("L4", runtimes={builder: "1.7.1"}))
        assert status["R16"][0] == BUILDABLE
    # TensorRT-RTX has no Hopper target: on an H100 only datacenter TensorRT can build the engine
    _, status, _ = _run(_system("H100 SXM", runtimes={"tensorrt_rtx": "1.7.1"}))
    assert status["R16"] == (INCOMPATIBLE, ["building the engine for compute capability 9.0 at first start needs "
                                            "TensorRT on that GPU, which is not installed (TensorRT-RTX builds only "
                                            "for 7.5, 8.0, 8.6, 8.9, 12.0, 12.1)"])
    _, status, _ = _run(_system("H100 SXM", runtimes={"tensorrt": "10.13.0"}))
    assert status["R16"][0] == BUILDABLE


def test_the_tensorrt_rtx_targets_selection_knows_are_the_installed_builders():
    trt = pytest.importorskip("tensorrt_rtx")
    from nimbuild.profiles.builders import TENSORRT_RTX_TARGETS

    installed = sorted((n[2:-1] + "." + n[-1] for n in dir(trt.ComputeCapability) if n.startswith("SM")),
                       key=lambda cc: tuple(map(int, cc.split("."))))
    assert list(TENSORRT_RTX_TARGETS) == installed


def test_version_compatible_and_hardware_compatible_engines():
    vc = _trt("9.0", "fp16", trt_version="10.8.0", version_compatible="true")
    hc = _trt("8.0", "fp16", hardware_compatibility="ampere_plus", trt_version="10.13.0")
    NAME[vc.id], NAME[hc.id] = "VC", "HC"
    _, status, _ = _run(_system("H200"), profiles={"VC": vc, "HC": hc})
    assert status["VC"][0] == RUNNABLE, status["VC"]
    assert status["HC"][0] == RUNNABLE, "an Ampere-plus engine runs on Hopper"
    _, status, _ = _run(_system("T4"), profiles={"HC": hc})
    assert status["HC"][0] == INCOMPATIBLE


def test_latency_preference_and_tp_closest_to_gpu_count():
    chosen, _, _ = _run(_system("H100 SXM", 8), {"NIMBUILD_PREFER_PROFILE": "latency"})
    assert chosen == "T90_8_tp8_lat"
    tp1, tp8 = _trt("9.0", "fp16", tp="1"), _trt("9.0", "fp16", tp="8")
    NAME[tp1.id], NAME[tp8.id] = "tp1", "tp8"
    chosen, _, _ = _run(_system("H100 SXM", 8), profiles={"tp1": tp1, "tp8": tp8})
    assert chosen == "tp8"
    chosen, _, _ = _run(_system("H100 SXM", 1), profiles={"tp1": tp1, "tp8": tp8})
    assert chosen == "tp1"
    with pytest.raises(NimbuildError, match="NIMBUILD_PREFER_PROFILE='fastest'"):
        _run(_system("H200"), {"NIMBUILD_PREFER_PROFILE": "fastest"})


# --- overrides ------------------------------------------------------------------------------------

def test_nim_model_profile_by_id_prefix_and_description():
    target = PROFILES["T90_16_tp2"]
    for value in (target.id, target.id[:10], target.description):
        chosen, _, _ = _run(_system("H100 SXM", 8), {"NIM_MODEL_PROFILE": value})
        assert chosen == "T90_16_tp2", value


def test_nim_model_profile_failures_name_what_was_sought_and_what_exists():
    with pytest.raises(SelectionError) as info:
        _run(_system("H200"), {"NIM_MODEL_PROFILE": "tensorrt-sm75-fp16"})
    message = str(info.value)
    assert "'tensorrt-sm75-fp16' matches no profile id or description" in message
    assert PROFILES["T90_8"].id in message and "tensorrt-sm90-fp8-throughput" in message
    with pytest.raises(SelectionError, match=r"names .* \(tensorrt-sm90-fp8-tp8-latency\), which this system "
                                             r"cannot run: needs 8 GPUs"):
        _run(_system("H200"), {"NIM_MODEL_PROFILE": "tensorrt-sm90-fp8-tp8-latency"})


def test_tags_selector_filters_and_reports():
    chosen, status, _ = _run(_system("H100 SXM", 8), {"NIM_TAGS_SELECTOR": "precision=fp16, backend=tensorrt"})
    assert chosen == "T90_16_tp2"
    assert status["T90_8"][1] == ["does not match NIM_TAGS_SELECTOR (precision=fp8)"]
    assert status["G32"][1] == ["does not match NIM_TAGS_SELECTOR (precision=fp32, backend=onnxruntime)"]


def test_tags_selector_with_an_unknown_key_matches_nothing_and_says_so():
    chosen, status, selection = _run(_system("L40S"), {"NIM_TAGS_SELECTOR": "colour=blue"})
    assert chosen is None
    assert all("has no tag 'colour'" in reasons[-1] for _, reasons in status.values())
    assert "does not match NIM_TAGS_SELECTOR" in selection.why_none


@pytest.mark.parametrize("text", ["precision", "precision=fp16,tp", "=fp16"])
def test_selector_without_equals_is_an_error(text):
    with pytest.raises(NimbuildError, match="is not key=value"):
        parse_selector(text)


def test_selection_is_pure_and_order_independent():
    system = _system("L4")
    forward = select_profile(list(PROFILES.values()), system, {})
    backward = select_profile(list(reversed(PROFILES.values())), system, {})
    assert [c.profile.id for c in forward.candidates] == [c.profile.id for c in backward.candidates]
    assert forward.selected.id == backward.selected.id


def test_on_a_cpu_weight_only_int8_comes_first_then_int4_then_fp32():
    """Text generation's gated weight-only variants: int8 rounds least of the fast ones, int4 next."""
    tags = {"backend": "onnxruntime", "type": "generic", "profile": "throughput", "tp": "1"}
    generation = {p: _p({**tags, "precision": p}) for p in ("fp32", "int8", "int4")}
    names = {p.id: name for name, p in generation.items()}
    chosen = lambda keep: names[select_profile([generation[k] for k in keep], _system(None), {}).selected.id]
    assert chosen(["fp32", "int8", "int4"]) == "int8"
    assert chosen(["fp32", "int4"]) == "int4"
    assert chosen(["fp32"]) == "fp32"
