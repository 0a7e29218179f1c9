"""The deploy step: every profile kind of the examples becomes a Triton model repository.

On this CPU machine: the repositories of every MiniLM and asr-digits profile (generic, TRT-RTX,
RMIR for a simulated RTX GPU, datacenter TensorRT for a simulated H100 from a fixture engine
profile) are written by `create-model-store`; every config.pbtxt is parsed against Triton's own
schema (tritonclient's model_config protobuf, read here independently of the writer), ensembles are
checked name for name against their members, engine bindings against the ONNX graph the engine was
built from, and no repository names a path outside itself. A written repository is served by a real
`tritonserver --model-repository`. GPU tests (marked) serve engines where a GPU exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from helpers.gpu import needs as _needs
from helpers.servers import free_port
from helpers.triton import embed_from_repository

A10 = {"gpus": [{"product": "A10"}]}  # compute capability 8.6: TRT-RTX builds for it without the GPU
H100 = {"gpus": [{"product": "H100 SXM"}], "runtimes": {"tensorrt_rtx": "1.7.1", "onnxruntime": "1.20.0"}}
NGC_BACKENDS = "python,onnxruntime,tensorrt"  # what NGC's Triton container has (among others)


def create_store(manifest: Path, profile: str, store: Path, cache: Path, system: dict | None = None,
                 backends: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NIM_CACHE_PATH": str(cache)}
    if system is not None:
        (cache.parent / "system.json").write_text(json.dumps(system))
        env["NIMBUILD_SYSTEM"] = str(cache.parent / "system.json")
    args = [sys.executable, "-m", "runtime_min", "create-model-store", "--profile", profile, "--model-store", str(store),
            "--manifest", str(manifest)] + (["--triton-backends", backends] if backends else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)


def read_repository(store: Path) -> dict:
    """{model name: ModelConfig}, each config.pbtxt parsed with Triton's schema."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    configs = {}
    for path in sorted(store.glob("*/config.pbtxt")):
        text = path.read_text()
        configs[path.parent.name] = text_format.Parse(text, mc.ModelConfig())
        assert configs[path.parent.name].name == path.parent.name
        assert str(store) not in text and "/" not in "".join(p.string_value for p in configs[path.parent.name].parameters.values()), \
            f"{path}: names a path"
    for path in store.rglob("*"):
        assert not path.is_symlink(), f"{path}: a link"
    return configs


def check_ensembles(configs: dict) -> None:
    """Every ensemble step names a model of the repository and only its inputs and outputs; every
    tensor a step reads is an ensemble input or an earlier step's output, of the same type."""
    from tritonclient.grpc import model_config_pb2 as mc

    for name, config in configs.items():
        if config.platform != "ensemble":
            continue
        produced = {t.name: t.data_type for t in config.input}
        for step in config.ensemble_scheduling.step:
            member = configs[step.model_name]
            inputs = {t.name: t.data_type for t in member.input}
            outputs = {t.name: t.data_type for t in member.output}
            assert set(step.input_map) == {t.name for t in member.input if not t.optional}, (name, step.model_name)
            for key, tensor in step.input_map.items():
                assert tensor in produced, f"{name}: {step.model_name} reads {tensor}, which nothing before it makes"
                assert produced[tensor] == inputs[key], f"{name}: {tensor} changes type into {step.model_name}"
            for key, tensor in step.output_map.items():
                assert key in outputs, f"{name}: {step.model_name} has no output {key}"
                produced[tensor] = outputs[key]
            assert member.max_batch_size >= config.max_batch_size > 0
        for out in config.output:
            assert produced.get(out.name) == out.data_type, f"{name}: output {out.name} is not produced"
        assert all(mc.DataType.Name(t) for t in produced.values())


def check_bindings(config, onnx_path: Path) -> None:
    """A native core's config states the ONNX graph's inputs and outputs: names, element types and
    every non-batch dimension (fixed sizes equal, dynamic ones -1), as TensorRT's and onnxruntime's
    backends require."""
    import onnx
    from onnx import helper
    from tritonclient.grpc import model_config_pb2 as mc

    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def expected(values):
        out = {}
        for v in values:
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim][1:]
            dtype = helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
            out[v.name] = ({"float32": "TYPE_FP32", "int64": "TYPE_INT64", "float16": "TYPE_FP16"}[dtype], dims)
        return out

    def stated(tensors):
        return {t.name: (mc.DataType.Name(t.data_type), [] if t.HasField("reshape") and not t.reshape.shape else list(t.dims))
                for t in tensors}

    assert stated(config.input) == expected(graph.input)
    assert stated(config.output) == expected(graph.output)


def onnx_of(workspace: Path, tmp: Path) -> Path:
    """The graph a profile's engine was built from: the generic graph of its precision, or the one
    inside its RMIR."""
    if (workspace / "model.rmir").exists():
        with tarfile.open(workspace / "model.rmir") as tar:
            tar.extract("model.onnx", tmp, filter="data")
        return tmp / "model.onnx"
    return workspace / "model.onnx"


# --- every example profile --------------------------------------------------------------------

def _profiles(out: Path) -> list:
    from nimbuild.profiles.manifest import load_manifest

    return load_manifest(out / "profiles.yaml").profiles


def test_every_minilm_profile_becomes_a_repository(minilm_compiled, tmp_path):
    out, _ = minilm_compiled
    seen = set()
    for profile in _profiles(out):
        kind = profile.tags.get("type")
        system = A10 if kind == "rmir" else None
        store = tmp_path / profile.description
        result = create_store(out / "profiles.yaml", profile.description, store, tmp_path / "cache", system)
        assert result.returncode == 0, result.stderr
        configs = read_repository(store)
        check_ensembles(configs)
        (main,) = [c for c in configs.values() if c.name == "minilm-embed"]
        params = {k: v.string_value for k, v in main.parameters.items()}
        runner = params["runner"]
        assert runner == {"generic": "onnxruntime"}.get(kind, "tensorrt_rtx"), profile.description
        assert (store / "minilm-embed/1" / params["core"]).is_file()
        assert main.instance_group[0].kind == (main.instance_group[0].KIND_CPU if runner == "onnxruntime"
                                               else main.instance_group[0].KIND_GPU)
        # a Triton with the onnxruntime backend runs generic graphs natively, pooling after it
        if kind == "generic":
            native = tmp_path / f"{profile.description}-ngc"
            assert create_store(out / "profiles.yaml", profile.description, native, tmp_path / "cache",
                                backends=NGC_BACKENDS).returncode == 0
            configs = read_repository(native)
            check_ensembles(configs)
            assert configs["minilm-embed-core"].backend == "onnxruntime"
            check_bindings(configs["minilm-embed-core"], out / "profiles" / profile.description / "model.onnx")
        if kind == "rmir":  # the engine was built from the archive's graph: the Python model takes its inputs
            import onnx

            graph = onnx.load(str(onnx_of(out / "profiles" / profile.description, tmp_path)), load_external_data=False)
            assert [t.name for t in main.input] == [i.name for i in graph.graph.input]
        seen.add(kind)
    assert seen == {"generic", "prebuilt", "rmir"}


def test_a_tensorrt_engine_for_an_h100_is_an_ensemble_around_tritons_tensorrt_backend(minilm_compiled, tmp_path):
    """A fixture engine profile (TensorRT cannot build here): the TRT-RTX sm89 fp16 workspace with
    a placeholder engine, tagged as a datacenter TensorRT engine for compute capability 9.0."""
    from nimbuild.profiles.manifest import Manifest, Profile, WorkspaceFile
    from nimbuild.util.files import sha256_file

    out, _ = minilm_compiled
    source = out / "profiles/tensorrt_rtx-sm89-fp16-throughput"
    workspace = tmp_path / "fixture/profiles/tensorrt-sm90-fp16-throughput"
    shutil.copytree(source, workspace)
    (workspace / "model.plan").write_bytes(b"fixture: not an engine; the repository is written, not served")
    files = {p.relative_to(workspace).as_posix(): WorkspaceFile(
        uri=f"profiles/tensorrt-sm90-fp16-throughput/{p.relative_to(workspace).as_posix()}",
        digest="sha256:" + sha256_file(p), size=p.stat().st_size) for p in sorted(workspace.rglob("*")) if p.is_file()}
    tags = {"backend": "tensorrt", "type": "prebuilt", "precision": "fp16", "compute_capability": "9.0",
            "trt_version": "10.13.0", "profile": "throughput", "tp": "1"}
    Manifest([Profile.create("minilm-embed", "0.1.0", tags, files, requires={"gpus": 1})]).save(tmp_path / "fixture/profiles.yaml")

    # a Triton without the TensorRT backend (the bundled one): the Python model runs the engine itself
    bundled = create_store(tmp_path / "fixture/profiles.yaml", "tensorrt-sm90-fp16-throughput", tmp_path / "bundled",
                           tmp_path / "cache", H100)
    assert bundled.returncode == 0, bundled.stderr
    config = read_repository(tmp_path / "bundled")["minilm-embed"]
    assert config.backend == "python" and config.parameters["runner"].string_value == "tensorrt"
    store = tmp_path / "store"
    result = create_store(tmp_path / "fixture/profiles.yaml", "tensorrt-sm90-fp16-throughput", store, tmp_path / "cache",
                          H100, backends=NGC_BACKENDS)
    assert result.returncode == 0, result.stderr
    configs = read_repository(store)
    check_ensembles(configs)
    core = configs["minilm-embed-core"]
    assert core.platform == "tensorrt_plan" and (store / "minilm-embed-core/1/model.plan").is_file()
    assert core.instance_group[0].kind == core.instance_group[0].KIND_GPU and list(core.instance_group[0].profile) == ["0"]
    assert core.max_batch_size == 64, "the recipe's batch range [1, 8, 64] caps the engine's batch"
    check_bindings(core, out / "profiles/onnxruntime-fp16-throughput/model.onnx")
    assert [s.model_name for s in configs["minilm-embed"].ensemble_scheduling.step] == ["minilm-embed-core",
                                                                                        "minilm-embed-pool"]


def test_every_asr_digits_profile_becomes_a_repository(digits_compiled, tmp_path):
    for profile in _profiles(digits_compiled):
        kind = profile.tags["type"]
        for backends in (None, NGC_BACKENDS):
            store = tmp_path / f"{profile.description}-{'ngc' if backends else 'here'}"
            result = create_store(digits_compiled / "profiles.yaml", profile.description, store, tmp_path / "cache",
                                  A10 if kind == "rmir" else None, backends)
            assert result.returncode == 0, result.stderr
            configs = read_repository(store)
            check_ensembles(configs)
            assert {"asr-digits", "asr-digits-features", "asr-digits-decoder"} <= set(configs)
            assert ("asr-digits-stream" in configs) == (profile.tags["mode"] == "str")
            if "asr-digits-stream" in configs:
                stream = configs["asr-digits-stream"]
                assert [c.name for c in stream.sequence_batching.control_input] == ["START", "END", "CORRID"]
            if kind == "generic" and backends:  # the acoustic model on Triton's onnxruntime backend
                check_bindings(configs["asr-digits-core"], digits_compiled / "profiles" / profile.description / "model.onnx")
                runner = {k: v.string_value for k, v in configs["asr-digits-stream"].parameters.items()}["runner"] \
                    if "asr-digits-stream" in configs else None
                assert runner in (None, "triton:asr-digits-core"), "the stream model calls the native core (BLS)"
            else:
                encoder = {k: v.string_value for k, v in configs["asr-digits-encoder"].parameters.items()}
                assert encoder["runner"] == ("onnxruntime" if kind == "generic" else "tensorrt_rtx")
                assert (store / "asr-digits-encoder/1" / encoder["core"]).is_file()
                assert (store / "asr-digits-features/1/asr/filterbank.npy").is_file()


def test_an_rmir_for_a_simulated_rtx_gpu_builds_a_real_engine_once(minilm_compiled, tmp_path):
    """The first start builds a TRT-RTX engine for compute capability 8.6 on this CPU, a second
    reuses it from the cache (keyed by archive digest, capability, builder and version)."""
    out, _ = minilm_compiled
    cache = tmp_path / "cache"
    first = create_store(out / "profiles.yaml", "rmir-fp16-throughput", tmp_path / "one", cache, A10)
    assert first.returncode == 0, first.stderr
    assert "RMIR built an engine for compute capability 8.6 with tensorrt_rtx" in first.stderr
    (slot,) = [p for p in (cache / "local_cache" / "rmir-engines").glob("*/sm86-tensorrt_rtx-*") if p.is_dir()]
    record = json.loads((slot / "deploy.json").read_text())
    assert record["builder"] == "tensorrt_rtx" and record["compute_capability"] == "8.6"
    engine = (tmp_path / "one/minilm-embed/1/model.plan").read_bytes()
    assert engine == (slot / "model.plan").read_bytes() and len(engine) > 1 << 20
    second = create_store(out / "profiles.yaml", "rmir-fp16-throughput", tmp_path / "two", cache, A10)
    assert second.returncode == 0 and "RMIR reused the engine for compute capability 8.6" in second.stderr
    import onnx

    config = read_repository(tmp_path / "two")["minilm-embed"]
    graph = onnx.load(str(onnx_of(out / "profiles/rmir-fp16-throughput", tmp_path)), load_external_data=False).graph
    assert [t.name for t in config.input] == [i.name for i in graph.input], "the engine takes the archive graph's inputs"


def test_the_engine_an_rmir_becomes_is_written_back_as_nimbuild_reads_it(minilm_compiled, tmp_path, monkeypatch):
    """NIMBuild's contract: the built engine is a profile of its own in local_cache/local_manifest.yaml,
    found by its model_name tag (nimbuild_controller.go), and a later start may name it."""
    from helpers import nim_operator as op
    from nimbuild.profiles.nim import read_profiles

    out, _ = minilm_compiled
    cache = tmp_path / "cache"
    rmir = next(p for p in read_profiles(out / "profiles.yaml").profiles if p.description == "rmir-fp16-throughput")
    monkeypatch.setenv("NIM_CUSTOM_MODEL_NAME", "minilm-a10")  # what the NIMBuild's build pod is given
    first = create_store(out / "profiles.yaml", "rmir-fp16-throughput", tmp_path / "one", cache, A10)
    monkeypatch.delenv("NIM_CUSTOM_MODEL_NAME")
    assert first.returncode == 0, first.stderr
    local = cache / "local_cache" / "local_manifest.yaml"
    parsed = op.parse(local.read_text())  # what the operator's `cat` of it parses to
    assert parsed.version == "v2"
    (built_id,) = [pid for pid, tags in parsed.profiles.items() if tags.get("model_name") == "minilm-a10"]
    tags = parsed.profiles[built_id]
    assert (tags["backend"], tags["type"], tags["compute_capability"], tags["built_from"]) == \
        ("tensorrt_rtx", "prebuilt", "8.6", rmir.id)
    (built,) = read_profiles(local).profiles
    assert built.id == built_id and built.description == "tensorrt_rtx-sm86-fp16-throughput-local"
    # the built profile serves as the prebuilt engine it is, by id or by its description
    again = create_store(out / "profiles.yaml", built.description, tmp_path / "two", cache, A10)
    assert again.returncode == 0, again.stderr
    (slot,) = [p for p in (cache / "local_cache" / "rmir-engines").glob("*/sm86-tensorrt_rtx-*") if p.is_dir()]
    assert (tmp_path / "two/minilm-embed/1/model.plan").read_bytes() == (slot / "model.plan").read_bytes()
    assert "RMIR" not in again.stderr  # nothing is built for it
    # the RMIR started again reuses its engine and finds it recorded: one entry still
    monkeypatch.setenv("NIM_CUSTOM_MODEL_NAME", "minilm-a10")
    third = create_store(out / "profiles.yaml", "rmir-fp16-throughput", tmp_path / "three", cache, A10)
    assert third.returncode == 0 and "RMIR reused the engine" in third.stderr, third.stderr
    assert [p.id for p in read_profiles(local).profiles] == [built_id]


def test_an_rmir_on_a_simulated_h100_without_tensorrt_is_refused_at_selection(minilm_compiled, tmp_path):
    out, _ = minilm_compiled
    (tmp_path / "h100.json").write_text(json.dumps(H100))
    result = subprocess.run(
        [sys.executable, "-m", "runtime_min", "serve", "--manifest", str(out / "profiles.yaml"),
         "--registry", str(tmp_path / "no-such-registry"), "--port", str(free_port())],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "NIMBUILD_SYSTEM": str(tmp_path / "h100.json"), "NIM_MODEL_PROFILE": "rmir-fp16-throughput",
             "NIM_CACHE_PATH": str(tmp_path / "cache")})
    assert result.returncode == 1, result.stderr
    assert ("building the engine for compute capability 9.0 at first start needs TensorRT on that GPU, which is not "
            "installed (TensorRT-RTX builds only for 7.5, 8.0, 8.6, 8.9, 12.0, 12.1)") in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "cache" / "blobs").exists(), "nothing was fetched"


@pytest.mark.parametrize("profile,message", [
    ("tensorrt_rtx-sm89-fp16-throughput", "runs as tensorrt_rtx (tensorrt_rtx in a Python model, GPU); this machine has no GPU"),
    ("rmir-fp16-throughput", "becomes an engine for this GPU; this machine has no GPU"),
])
def test_serving_an_engine_on_a_machine_without_a_gpu_is_refused_before_download(minilm_compiled, tmp_path, profile,
                                                                                 message):
    """Selection judged a simulated L40S; only this machine can say it has no GPU to run the engine on."""
    out, _ = minilm_compiled
    (tmp_path / "system.json").write_text(json.dumps({"gpus": [{"product": "L40S"}]}))
    result = subprocess.run(
        [sys.executable, "-m", "runtime_min", "serve", "--manifest", str(out / "profiles.yaml"),
         "--registry", str(tmp_path / "no-such-registry"), "--port", str(free_port())],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "NIMBUILD_SYSTEM": str(tmp_path / "system.json"), "NIM_MODEL_PROFILE": profile,
             "NIM_CACHE_PATH": str(tmp_path / "cache")})
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "cache" / "blobs").exists(), "nothing was fetched"


def test_a_written_repository_is_served_by_a_plain_tritonserver_after_it_is_moved(minilm_compiled, tmp_path):
    """create-model-store's output alone, copied elsewhere (it names no path outside itself),
    served by `tritonserver --model-repository` and called with tritonclient."""
    from runtime_min.triton import locate_triton

    out, _ = minilm_compiled
    result = create_store(out / "profiles.yaml", "onnxruntime-fp32-throughput", tmp_path / "store", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "store", moved)
    shutil.rmtree(tmp_path / "store")
    embedding = embed_from_repository(locate_triton(tmp_path / "cache"), moved, tmp_path / "triton.log")
    assert embedding.shape == (1, 384) and abs(np.linalg.norm(embedding) - 1) < 1e-5


def test_nimbuild_create_model_store_is_the_same_command(minilm_compiled, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from nimbuild.cli import main

    out, _ = minilm_compiled
    monkeypatch.setenv("NIM_CACHE_PATH", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, ["create-model-store", "-p", "onnxruntime-int8-throughput", "--model-store",
                                       str(tmp_path / "store"), "-m", str(out / "profiles.yaml")])
    assert result.exit_code == 0, result.output
    assert "wrote 1 model(s)" in result.output and (tmp_path / "store/minilm-embed/1/model.onnx").is_file()
    missing = CliRunner().invoke(main, ["create-model-store", "-p", "nope", "--model-store", str(tmp_path / "x"),
                                        "-m", str(out / "profiles.yaml")])
    assert missing.exit_code != 0 and "matches no profile id or description" in missing.output
    assert not (tmp_path / "x").exists()
    # every task has Python models (here the pooling step): a Triton without the Python backend cannot serve it
    lacking = CliRunner().invoke(main, ["create-model-store", "-p", "onnxruntime-int8-throughput", "--model-store",
                                        str(tmp_path / "y"), "-m", str(out / "profiles.yaml"),
                                        "--triton-backends", "onnxruntime"])
    assert lacking.exit_code == 2 and "Traceback" not in lacking.output
    assert ("cannot serve this onnxruntime profile: it runs as onnxruntime (Triton's onnxruntime backend), which needs "
            "Triton's onnxruntime and python backends") in lacking.output, lacking.output


# --- on a GPU host (skipped here with the reason) ------------------------------------------------


def _serve_and_embed(manifest: Path, cache: Path, env: dict) -> np.ndarray:
    import httpx

    from helpers.runtime import SENTENCES, Runtime

    served = Runtime(manifest, cache, env=env)
    try:
        served.wait_ready(600)
        r = httpx.post(f"{served.url}/v1/embeddings", json={"model": "minilm-embed", "input": SENTENCES}, timeout=60)
        assert r.status_code == 200, r.text
        return np.array([d["embedding"] for d in r.json()["data"]])
    finally:
        assert served.stop() == 0


def _reference_embeddings(minilm_dir) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    from helpers.runtime import SENTENCES

    return SentenceTransformer(str(minilm_dir), device="cpu").encode(SENTENCES)


def _cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.gpu
def test_gpu_serves_a_tensorrt_rtx_engine(minilm_compiled, minilm_dir, tmp_path):
    gpu = _needs("tensorrt_rtx", "cuda")
    out, _ = minilm_compiled
    profile = f"tensorrt_rtx-sm{gpu.compute_capability.replace('.', '')}-fp16-throughput"
    if not (out / "profiles" / profile).is_dir():
        pytest.skip(f"the example builds no TensorRT-RTX engine for compute capability {gpu.compute_capability} "
                    "(TensorRT-RTX has no Hopper or Blackwell datacenter target)")
    served = _serve_and_embed(out / "profiles.yaml", tmp_path / "cache", {"NIM_MODEL_PROFILE": profile})
    assert _cosines(served, _reference_embeddings(minilm_dir)).min() >= 0.999


@pytest.mark.gpu
def test_gpu_serves_a_deployed_rmir_and_reuses_its_engine(minilm_compiled, minilm_dir, tmp_path):
    """On an H100/H200 the engine comes from datacenter TensorRT, on RTX-class GPUs from TensorRT-RTX."""
    from nimbuild.profiles.builders import rmir_builder
    from nimbuild.profiles.system import installed_runtimes

    gpu = _needs()
    builder, why = rmir_builder(gpu.compute_capability, installed_runtimes())
    if builder is None:
        pytest.skip(why)
    _needs({"tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt_rtx"}[builder])
    out, _ = minilm_compiled
    env = {"NIM_MODEL_PROFILE": "rmir-fp16-throughput"}
    for _ in range(2):
        served = _serve_and_embed(out / "profiles.yaml", tmp_path / "cache", env)
        assert _cosines(served, _reference_embeddings(minilm_dir)).min() >= 0.999
    logs = "".join(p.read_text() for p in (tmp_path / "cache").glob("runtime-*.log"))
    assert "RMIR built an engine" in logs and "RMIR reused the engine" in logs


@pytest.mark.gpu
def test_gpu_serves_a_tensorrt_engine_through_tritons_tensorrt_backend(tiny_bert_dir, tmp_path):
    """On Triton's TensorRT backend where a tritonserver on PATH has it, else through the tensorrt
    runtime inside the bundled Triton's Python model."""
    gpu = _needs("tensorrt", "cuda")
    target = f'{{type: prebuilt, backend: tensorrt, compute_capabilities: ["{gpu.compute_capability}"], precisions: [fp32]}}'
    body = _compile_and_call(tmp_path, str(tiny_bert_dir), {"targets": (target,)}, "/v1/embeddings",
                             {"model": "tiny", "input": ["a test"]})
    assert len(body["data"][0]["embedding"]) == 32


@pytest.mark.gpu
def test_gpu_serves_a_tensorrt_llm_engine_behind_the_completions_api(tiny_llama_dir, tmp_path):
    gpu = _needs("tensorrt_llm")
    target = (f'{{type: prebuilt, backend: tensorrt_llm, compute_capabilities: ["{gpu.compute_capability}"], '
              'precisions: [fp16]}')
    body = _compile_and_call(tmp_path, str(tiny_llama_dir), {"task": "text-generation", "batch": (1, 2, 4),
                                                             "sequence": (1, 64, 128), "targets": (target,)},
                             "/v1/completions", {"model": "tiny", "prompt": "hello", "max_tokens": 4})
    assert body["usage"]["completion_tokens"] >= 1


def _compile_and_call(tmp_path: Path, source: str, recipe: dict, route: str, request: dict) -> dict:
    """Compile a small recipe on this GPU host, serve what selection picks, and call `route` once."""
    import httpx
    from click.testing import CliRunner

    from helpers.recipes import recipe_text
    from helpers.runtime import Runtime
    from nimbuild.cli import main

    (tmp_path / "r.yaml").write_text(recipe_text(source, **recipe))
    result = CliRunner().invoke(main, ["-q", "compile", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    served = Runtime(tmp_path / "out/profiles.yaml", tmp_path / "cache")
    try:
        served.wait_ready(900)
        r = httpx.post(f"{served.url}{route}", json=request, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()
    finally:
        assert served.stop() == 0
