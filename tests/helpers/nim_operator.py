"""The NIM Operator's side of the container contract, re-implemented in Python for the tests (the
operator is Go and does not run here). Each piece names the file it follows, in NVIDIA/k8s-nim-operator
at f63f74d7 (2026-08-19):

- the manifest probe's shell command: internal/controller/nimcache_controller.go, getCommand();
- which parser reads the probe's output: internal/nimparser/utils/utils.go, GetNIMParser();
- the two parsers: internal/nimparser/v1/nimparser.go and v2/nimparser.go (Go structs decoded by
  gopkg.in/yaml.v3, which gives a string field any scalar's text, a null the zero value, ignores
  unknown fields, and fails the whole parse on a mapping or list where a string is wanted);
- profile matching: MatchProfiles in both parsers (profile_name_regex with Go's regexp, RE2);
- the caching Job's command, arguments and environment, and the pods' user: constructJob() and
  api/apps/v1alpha1/nimcache_types.go (GetUserID 1000, GetGroupID 2000);
- NIMService's environment: api/apps/v1alpha1/nimservice_types.go, GetStandardEnv().
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

MANIFEST_PATHS = ("/opt/nim/etc/default/model_manifest.yaml", "/etc/nim/config/model_manifest.yaml")
CACHE_PATH = "/model-store"  # internal/utils/utils.go DefaultModelStorePath
USER_ID, GROUP_ID = 1000, 2000
ALL_PROFILES = "all"


def probe_command(root: str = "") -> list[str]:
    """getCommand(), with `root` before each absolute path (a test's stand-in for the image's
    filesystem) and without its closing `sleep infinity`, which keeps the pod alive for the operator
    to read its log."""
    first, second = (root + p for p in MANIFEST_PATHS)
    return ["sh", "-c", " ".join([
        f"if [ -f {first} ]; then", f"cat {first};", f"elif [ -f {second} ]; then", f"cat {second};",
        "else", 'echo "model_manifest.yaml not found";', "fi;"])]


class GoYamlError(ValueError):
    """What yaml.Unmarshal returns for a document that does not fit the Go types."""


# --- yaml.v3 into Go types ---------------------------------------------------------------------------
# A type is "str", ("map", T), ("list", T), ("ptr", T) or a dict of yaml field names to types (a struct).

def _null(node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _decode(node, kind, where: str):
    if _null(node):
        return None  # the zero value: "", nil map, nil slice, nil pointer, a zero struct
    if kind == "str":
        if not isinstance(node, yaml.ScalarNode):
            raise GoYamlError(f"{where}: cannot unmarshal a {_kind(node)} into string")
        return node.value
    if isinstance(kind, tuple) and kind[0] == "ptr":
        return _decode(node, kind[1], where)
    if isinstance(kind, tuple) and kind[0] == "list":
        if not isinstance(node, yaml.SequenceNode):
            raise GoYamlError(f"{where}: cannot unmarshal a {_kind(node)} into a slice")
        return [_decode(item, kind[1], f"{where}[{i}]") for i, item in enumerate(node.value)]
    if not isinstance(node, yaml.MappingNode):
        raise GoYamlError(f"{where}: cannot unmarshal a {_kind(node)} into a {'map' if isinstance(kind, tuple) else 'struct'}")
    if isinstance(kind, tuple) and kind[0] == "map":
        return {_decode(k, "str", where): _decode(v, kind[1], f"{where}.{k.value}") for k, v in node.value}
    out = {}
    for k, v in node.value:  # a struct: its fields by yaml name; unknown keys are ignored
        key = k.value if isinstance(k, yaml.ScalarNode) else None
        if key in kind:
            out[key] = _src(v, where) if kind[key] == "src" else _decode(v, kind[key], f"{where}.{key}")
    return out


def _kind(node) -> str:
    return {yaml.MappingNode: "mapping", yaml.SequenceNode: "list"}.get(type(node), f"scalar {node.value!r}")


def _src(node, where: str) -> dict:
    """v1's Src.UnmarshalYAML: into map[string]interface{}, then repo_id if a string and files that
    are strings or single-key maps."""
    if not isinstance(node, yaml.MappingNode):
        raise GoYamlError(f"{where}.src: cannot unmarshal a {_kind(node)} into map[string]interface{{}}")
    raw = {k.value: v for k, v in node.value}
    files = []
    if isinstance(raw.get("files"), yaml.SequenceNode):
        for item in raw["files"].value:
            if isinstance(item, yaml.ScalarNode):
                files.append(item.value)
            elif isinstance(item, yaml.MappingNode):
                files += [k.value for k, _ in item.value]
    repo = raw.get("repo_id")
    return {"repo_id": repo.value if isinstance(repo, yaml.ScalarNode) else "", "files": files}


V1_PROFILE = {"model": "str", "release": "str", "tags": ("map", "str"), "container_url": "str",
              "workspace": ("ptr", {"components": ("list", {"dst": "str", "src": "src"})})}
V2_MANIFEST = {"schema_version": "str", "profile_selection_criteria": "str",
               "profiles": ("list", {"id": "str", "tags": ("map", "str"),
                                     "workspace": ("ptr", {"files": ("map", {"uri": "str"})})})}


def _document(text: str):
    try:
        return yaml.compose(text)
    except yaml.YAMLError as e:
        raise GoYamlError(f"not YAML: {e}") from None


def parser_version(text: str) -> str:
    """GetNIMParser: v2 when schema_version matches the regexp `2\\.*\\.*` anywhere (Go's MatchString:
    any "2" in it, "1.2" included), else v1, also when the document does not decode."""
    try:
        root = _document(text)
        schema = _decode(root, {"schema_version": "str"}, "manifest") if root is not None else {}
    except GoYamlError:
        return "v1"
    return "v2" if re.search(r"2\.*\.*", (schema or {}).get("schema_version", "").strip()) else "v1"


@dataclass
class OperatorManifest:
    version: str
    profiles: dict[str, dict[str, str]]  # id -> tags, in the manifest's order (v1: a Go map, unordered)
    models: dict[str, str] = field(default_factory=dict)  # v1 only: id -> model
    releases: dict[str, str] = field(default_factory=dict)


def parse(text: str) -> OperatorManifest:
    """ParseModelManifestFromRawOutput of the parser GetNIMParser picks; GoYamlError where it errs."""
    version = parser_version(text)
    root = _document(text)
    if version == "v2":
        data = _decode(root, V2_MANIFEST, "manifest") if root is not None else {}
        return OperatorManifest("v2", {p.get("id", ""): p.get("tags") or {} for p in (data or {}).get("profiles") or []})
    data = _decode(root, ("map", V1_PROFILE), "manifest") if root is not None else {}
    data = data or {}
    return OperatorManifest("v1", {k: (v or {}).get("tags") or {} for k, v in data.items()},
                            {k: (v or {}).get("model", "") for k, v in data.items()},
                            {k: (v or {}).get("release", "") for k, v in data.items()})


# --- MatchProfiles -----------------------------------------------------------------------------------

@dataclass
class ModelSpec:
    """api/apps/v1alpha1/nimcache_types.go ModelSpec (gpus: [{"product": ..., "ids": [...]}])."""

    profiles: list[str] = field(default_factory=list)
    precision: str = ""
    engine: str = ""
    tensor_parallelism: str = ""
    qos_profile: str = ""
    gpus: list[dict] = field(default_factory=list)
    lora: bool | None = None
    buildable: bool | None = None


def _go_regexp(label: str, pattern: str) -> bool:
    """matchesRegex: Go's regexp.Compile (RE2), MatchString; a pattern that does not compile matches nothing."""
    import re2

    if not pattern:
        return False
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options=options).search(label) is not None
    except re2.error:
        return False


def _bool(value: bool) -> str:
    return "true" if value else "false"


def match_profiles(manifest: OperatorManifest, spec: ModelSpec, discovered: list[str]) -> list[str]:
    match = _match_v2 if manifest.version == "v2" else _match_v1
    return [pid for pid, tags in manifest.profiles.items() if match(tags, spec, discovered)]


def _match_v1(tags: dict, spec: ModelSpec, discovered: list[str]) -> bool:
    if ((spec.precision and tags.get("precision") != spec.precision)
            or (spec.tensor_parallelism and tags.get("tp") != spec.tensor_parallelism)
            or (spec.qos_profile and tags.get("profile") != spec.qos_profile)):
        return False
    if spec.lora is None and tags.get("feat_lora") == "true":
        return False
    if spec.lora is not None and tags.get("feat_lora") != _bool(spec.lora):
        return False
    backend = tags.get("llm_engine") or tags.get("backend", "")
    if spec.engine and spec.engine.removesuffix("_llm") not in backend:
        return False

    def optimized(engine: str) -> bool:
        return bool(engine) and "tensorrt" in engine.lower()

    if optimized(spec.engine) or spec.gpus:
        if not optimized(backend):
            return False
        if (spec.gpus or discovered) and not _v1_gpu(tags, spec, discovered):
            return False
    return True


def _v1_gpu(tags: dict, spec: ModelSpec, discovered: list[str]) -> bool:
    found = False
    for gpu in spec.gpus:
        product = gpu.get("product", "").lower()
        if product:
            if product in tags.get("gpu", "").lower() or product in tags.get("key", "").lower():
                found = True
            if found and gpu.get("ids") and tags.get("gpu_device", "").removesuffix(":10de") not in gpu["ids"]:
                return False
    if found:
        return True
    for label in filter(None, discovered):
        if tags.get("gpu", "").lower() in label.lower() or _go_regexp(label, tags.get("product_name_regex", "")):
            return True
    return False


def _match_v2(tags: dict, spec: ModelSpec, discovered: list[str]) -> bool:
    eq = str.casefold
    if ((spec.precision and eq(tags.get("precision", "")) != eq(spec.precision))
            or (spec.tensor_parallelism and eq(tags.get("tp", "")) != eq(spec.tensor_parallelism))
            or (spec.qos_profile and eq(tags.get("profile", "")) != eq(spec.qos_profile))
            or (spec.lora is not None and eq(tags.get("feat_lora", "")) != _bool(spec.lora))
            or (spec.buildable is not None and eq(tags.get("trtllm_buildable", "")) != _bool(spec.buildable))):
        return False
    backend = tags.get("llm_engine") or tags.get("model_type") or tags.get("backend", "")
    if eq(backend) == "triton":
        backend = "tensorrt"
    if spec.engine and spec.engine.lower().removesuffix("_llm") not in backend.lower():
        return False
    return _v2_gpu(tags, spec, discovered) or eq(tags.get("trtllm_buildable", "")) == "true"


def _v2_gpu(tags: dict, spec: ModelSpec, discovered: list[str]) -> bool:
    identity = bool(tags.get("gpu") or tags.get("key") or tags.get("product_name_regex"))
    if not spec.gpus and (not identity or not discovered):
        return True
    if any(g.get("ids") for g in spec.gpus):
        tag_id = tags.get("gpu_device", "").removesuffix(":10de")
        if not tag_id or not any(tag_id in g.get("ids", []) for g in spec.gpus):
            return False
    products = [g["product"].lower() for g in spec.gpus if g.get("product")]
    if products:
        gpu_tag, key_tag = tags.get("gpu", "").lower(), tags.get("key", "").lower()
        if not any((gpu_tag and p in gpu_tag) or (key_tag and p in key_tag) for p in products):
            return False
    if not spec.gpus and identity and discovered:
        gpu_tag, key_tag = tags.get("gpu", "").lower(), tags.get("key", "").lower()
        return any((gpu_tag and gpu_tag in label.lower()) or (key_tag and key_tag in label.lower())
                   or _go_regexp(label, tags.get("product_name_regex", "")) for label in discovered)
    return True


# --- the Jobs and Deployments it makes --------------------------------------------------------------

def caching_job_args(selected: list[str]) -> list[str]:
    """The caching Job's arguments to `download-to-cache` (constructJob, the NGC case)."""
    if not selected:
        raise ValueError("no profiles are selected for caching")
    return ["--all"] if ALL_PROFILES in selected else ["--profiles", *selected]


def caching_job_env(cache: str = CACHE_PATH, api_key: str | None = "not-a-real-key") -> dict[str, str]:
    """What constructJob sets (NIM_CACHE_PATH) and what the auth secret brings (NGC_API_KEY)."""
    env = {"NIM_CACHE_PATH": cache}
    if api_key:
        env["NGC_API_KEY"] = api_key
    return env


def nimservice_env(port: int = 8000, grpc_port: int | None = None, profile: str | None = None,
                   cache: str = CACHE_PATH) -> dict[str, str]:
    """GetStandardEnv(), plus NIM_MODEL_PROFILE where the NIMService (or its NIMCache) names one
    (internal/controller/platform/standalone/nimservice.go)."""
    env = {"NIM_CACHE_PATH": cache, "OUTLINES_CACHE_DIR": "/tmp/outlines", "NIM_SERVER_PORT": str(port),
           "NIM_HTTP_API_PORT": str(port), "NIM_JSONL_LOGGING": "1", "NIM_LOG_LEVEL": "INFO"}
    if grpc_port:
        env.update(NIM_GRPC_API_PORT=str(grpc_port), NIM_TRITON_GRPC_PORT=str(grpc_port))
    if profile:
        env["NIM_MODEL_PROFILE"] = profile
    return env
