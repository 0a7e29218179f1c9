"""Profiles built on first start, written back into the cache (the NIM Operator's NIMBuild contract).

An RMIR profile becomes an engine for the GPU it starts on. That engine is a profile of its own
(prebuilt, this compute capability, the builder that made it), and it is recorded in
`$NIM_CACHE_PATH/local_cache/local_manifest.yaml` in NIM's v2 shape, the file NIMBuild's controller
reads back (internal/controller/nimbuild_controller.go: `cat /model-store/local_cache/local_manifest.yaml`,
then the profile whose `model_name` tag is the NIMBuild's model name). Its files are the engine's
slot in the cache, named relative to the local manifest. Selection, the listing and serve read the
local manifest beside the image's, so NIM_MODEL_PROFILE may name the built profile and a start
serves it without building again.
"""

from __future__ import annotations

import os
from pathlib import Path

from nimbuild.profiles.manifest import Profile, WorkspaceFile

LOCAL_MANIFEST = Path("local_cache") / "local_manifest.yaml"
# the NIMBuild's spec.modelName (default: its name), which the operator sets in the build pod's
# environment and then looks the built profile up by, as the `model_name` tag
MODEL_NAME_ENV = "NIM_CUSTOM_MODEL_NAME"


def local_manifest(cache_root: Path) -> Path:
    return cache_root / LOCAL_MANIFEST


def built_profiles(cache_root: Path) -> list[Profile]:
    """The profiles recorded in the cache's local manifest (none when there is none)."""
    from nimbuild.profiles.nim import read_profiles

    path = local_manifest(cache_root)
    return read_profiles(path).profiles if path.is_file() else []


def record_built(source: Profile, slot: Path, compute_capability: str, cache_root: Path) -> Profile:
    """Add the engine built from `source` in `slot` (with its build record, deploy.json) to the
    local manifest, under a lock and written atomically: concurrent starts on one cache each keep
    the other's entries. Returns the built profile."""
    import json

    from filelock import FileLock

    from nimbuild.profiles.nim import nim_v2_text
    from nimbuild.registry.cache import Stamps
    from nimbuild.util.files import atomic_write_text, sha256_file

    record = json.loads((slot / "deploy.json").read_text())
    kind, version = record["builder"], record["version"]
    model_name = os.environ.get(MODEL_NAME_ENV) or source.model
    # a start that reused the engine finds it recorded; its files are checked as every cached file
    # is (Stamps: re-hashed only if changed since they last matched), so a multi-GB engine is not
    # hashed at every start, and an engine built again (not byte for byte the same) is recorded anew
    stamps = Stamps(cache_root)
    this = (source.id, compute_capability, model_name)
    for known in built_profiles(cache_root):
        if _build_key(known) == this and all(stamps.matches(slot / rel, f.digest, f.size)
                                             for rel, f in known.files.items()):
            return known
    path = local_manifest(cache_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    files = {}
    for file in sorted(p for p in slot.rglob("*") if p.is_file()):
        files[file.relative_to(slot).as_posix()] = WorkspaceFile(
            os.path.relpath(file, path.parent), "sha256:" + sha256_file(file), file.stat().st_size)
    keep = {k: v for k, v in source.tags.items() if k not in ("backend", "type")}
    tags = {"backend": kind, "type": "prebuilt", **keep, "compute_capability": compute_capability,
            "trt_version": version, "model_name": model_name, "built_from": source.id}
    built = Profile.create(source.model, source.release, tags, files, requires=source.requires)
    with FileLock(str(path) + ".lock"):  # an entry for an earlier build of this engine goes
        others = [p for p in built_profiles(cache_root) if p.id != built.id and _build_key(p) != this]
        atomic_write_text(path, nim_v2_text([*others, built]))
    return built


def _build_key(profile: Profile) -> tuple:
    """What one recorded build is of: its source profile, the capability and the NIMBuild's name."""
    return profile.tags.get("built_from"), profile.tags.get("compute_capability"), profile.tags.get("model_name")
