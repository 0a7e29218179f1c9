"""The profiles manifest (`profiles.yaml`, docs/design.md §5): read, write, identify, merge.

Every later stage (compile, registry, selection, runtime) goes through this module, so the
format has exactly one reader and one writer. Writing is atomic and byte-stable: the same
profiles always give the same bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from nimbuild.errors import ManifestError
from nimbuild.profiles.tags import describe, normalise_tags
from nimbuild.util.files import atomic_write_text, is_sha256_digest, read_user_text, sha256_bytes
from nimbuild.util.yamlsafe import load_or_raise, without_collection

try:
    import orjson as _orjson  # the serve extra's; a build without it takes json (profile_id)
except ImportError:  # pragma: no cover - depends on the extras installed
    _orjson = None

SCHEMA_VERSION = "1.0"


# libyaml's C dumper when PyYAML has it: ~10x faster on 10,000-profile manifests.
class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):
    """Profiles built from one variant share its gate record; write it out in each, not as
    &id001/*id001 aliases a reader of the manifest has to chase."""

    def ignore_aliases(self, data) -> bool:
        return True

MANIFEST_NAME = "profiles.yaml"


@dataclass(frozen=True)
class WorkspaceFile:
    # Relative to the manifest's directory and inside it (check_profiles), or a registry URI once
    # published (scheme://..., fetched by digest, never read as a path)
    uri: str
    digest: str  # "sha256:<64 hex>"
    size: int


@dataclass
class Profile:
    id: str
    model: str
    release: str
    description: str
    tags: dict[str, str]
    files: dict[str, WorkspaceFile]
    requires: dict[str, Any] = field(default_factory=dict)
    # Provenance (builder, versions, input digests, verification figures). Not part of the id:
    # the id names what is deployed, not how it was made.
    build: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, model: str, release: str, tags: Mapping[str, Any], files: Mapping[str, WorkspaceFile],
               requires: Mapping[str, Any] | None = None, build: Mapping[str, Any] | None = None) -> "Profile":
        tags = normalise_tags(tags)
        files = dict(sorted(files.items()))
        return cls(
            id=profile_id(model, release, tags, files),
            model=model,
            release=release,
            description=describe(tags),
            tags=tags,
            files=files,
            requires=dict(requires or {}),
            build=dict(build or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "model": self.model,
            "release": self.release,
            "description": self.description,
            "tags": dict(self.tags),
        }
        if self.requires:
            out["requires"] = dict(self.requires)
        out["workspace"] = {
            "files": {p: {"uri": f.uri, "digest": f.digest, "size": f.size} for p, f in sorted(self.files.items())}
        }
        if self.build:
            out["build"] = self.build
        return out


def profile_id(model: str, release: str, tags: Mapping[str, str], files: Mapping[str, WorkspaceFile]) -> str:
    """sha256 of the canonical JSON of {model, release, tags, files{path: digest}}: sorted keys, no
    spaces, UTF-8 unescaped. orjson writes the same bytes three times faster (19 against 63 ms for
    the 10,000 ids a large listing recomputes; tests/unit/test_manifest.py holds the two equal); json
    writes them where orjson is absent or refuses a value (a lone surrogate, refused by json too)."""
    value = {"model": model, "release": release, "tags": dict(tags), "files": {p: f.digest for p, f in files.items()}}
    if _orjson is not None:
        try:
            return sha256_bytes(_orjson.dumps(value, option=_orjson.OPT_SORT_KEYS))
        except _orjson.JSONEncodeError:
            pass
    return sha256_bytes(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))



_PROFILE_ID = re.compile(r"[0-9a-f]{64}")


@dataclass
class Manifest:
    profiles: list[Profile] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.profiles = sorted(self.profiles, key=lambda p: (p.model, p.release, p.description, p.id))
        seen: dict[tuple[str, str], str] = {}
        for p in self.profiles:
            key = (p.model, p.description)
            if key in seen and seen[key] != p.id:
                raise ManifestError(
                    f"two profiles of {p.model} share the description '{p.description}' "
                    f"({seen[key][:12]} and {p.id[:12]}); descriptions must be unique"
                )
            seen[key] = p.id

    def by_id(self, profile_id_: str) -> Profile | None:
        return next((p for p in self.profiles if p.id == profile_id_), None)

    def document(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "profiles": [p.to_dict() for p in self.profiles]}

    def dumps(self, document: dict[str, Any] | None = None) -> str:
        return yaml.dump(document or self.document(), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         allow_unicode=True, width=4096)

    def save(self, path: str | Path) -> None:
        """The YAML, then its JSON twin (profiles/index.py), which readers take while it names the
        YAML's digest; a crash between the two leaves a twin that names the old YAML, so it is ignored."""
        from nimbuild.profiles.index import write_index

        document = self.document()
        text = self.dumps(document)
        atomic_write_text(path, text)
        write_index(Path(path), text, document)

    def rebased(self, from_dir: Path, to_dir: Path) -> "Manifest":
        """The same profiles with relative file URIs rewritten to resolve from `to_dir`.

        Registry URIs (anything with a scheme) are left as they are. A file outside `to_dir` is
        refused: a local URI stays inside its manifest's directory (check_profiles), so a manifest
        written there would be refused by every reader.
        """
        import os

        def move(uri: str) -> str:
            if "://" in uri:
                return uri
            moved = Path(os.path.relpath(Path(from_dir).resolve() / uri, Path(to_dir).resolve())).as_posix()
            if moved == ".." or moved.startswith("../"):
                raise ManifestError(f"{Path(from_dir) / uri} is outside {to_dir}: a manifest's files must lie in its "
                                    "directory or below, so write it in a directory that holds every input")
            return moved

        return Manifest([
            Profile(p.id, p.model, p.release, p.description, p.tags,
                    {rel: WorkspaceFile(move(f.uri), f.digest, f.size) for rel, f in p.files.items()},
                    p.requires, p.build)
            for p in self.profiles
        ])


def load_manifest(path: str | Path) -> Manifest:
    from nimbuild.profiles.index import read_index

    text = read_user_text(path, "manifest", ManifestError)
    document = without_collection(lambda: read_index(Path(path), text))
    if document is None:
        return parse_manifest(text, origin=str(path))
    return without_collection(lambda: manifest_from_data(document, str(path)))


def parse_manifest(text: str, origin: str = "<manifest>") -> Manifest:
    return manifest_from_data(load_or_raise(text, origin, ManifestError), origin)


def manifest_from_data(data: Any, origin: str = "<manifest>") -> Manifest:
    if not isinstance(data, dict) or "profiles" not in data:
        raise ManifestError(f"{origin}: not a profiles manifest (expected 'schema_version' and 'profiles')")
    version = str(data.get("schema_version", ""))
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise ManifestError(f"{origin}: unsupported schema_version {version!r} (this nimbuild reads {SCHEMA_VERSION})")
    if not isinstance(data["profiles"], list):
        raise ManifestError(f"{origin}: 'profiles' must be a list")
    read = [_profile_from_dict(entry, origin, i) for i, entry in enumerate(data["profiles"])]
    check_profiles([profile for profile, _ in read], origin)
    for index, (profile, stated) in enumerate(read):  # after the check: a bad digest or path is named as such
        if profile.id != stated:
            raise ManifestError(
                f"{origin}: profiles[{index}]: id {str(stated)[:16]}... does not match the profile's content "
                f"(expected {profile.id[:16]}...); the manifest was edited or corrupted"
            )
    return Manifest([profile for profile, _ in read])


def check_profiles(profiles: list[Profile], origin: str) -> list[Profile]:
    """The one check every manifest shape's profiles pass (nimbuild's and NIM's alike) before
    anything lists, selects or fetches them: ids that are sha256 hex and unique, workspace paths
    that stay inside the workspace, digests and sizes a download can be verified against."""
    seen: set[str] = set()
    for index, p in enumerate(profiles):
        where = f"{origin}: profiles[{index}]"
        if not _PROFILE_ID.fullmatch(p.id):
            raise ManifestError(f"{where}: profile id {p.id[:80]!r} is not 64 lowercase hex digits (a sha256)")
        if p.id in seen:
            raise ManifestError(f"{origin}: profile id {p.id} appears twice; each profile needs its own id")
        seen.add(p.id)
        for rel, f in p.files.items():
            _check_relative(rel, where)
            _check_local_uri(rel, f.uri, where)
            if not is_sha256_digest(f.digest):
                raise ManifestError(f"{where}: workspace file '{rel}' has a malformed digest {str(f.digest)[:80]!r} "
                                    "(expected sha256: and 64 lowercase hex digits)")
            if type(f.size) is not int or f.size < 0:
                raise ManifestError(f"{where}: workspace file '{rel}' has size {f.size!r}; expected a byte count")
        _check_requires(p.requires, where)
    return profiles


def mapping_field(entry: dict, key: str, where: str) -> dict:
    """entry[key] as a mapping ({} when absent): a profile's `requires` and `build`."""
    value = entry.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: '{key}' must be a mapping, not {type(value).__name__}")
    return dict(value)


_CC = re.compile(r"\d{1,3}(\.\d{1,3})?")


def _check_requires(requires: dict, where: str) -> None:
    """What selection reads of `requires` (select.py) has the type it reads it as."""
    for key in ("gpus", "gpu_memory_mib"):
        value = requires.get(key)
        if value is not None and not (type(value) is int and value >= 0 or isinstance(value, str) and value.isdigit()):
            raise ManifestError(f"{where}: requires.{key} is {str(value)[:80]!r}; expected a whole number")
    minimum = requires.get("min_compute_capability")
    if minimum is not None and not _CC.fullmatch(str(minimum)):
        raise ManifestError(f"{where}: requires.min_compute_capability is {str(minimum)[:80]!r}; expected e.g. '8.9'")


def _profile_from_dict(entry: Any, origin: str, index: int) -> tuple[Profile, Any]:
    """The profile an entry describes, and the id the entry states (compared after check_profiles)."""
    where = f"{origin}: profiles[{index}]"
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a mapping")
    for key in ("id", "model", "release", "tags", "workspace"):
        if key not in entry:
            raise ManifestError(f"{where}: missing '{key}'")
    if not isinstance(entry["tags"], dict) or not entry["tags"]:
        raise ManifestError(f"{where}: 'tags' must be a non-empty mapping")
    files_data = (entry["workspace"] or {}).get("files") if isinstance(entry["workspace"], dict) else None
    if not isinstance(files_data, dict):
        raise ManifestError(f"{where}: 'workspace.files' must be a mapping of path to {{uri, digest, size}}")
    files = {}
    for rel, f in files_data.items():
        if not isinstance(f, dict) or "uri" not in f or "digest" not in f or "size" not in f:
            raise ManifestError(f"{where}: workspace file '{rel}' needs uri, digest and size")
        files[str(rel)] = WorkspaceFile(uri=str(f["uri"]), digest=f["digest"], size=f["size"])
    try:
        profile = Profile.create(
            model=str(entry["model"]), release=str(entry["release"]), tags=entry["tags"], files=files,
            requires=mapping_field(entry, "requires", where), build=mapping_field(entry, "build", where),
        )
    except ValueError as e:  # a tag whose value is a list or a mapping
        raise ManifestError(f"{where}: {e}") from None
    if entry.get("description") and entry["description"] != profile.description:
        profile.description = str(entry["description"])
    return profile, entry["id"]


def _check_relative(rel: str, where: str) -> None:
    """Workspace paths are unpacked on target machines: refuse anything that escapes the workspace."""
    if not rel or rel.startswith("/") or "\\" in rel or ".." in rel.split("/"):
        raise ManifestError(f"{where}: workspace path {rel!r} must be relative and stay inside the workspace")


def _check_local_uri(rel: str, uri: str, where: str) -> None:
    """A file URI without a scheme is a path from the manifest's directory: one that is absolute or
    climbs out would make a fetch or a publish read any file on the machine, so it is refused as a
    climbing workspace path is. Registry URIs (scheme://) are fetched by digest, not read as paths."""
    if "://" in uri:
        return
    if not uri or uri.startswith("/") or "\\" in uri or "\0" in uri or ".." in uri.split("/"):
        raise ManifestError(f"{where}: workspace file '{rel}' has uri {uri[:200]!r}; a local uri must be relative "
                            "to the manifest's directory and stay inside it (a registry uri names its scheme)")


def merge_manifests(manifests: Iterable[tuple[str, Manifest]]) -> Manifest:
    """Combine manifests deterministically; the same id with different content is a conflict."""
    merged: dict[str, tuple[str, Profile]] = {}
    for origin, manifest in manifests:
        for profile in manifest.profiles:
            if profile.id in merged:
                first_origin, first = merged[profile.id]
                if first.to_dict() != profile.to_dict():
                    raise ManifestError(
                        f"conflict: profile {profile.id[:12]} ({profile.description}) differs between "
                        f"{first_origin} and {origin}"
                    )
                continue
            merged[profile.id] = (origin, profile)
    return Manifest([p for _, p in merged.values()])
