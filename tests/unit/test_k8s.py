"""`nimbuild k8s`: manifests for the example releases, in each format, validated offline against the
NIM Operator's and KServe's own CRD schemas (tests/schemas/crds, made by scripts/vendor_crd_schemas.py
from the operator's and KServe's repositories, strict: a field they do not know is an error) and
against Kubernetes' own schemas (kubernetes-validate, strict)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.paths import REPO

SCHEMAS = REPO / "tests" / "schemas" / "crds"
CRDS = {("apps.nvidia.com/v1alpha1", "NIMCache"): "nimcache-apps-v1alpha1",
        ("apps.nvidia.com/v1alpha1", "NIMService"): "nimservice-apps-v1alpha1",
        ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime-serving-v1alpha1",
        ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-serving-v1beta1"}
KUBERNETES = ("1.30.0", "1.37.0")  # an older cluster the operator supports, and the newest schemas shipped
IMAGE = "registry.example/acme/runtime_min:0.1.0"


def validate(document: dict) -> None:
    """Against the CRD's schema (and the CEL rules the NIMService CRD states, checked by hand: no
    CEL evaluator here) or Kubernetes' own; raises on any problem."""
    import jsonschema
    import kubernetes_validate

    key = (document["apiVersion"], document["kind"])
    if key in CRDS:
        schema = json.loads(gzip.decompress((SCHEMAS / f"{CRDS[key]}.json.gz").read_bytes()))
        jsonschema.Draft7Validator(schema).validate(document)
        spec = document["spec"]
        if document["kind"] == "NIMService":  # x-kubernetes-validations of the NIMService CRD
            assert not (spec.get("scale", {}).get("enabled") and "replicas" in spec), \
                "spec.replicas cannot be set when spec.scale.enabled is true"
            assert not ("multiNode" in spec and spec.get("scale", {}).get("enabled"))
        if document["kind"] == "NIMCache":
            assert sum(k in spec["source"] for k in ("ngc", "dataStore", "hf")) == 1
        return
    for version in KUBERNETES:
        kubernetes_validate.validate(document, version, strict=True)


def k8s(source: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nimbuild", "k8s", str(source), "--image", IMAGE, *args],
                          capture_output=True, text=True, timeout=120)


def rendered(source: Path, *args: str) -> list[dict]:
    """The documents `nimbuild k8s` writes (in-process: a dozen interpreter starts cost seconds)."""
    from click.testing import CliRunner

    from nimbuild.cli import main

    result = CliRunner().invoke(main, ["k8s", str(source), "--image", IMAGE, *args])
    assert result.exit_code == 0, result.output
    return list(yaml.safe_load_all(result.stdout))


def _by_kind(documents: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in documents}


@pytest.fixture(scope="module")
def l40s(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("systems") / "l40s.json"
    path.write_text(json.dumps({"gpus": [{"product": "L40S"}]}))
    return path


@pytest.mark.parametrize("fmt", ["nim-operator", "deployment", "kserve"])
def test_every_format_validates_for_the_examples(fmt, minilm_compiled, digits_compiled, l40s):
    extra = ["--storage-uri", "pvc://models/minilm-embed"] if fmt == "kserve" else []
    cases = [(minilm_compiled[0] / "profiles.yaml", []), (minilm_compiled[0] / "profiles.yaml", ["--system", str(l40s)]),
             (digits_compiled / "profiles.yaml", ["--profile", "onnxruntime-fp32-throughput-str"]),
             (REPO / "examples" / "minilm-embed" / "recipe.yaml", [])]
    for source, args in cases:
        documents = rendered(source, "--format", fmt, *args, *extra)
        assert documents
        for document in documents:
            validate(document)


def test_the_nim_operator_pair_caches_the_profile_and_serves_it_read_only_with_an_hpa(minilm_compiled):
    from nimbuild.profiles.manifest import load_manifest
    from runtime_min.http import Metrics

    manifest = minilm_compiled[0] / "profiles.yaml"
    fp32 = next(p for p in load_manifest(manifest).profiles if p.description == "onnxruntime-fp32-throughput")
    docs = _by_kind(rendered(manifest, "--profile", fp32.description, "--registry", "oci://mirror.example/acme"))
    cache, service = docs["NIMCache"]["spec"], docs["NIMService"]["spec"]
    assert cache["source"]["ngc"]["model"]["profiles"] == [fp32.id]  # the caching Job's --profiles
    assert cache["source"]["ngc"]["modelPuller"] == IMAGE
    assert {"name": "NIMBUILD_REGISTRY", "value": "oci://mirror.example/acme"} in cache["env"]
    assert (cache["userID"], cache["groupID"]) == (1000, 2000)
    assert service["storage"]["nimCache"] == {"name": "minilm-embed", "profile": fp32.id}
    assert service["storage"]["readOnly"] is True and service["storage"]["sharedMemorySizeLimit"] == "1Gi"
    assert "resources" not in service  # a CPU profile asks for no GPU
    assert "grpcPort" not in service["expose"]["service"]
    (metric,) = service["scale"]["hpa"]["metrics"]
    # the autoscaler scales on the gauge the runtime exports
    assert metric["pods"]["metric"]["name"] in {m.name for m in Metrics().registry.collect()}


def test_gpu_profiles_request_their_tp_and_speech_profiles_expose_grpc(minilm_compiled, digits_compiled, l40s,
                                                                       tmp_path):
    manifest = minilm_compiled[0] / "profiles.yaml"
    docs = _by_kind(rendered(manifest, "--system", str(l40s), "--format", "deployment"))
    (server,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert server["resources"]["limits"] == {"nvidia.com/gpu": 1}  # the L40S's engine, tp 1
    selected = subprocess.run([sys.executable, "-m", "nimbuild", "profiles", "select", "-m", str(manifest)], text=True,
                              capture_output=True, env={**os.environ, "NIMBUILD_SYSTEM": str(l40s)}).stdout.strip()
    assert [e["value"] for e in server["env"] if e["name"] == "NIM_MODEL_PROFILE"] == [selected]  # the runtime's pick
    (fill,) = docs["Deployment"]["spec"]["template"]["spec"]["initContainers"]
    assert fill["command"] == ["download-to-cache"] and fill["args"][0] == "--profiles"
    assert {"name": "model-store", "mountPath": "/model-store", "readOnly": True} in server["volumeMounts"]
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]

    # a TensorRT-LLM profile of tp 2 asks for two GPUs
    nim = tmp_path / "model_manifest.yaml"
    nim.write_text(f"- id: {'a' * 64}\n  tags: {{llm_engine: tensorrt_llm, precision: fp8, tp: '2', pp: '1', gpu: H100}}\n")
    docs = _by_kind(rendered(nim, "--profile", "a" * 64, "--name", "llm"))
    assert docs["NIMService"]["spec"]["resources"]["limits"] == {"nvidia.com/gpu": 2}

    speech = _by_kind(rendered(digits_compiled / "profiles.yaml", "--profile", "onnxruntime-fp32-throughput-str"))
    assert speech["NIMService"]["spec"]["expose"]["service"]["grpcPort"] == 50051
    plain = _by_kind(rendered(digits_compiled / "profiles.yaml", "--profile", "onnxruntime-fp32-throughput-str",
                              "--format", "deployment"))
    assert [p["port"] for p in plain["Service"]["spec"]["ports"]] == [8000, 50051]


@pytest.mark.parametrize("fmt", ["nim-operator", "deployment"])
def test_an_air_gapped_cluster_serves_a_claim_filled_beforehand_with_no_caching_step(minilm_compiled, fmt):
    documents = rendered(minilm_compiled[0] / "profiles.yaml", "--format", fmt, "--pvc", "minilm-prefilled")
    for document in documents:
        validate(document)
    kinds = _by_kind(documents)
    assert "NIMCache" not in kinds and "PersistentVolumeClaim" not in kinds
    if fmt == "nim-operator":
        spec = kinds["NIMService"]["spec"]
        assert spec["storage"]["pvc"] == {"name": "minilm-prefilled"} and spec["storage"]["readOnly"] is True
        assert spec["env"][0]["name"] == "NIM_MODEL_PROFILE" and "authSecret" not in spec
    else:
        pod = kinds["Deployment"]["spec"]["template"]["spec"]
        assert "initContainers" not in pod
        assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "minilm-prefilled", "readOnly": True}


def test_kserve_serves_the_release_kserve_unpacks_at_mnt_models(minilm_compiled):
    docs = _by_kind(rendered(minilm_compiled[0] / "profiles.yaml", "--format", "kserve", "--storage-uri",
                             "pvc://models/minilm-embed"))
    (container,) = docs["ServingRuntime"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["name"] == "kserve-container" and env["NIM_MANIFEST_PATH"] == "/mnt/models/profiles.yaml"
    assert docs["InferenceService"]["spec"]["predictor"]["model"]["storageUri"] == "pvc://models/minilm-embed"


@pytest.mark.parametrize("args, message", [
    (["--name", "Not_A_Name"], "--name 'Not_A_Name': a Kubernetes name"),
    (["--format", "kserve"], "--format kserve needs --storage-uri"),
    (["--profile", "no-such-profile"], "'no-such-profile' matches no profile"),
    (["--min-replicas", "5", "--max-replicas", "2"], "replicas: expected 1 <= min (5) <= max (2)"),
])
def test_mistakes_are_one_line(minilm_compiled, args, message):
    result = k8s(minilm_compiled[0] / "profiles.yaml", *args)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("document, field", [
    ({"apiVersion": "apps.nvidia.com/v1alpha1", "kind": "NIMService", "metadata": {"name": "x"},
      "spec": {"image": {"repository": "r", "tag": "t"}, "storage": {"readonly": True}}}, "readonly"),
    ({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
      "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {
          "containers": [{"name": "c", "image": "i", "readinesProbe": {}}]}}}}, "readinesProbe"),
])
def test_a_misspelled_field_fails_the_strict_schemas(document, field):
    """The checks can fail: a field the CRD, or Kubernetes, does not have is refused."""
    import jsonschema

    with pytest.raises(jsonschema.ValidationError, match=field):
        validate(document)
