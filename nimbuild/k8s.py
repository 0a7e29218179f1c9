"""Kubernetes manifests for a release (docs/design.md §11): `nimbuild k8s SOURCE --image IMG`.

    nim-operator  NIMCache (the caching Job fills a PVC with the chosen profile) + NIMService (the
                  image's entrypoint on that PVC, read-only; an HPA on in-flight requests)
    deployment    the same without the operator: a PVC, a Deployment whose init container runs
                  download-to-cache into it, a Service and a HorizontalPodAutoscaler
    kserve        a ServingRuntime running the image and an InferenceService whose storageUri
                  KServe unpacks at /mnt/models (a pulled release: profiles.yaml and its files)

The profile is the one named (--profile), else the one selection picks for the target system
(--system, a NIMBUILD_SYSTEM file; default: this machine, or $NIMBUILD_SYSTEM), the very function the
runtime runs. Its GPU count is its tp x pp (NIM's rule, which the operator reads from the `tp` tag);
a CPU profile requests none. Speech profiles (Speech NIM's `name` tag) expose the gRPC port too.
Nothing here talks to a cluster; the output is validated against the operator's and KServe's CRD
schemas and Kubernetes' own in the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.profiles.manifest import Profile

FORMATS = ("nim-operator", "deployment", "kserve")
HTTP_PORT, GRPC_PORT, KSERVE_PORT = 8000, 50051, 8080  # NIM's ports; KServe routes to 8080
CACHE = "/model-store"  # where the NIM Operator mounts the cache
USER_ID, GROUP_ID = 1000, 2000  # the NIM Operator's default pod user and group
IN_FLIGHT = "num_requests_running"  # the runtime's gauge (runtime_min.http.Metrics.in_flight)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Options:
    image: str
    name: str
    namespace: str | None = None
    registry: str | None = None  # for NIMBUILD_REGISTRY, where the image's manifest names none
    auth_secret: str = "nimbuild-registry"  # its keys become the caching Job's environment
    pull_secret: str | None = None
    pvc_size: str = "20Gi"
    storage_class: str | None = None
    shm_size: str = "1Gi"
    min_replicas: int = 1
    max_replicas: int = 4
    in_flight_target: int = 8  # requests in flight per pod above which the HPA adds pods
    storage_uri: str | None = None  # kserve
    existing_pvc: str | None = None  # a claim filled beforehand (air-gapped): no caching step


def gpu_count(profile: Profile) -> int:
    """GPUs the profile runs on: none for a CPU profile, else tp x pp, or more where the profile
    requires more (`requires.gpus`, NIM's `number_of_gpus`)."""
    from nimbuild.profiles.select import needs_gpu

    if not needs_gpu(profile):
        return 0
    tags = profile.tags
    values = (tags.get("tp") or 1, tags.get("pp") or 1, profile.requires.get("gpus") or 1, tags.get("number_of_gpus") or 0)
    try:
        tp, pp, required, listed = (int(v) for v in values)
    except (TypeError, ValueError):
        raise NimbuildError(f"profile {profile.description}: tp, pp and the GPU counts must be whole numbers") from None
    return max(tp * pp, required, listed)


def speaks_grpc(profile: Profile) -> bool:
    return bool(profile.tags.get("name"))  # ASR, TTS and NMT profiles: Riva's gRPC API beside HTTP


def render(profile: Profile, fmt: str, options: Options) -> list[dict[str, Any]]:
    if fmt not in FORMATS:
        raise NimbuildError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if not _DNS_LABEL.match(options.name):
        raise NimbuildError(f"--name {options.name!r}: a Kubernetes name is lower-case letters, digits and '-', "
                            "at most 63, starting and ending with a letter or digit")
    if not 1 <= options.min_replicas <= options.max_replicas:
        raise NimbuildError(f"replicas: expected 1 <= min ({options.min_replicas}) <= max ({options.max_replicas})")
    if fmt == "kserve" and not options.storage_uri:
        raise NimbuildError("--format kserve needs --storage-uri (where KServe finds the pulled release: "
                            "pvc://CLAIM/PATH, s3://..., or an oci:// model image)")
    return {"nim-operator": _nim_operator, "deployment": _deployment, "kserve": _kserve}[fmt](profile, options)


def _meta(name: str, options: Options, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/name": options.name,
                                                     "app.kubernetes.io/managed-by": "nimbuild", **labels}}
    if options.namespace:
        meta["namespace"] = options.namespace
    return meta


def _image(image: str) -> tuple[str, str]:
    """(repository, tag) of an image reference; a digest counts as the tag."""
    if "@" in image:
        repository, digest = image.split("@", 1)
        return repository, digest
    head, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return head, tag
    return image, "latest"


def _env(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in values.items()]


def _registry_env(options: Options) -> dict[str, str]:
    return {"NIMBUILD_REGISTRY": options.registry} if options.registry else {}


def _hpa_metrics(options: Options) -> list[dict[str, Any]]:
    return [{"type": "Pods", "pods": {"metric": {"name": IN_FLIGHT},
                                      "target": {"type": "AverageValue", "averageValue": str(options.in_flight_target)}}}]


def _gpu_resources(profile: Profile) -> dict[str, Any] | None:
    gpus = gpu_count(profile)
    return {"limits": {"nvidia.com/gpu": gpus}, "requests": {"nvidia.com/gpu": gpus}} if gpus else None


def _nim_operator(profile: Profile, options: Options) -> list[dict[str, Any]]:
    repository, tag = _image(options.image)
    documents = [] if options.existing_pvc else [_nimcache(profile, options)]
    image: dict[str, Any] = {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"}
    if options.pull_secret:
        image["pullSecrets"] = [options.pull_secret]
    service: dict[str, Any] = {"type": "ClusterIP", "port": HTTP_PORT}
    if speaks_grpc(profile):
        service["grpcPort"] = GRPC_PORT
    storage: dict[str, Any] = {"readOnly": True, "sharedMemorySizeLimit": options.shm_size}
    if options.existing_pvc:
        storage["pvc"] = {"name": options.existing_pvc}
    else:  # the operator sets NIM_MODEL_PROFILE from storage.nimCache.profile
        storage["nimCache"] = {"name": options.name, "profile": profile.id}
    # no authSecret: the service serves the filled cache and needs no credentials (air-gapped as NIM is)
    spec: dict[str, Any] = {
        "image": image, "storage": storage, "expose": {"service": service}, "userID": USER_ID, "groupID": GROUP_ID,
        "scale": {"enabled": True, "hpa": {"minReplicas": options.min_replicas, "maxReplicas": options.max_replicas,
                                           "metrics": _hpa_metrics(options)}},
    }
    if options.existing_pvc:
        spec["env"] = _env({"NIM_MODEL_PROFILE": profile.id})
    if (resources := _gpu_resources(profile)):
        spec["resources"] = resources
    return documents + [{"apiVersion": "apps.nvidia.com/v1alpha1", "kind": "NIMService",
                         "metadata": _meta(options.name, options), "spec": spec}]


def _nimcache(profile: Profile, options: Options) -> dict[str, Any]:
    """The caching Job's resource: the image's download-to-cache fills a new PVC with the profile."""
    ngc: dict[str, Any] = {"modelPuller": options.image, "authSecret": options.auth_secret,
                           "model": {"profiles": [profile.id]}}
    if options.pull_secret:
        ngc["pullSecret"] = options.pull_secret
    pvc: dict[str, Any] = {"create": True, "size": options.pvc_size, "volumeAccessMode": "ReadWriteMany"}
    if options.storage_class:
        pvc["storageClass"] = options.storage_class
    cache_spec: dict[str, Any] = {"source": {"ngc": ngc}, "storage": {"pvc": pvc}, "userID": USER_ID,
                                  "groupID": GROUP_ID}
    if options.registry:
        cache_spec["env"] = _env(_registry_env(options))
    return {"apiVersion": "apps.nvidia.com/v1alpha1", "kind": "NIMCache", "metadata": _meta(options.name, options),
            "spec": cache_spec}


def _probes(port: str) -> dict[str, Any]:
    """NIMService's defaults (api/apps/v1alpha1/nimservice_types.go): liveness and readiness every 10 s
    after 15 s, and a startup probe that allows 20 minutes for a first start that builds an engine."""
    def probe(path: str, initial: int, failures: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": port}, "initialDelaySeconds": initial, "periodSeconds": 10,
                "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": failures}

    return {"livenessProbe": probe("/v1/health/live", 15, 3), "readinessProbe": probe("/v1/health/ready", 15, 3),
            "startupProbe": probe("/v1/health/ready", 30, 120)}


def _security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
            "runAsUser": USER_ID, "runAsGroup": GROUP_ID}


def _deployment(profile: Profile, options: Options) -> list[dict[str, Any]]:
    name, labels = options.name, {"app.kubernetes.io/name": options.name}
    claim_name = options.existing_pvc or f"{name}-cache"
    claim: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": options.pvc_size}}}
    if options.storage_class:
        claim["storageClassName"] = options.storage_class
    pvc = [] if options.existing_pvc else [{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                            "metadata": _meta(claim_name, options), "spec": claim}]
    ports = [{"name": "api", "containerPort": HTTP_PORT, "protocol": "TCP"}]
    if speaks_grpc(profile):
        ports.append({"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"})
    env = {"NIM_CACHE_PATH": CACHE, "NIM_HTTP_API_PORT": str(HTTP_PORT), "NIM_SERVER_PORT": str(HTTP_PORT),
           "NIM_GRPC_API_PORT": str(GRPC_PORT), "NIM_MODEL_PROFILE": profile.id, "NIM_JSONL_LOGGING": "1",
           "NIM_LOG_LEVEL": "INFO", **_registry_env(options)}
    # the init container fills the shared cache (each pod's, safely at once: one download per blob,
    # under a lock); the server then mounts it read-only
    fill = {"name": "download-to-cache", "image": options.image, "command": ["download-to-cache"],
            "args": ["--profiles", profile.id], "env": _env({"NIM_CACHE_PATH": CACHE, **_registry_env(options)}),
            "envFrom": [{"secretRef": {"name": options.auth_secret, "optional": True}}],
            "volumeMounts": [{"name": "model-store", "mountPath": CACHE}], "securityContext": _security()}
    server: dict[str, Any] = {"name": "runtime-min", "image": options.image, "env": _env(env), "ports": ports,
                              "volumeMounts": [{"name": "model-store", "mountPath": CACHE, "readOnly": True},
                                               {"name": "dshm", "mountPath": "/dev/shm"}],
                              "securityContext": _security(), **_probes("api")}
    if (resources := _gpu_resources(profile)):
        server["resources"] = resources
    pod: dict[str, Any] = {
        "securityContext": {"runAsUser": USER_ID, "runAsGroup": GROUP_ID, "fsGroup": GROUP_ID, "runAsNonRoot": True},
        "initContainers": [] if options.existing_pvc else [fill], "containers": [server],
        # read-only for the server by its mount; the claim itself only where nothing fills it here
        "volumes": [{"name": "model-store", "persistentVolumeClaim": {"claimName": claim_name,
                                                                      "readOnly": bool(options.existing_pvc)}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": options.shm_size}}],
    }
    if options.pull_secret:
        pod["imagePullSecrets"] = [{"name": options.pull_secret}]
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, options),
                  "spec": {"replicas": options.min_replicas, "selector": {"matchLabels": labels},
                           "template": {"metadata": {"labels": labels}, "spec": pod}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, options),
               "spec": {"type": "ClusterIP", "selector": labels,
                        "ports": [{"name": p["name"], "port": p["containerPort"], "targetPort": p["name"],
                                   "protocol": "TCP"} for p in ports]}}
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(name, options),
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    "minReplicas": options.min_replicas, "maxReplicas": options.max_replicas,
                    "metrics": _hpa_metrics(options)}}
    if not pod["initContainers"]:
        del pod["initContainers"]
    return [*pvc, deployment, service, hpa]


def _kserve(profile: Profile, options: Options) -> list[dict[str, Any]]:
    name = options.name
    env = {"NIM_MANIFEST_PATH": "/mnt/models/profiles.yaml", "NIM_CACHE_PATH": "/tmp/nim-cache",
           "NIM_HTTP_API_PORT": str(KSERVE_PORT), "NIM_MODEL_PROFILE": profile.id, "NIM_JSONL_LOGGING": "1"}
    container: dict[str, Any] = {"name": "kserve-container", "image": options.image, "env": _env(env),
                                 "ports": [{"containerPort": KSERVE_PORT, "protocol": "TCP"}],
                                 "securityContext": _security(), **_probes(str(KSERVE_PORT))}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        container[probe]["httpGet"]["port"] = KSERVE_PORT
    runtime = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime",
               "metadata": _meta(f"{name}-runtime", options),
               "spec": {"supportedModelFormats": [{"name": "nimbuild-profile", "version": "1", "autoSelect": True}],
                        "containers": [container]}}
    model: dict[str, Any] = {"modelFormat": {"name": "nimbuild-profile", "version": "1"}, "runtime": f"{name}-runtime",
                             "storageUri": options.storage_uri}
    if (resources := _gpu_resources(profile)):
        model["resources"] = resources
    service = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": _meta(name, options),
               "spec": {"predictor": {"minReplicas": options.min_replicas, "maxReplicas": options.max_replicas,
                                      "model": model}}}
    return [runtime, service]


def choose_profile(source: Path, requested: str | None, system_file: Path | None) -> Profile:
    """The profile from a manifest (any shape) or a recipe's plan: the one named, else selection's
    pick for the target system. A recipe's profiles have no ids yet (they come from the built
    files): its plan is named by descriptions, which download-to-cache and NIM_MODEL_PROFILE take too."""
    import os

    from nimbuild.profiles.select import Candidate, find_candidate, select_profile
    from nimbuild.profiles.system import detect_system, load_system_file

    profiles = _profiles_of(source)
    if requested:
        return find_candidate(requested, [Candidate(p) for p in profiles]).profile
    system = load_system_file(system_file) if system_file else detect_system()
    return select_profile(profiles, system, os.environ).require()


def _profiles_of(source: Path) -> list[Profile]:
    from nimbuild.profiles.nim import parse_profiles
    from nimbuild.util.files import read_user_text
    from nimbuild.util.yamlsafe import load_or_raise

    text = read_user_text(source, "recipe or manifest", NimbuildError)
    data = load_or_raise(text, str(source), NimbuildError)
    if isinstance(data, dict) and "targets" in data and "source" in data:  # a recipe
        from nimbuild.compile import plan_variants
        from nimbuild.recipe import load_recipe

        recipe = load_recipe(source)
        planned = [Profile.create(recipe.name, recipe.release, dict(v.tags), {}) for v in plan_variants(recipe)]
        return [_named_by_description(p) for p in planned]
    return parse_profiles(text, str(source)).profiles


def _named_by_description(profile: Profile) -> Profile:
    """A planned profile whose id stands for its description: the id of the files it will have is
    known only once they are built."""
    from dataclasses import replace

    return replace(profile, id=profile.description)


def to_yaml(documents: list[dict[str, Any]]) -> str:
    import yaml

    return yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, width=4096)
