"""How profiles and releases look as OCI artifacts (docs/design.md §7).

- A profile is an image manifest with `artifactType` application/vnd.nimbuild.profile.v1+json,
  the empty config, one layer per workspace file (titled with its relative path), and its tags
  and identity as annotations. Tagged `<release>-<first 12 hex of the id>`.
- A release is an image index over its profile manifests, the same profiles as CNCF ModelPack
  manifests (modelpack.py), and one small manifest whose single layer is the release's
  profiles.yaml. Tagged `<release>`. (An index may only list manifests,
  so profiles.yaml travels wrapped in one; clients such as skopeo can then copy the release.)

Manifests are serialised canonically (sorted keys, no spaces), so the same release always has
the same digest and a republish of unchanged content is recognised as such.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"  # sha256 of "{}"
PROFILE_TYPE = "application/vnd.nimbuild.profile.v1+json"
MANIFEST_TYPE = "application/vnd.nimbuild.manifest.v1+yaml"
RELEASE_TYPE = "application/vnd.nimbuild.release.v1+json"
FILE_MEDIA = "application/octet-stream"
TITLE = "org.opencontainers.image.title"
PREFIX = "ai.nimbuild."
MODELPACK_TYPE = "application/vnd.cncf.model.manifest.v1+json"  # CNCF ModelPack (modelpack.py)
MODELPACK_OF = PREFIX + "modelpack.of"  # in a release index: the profile a ModelPack manifest packs


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    artifact_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_dict(cls, data: Any, what: str = "a descriptor") -> "Descriptor":
        """A descriptor as a registry serves it, checked: anything else is a RegistryError that
        names `what`, since a registry's JSON is as untrusted as any download."""
        from nimbuild.errors import RegistryError
        from nimbuild.util.files import is_sha256_digest

        if not isinstance(data, dict):
            raise RegistryError(f"{what} is not a JSON object")
        kind, digest, size = data.get("mediaType"), data.get("digest"), data.get("size")
        annotations, artifact = data.get("annotations") or {}, data.get("artifactType")
        if not isinstance(kind, str) or not is_sha256_digest(digest) or type(size) is not int or size < 0:
            raise RegistryError(f"{what} needs a mediaType, a sha256 digest and a size in bytes")
        if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()) \
                or not (artifact is None or isinstance(artifact, str)):
            raise RegistryError(f"{what} has annotations or an artifactType that are not strings")
        return cls(kind, digest, size, dict(annotations) or None, artifact)

    @classmethod
    def listed(cls, data: Any, what: str) -> list["Descriptor"]:
        """A list of descriptors (an index's `manifests`, a manifest's `layers`), checked."""
        from nimbuild.errors import RegistryError

        if data is None:
            return []
        if not isinstance(data, list):
            raise RegistryError(f"{what} is not a list of descriptors")
        return [cls.from_dict(entry, f"{what}[{i}]") for i, entry in enumerate(data)]


def canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def empty_config() -> dict[str, Any]:
    return {"mediaType": EMPTY, "digest": EMPTY_DIGEST, "size": 2, "data": "e30="}


def profile_manifest(profile) -> bytes:
    """The OCI manifest of one profile; its layers are the workspace files, in path order."""
    layers = [
        Descriptor(FILE_MEDIA, f.digest, f.size, {TITLE: rel}).to_dict()
        for rel, f in sorted(profile.files.items())
    ]
    return canonical({"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": PROFILE_TYPE,
                      "config": empty_config(), "layers": layers, "annotations": identity(profile)})


def identity(profile) -> dict[str, str]:
    """The annotations that say which profile an artifact holds (nimbuild's and ModelPack's manifests)."""
    return {
        PREFIX + "profile.id": profile.id,
        PREFIX + "model": profile.model,
        PREFIX + "release": profile.release,
        PREFIX + "description": profile.description,
        **{PREFIX + "tag." + k: v for k, v in profile.tags.items()},
    }


def manifest_wrapper(yaml_digest: str, yaml_size: int) -> bytes:
    layer = Descriptor(MANIFEST_TYPE, yaml_digest, yaml_size, {TITLE: "profiles.yaml"}).to_dict()
    return canonical({"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": MANIFEST_TYPE,
                      "config": empty_config(), "layers": [layer]})


def release_index(model: str, release: str, profiles: list[tuple[Any, bytes]], wrapper: bytes,
                  modelpacks: list[tuple[Any, bytes]] = ()) -> bytes:
    """The release: nimbuild's profile manifests, the same profiles as ModelPack manifests (marked
    `modelpack.of`, not `profile.id`, so readers of nimbuild's own never mistake one), profiles.yaml.

    Its entries are told apart by annotations alone, and the index carries no `artifactType` (an OCI
    1.1 field): clients built on image-spec 1.0, skopeo 1.9 among them, drop the field when they copy
    an index, which changes its digest, and refuse the copy under --preserve-digests. Without it an
    air-gapped mirror made by `skopeo copy --all` is the release byte for byte."""
    entries = [
        Descriptor(MANIFEST, digest_of(body), len(body),
                   {PREFIX + "profile.id": p.id, PREFIX + "description": p.description}).to_dict()
        for p, body in sorted(profiles, key=lambda pair: pair[0].id)
    ]
    entries += [
        Descriptor(MANIFEST, digest_of(body), len(body), {MODELPACK_OF: p.id, PREFIX + "description": p.description}
                   ).to_dict()
        for p, body in sorted(modelpacks, key=lambda pair: pair[0].id)
    ]
    entries.append(Descriptor(MANIFEST, digest_of(wrapper), len(wrapper), {TITLE: "profiles.yaml"}).to_dict())
    return canonical({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries,
                      "annotations": {PREFIX + "model": model, PREFIX + "type": RELEASE_TYPE,
                                      "org.opencontainers.image.version": release}})


def profile_tag(release: str, profile_id: str) -> str:
    return f"{release}-{profile_id[:12]}"


def modelpack_tag(release: str, profile_id: str) -> str:
    """The profile as a ModelPack artifact: `modctl pull REG/NS/MODEL:<this>`."""
    return f"{profile_tag(release, profile_id)}-modelpack"


def parse_json(body: bytes, what: str) -> dict[str, Any]:
    from nimbuild.errors import RegistryError

    try:
        data = json.loads(body)
    except ValueError:
        raise RegistryError(f"{what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{what} is not a JSON object")
    return data
