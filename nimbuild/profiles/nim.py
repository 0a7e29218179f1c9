"""Read any profile manifest: nimbuild's own, or NVIDIA NIM's `model_manifest.yaml` (schema v1 and v2).

NIM schema v1 is a mapping from profile id to {model, release, tags, workspace}, and uses YAML
tags such as `!workspace` and `!name`; schema v2 has `schema_version: 2.0.0` and a `profiles` list.
Their ids are NIM's own, kept as they are. Unknown YAML tags are read as plain values, never
executed and never a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nimbuild.errors import ManifestError
from nimbuild.fsutil import read_user_text
from nimbuild.profiles.manifest import Profile, WorkspaceFile, manifest_from_data
from nimbuild.profiles.tags import describe, normalise_tags
from nimbuild.yamlutil import load_or_raise

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _TolerantLoader(_Base):  # type: ignore[misc, valid-type]
    """SafeLoader that reads any local tag (`!workspace`, `!name`, ...) as the plain node beneath it."""


def _untagged(loader: yaml.Loader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_TolerantLoader.add_multi_constructor("!", _untagged)


def read_profiles(path: str | Path) -> tuple[list[Profile], str]:
    """Profiles from a manifest of any supported kind, and the kind's name."""
    return parse_profiles(read_user_text(path, "manifest", ManifestError), str(path))


def parse_profiles(text: str, origin: str = "<manifest>") -> tuple[list[Profile], str]:
    data = load_or_raise(text, _TolerantLoader, origin, ManifestError)
    if not isinstance(data, dict):
        raise ManifestError(f"{origin}: not a profiles manifest (expected a mapping)")
    version = str(data.get("schema_version", ""))
    if "profiles" in data and version.startswith("1"):
        return manifest_from_data(data, origin).profiles, "nimbuild"
    if "profiles" in data and version.startswith("2"):
        if not isinstance(data["profiles"], list):
            raise ManifestError(f"{origin}: 'profiles' must be a list")
        return [_nim_profile(p.get("id") if isinstance(p, dict) else None, p, origin, i)
                for i, p in enumerate(data["profiles"])], "nim-v2"
    if "schema_version" in data:
        raise ManifestError(f"{origin}: unsupported schema_version {version!r}")
    return [_nim_profile(pid, p, origin, i) for i, (pid, p) in enumerate(data.items())], "nim-v1"


def _nim_profile(profile_id: Any, entry: Any, origin: str, index: int) -> Profile:
    where = f"{origin}: profile {profile_id or index}"
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a mapping with tags")
    if not profile_id:
        raise ManifestError(f"{where}: missing 'id'")
    tags = entry.get("tags")
    if not isinstance(tags, dict) or not tags:
        raise ManifestError(f"{where}: 'tags' must be a non-empty mapping")
    tags = normalise_tags(tags)
    return Profile(
        id=str(profile_id), model=str(entry.get("model", "")), release=str(entry.get("release", "")),
        description=str(entry.get("description") or describe(tags)), tags=tags,
        files=_nim_files(entry.get("workspace")), requires=dict(entry.get("requires") or {}),
    )


def _nim_files(workspace: Any) -> dict[str, WorkspaceFile]:
    """v2's workspace.files when it carries digests; v1's components only name remote repositories."""
    files = {}
    raw = workspace.get("files") if isinstance(workspace, dict) else None
    if isinstance(raw, dict):
        for rel, f in raw.items():
            if isinstance(f, dict) and f.get("digest"):
                files[str(rel)] = WorkspaceFile(str(f.get("uri", "")), str(f["digest"]), int(f.get("size", 0)))
    return files

