"""Read any profile manifest: nimbuild's own, or NVIDIA NIM's `model_manifest.yaml` in each shape NIM
has shipped, and say which one was read.

    nimbuild   {schema_version: 1.x, profiles: [{id, model, release, tags, workspace: {files}}]}
    nim-v1     {<profile id>: {model, release, tags, container_url, workspace}}: LLM NIMs before 1.5
               (with `!workspace` / `!name` YAML tags, `components: [{dst, src: {repo_id, files}}]`,
               files as strings or single-key maps) and non-LLM NIMs (tags only, no workspace)
    nim-list   [{id, tags, workspace: {files: {path: {uri}}}}]: NIM 1.5+ containers
    nim-legacy {model_profile: ..., manifest: [the list form]}: the wrapped form some NIMs carry
    nim-v2     {schema_version: 2.x, profile_selection_criteria, profiles: [{id, tags, workspace:
               {files: {path: {uri, checksum}}}}]}

NIM's ids are its own and kept as they are. Unknown YAML tags are read as plain values, never
executed and never a crash. A shape that is none of these is refused with one line naming them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nimbuild.errors import ManifestError
from nimbuild.profiles.manifest import Profile, WorkspaceFile, check_profiles, manifest_from_data, mapping_field
from nimbuild.profiles.tags import describe, normalise_tags
from nimbuild.util.files import read_user_text
from nimbuild.util.yamlsafe import load_or_raise, without_collection

FORMATS = {
    "nimbuild": "nimbuild manifest (schema_version 1.x)",
    "nim-v1": "NIM v1 manifest (a mapping of profile ids)",
    "nim-list": "NIM 1.5+ manifest (a list of profiles)",
    "nim-legacy": "NIM legacy manifest (model_profile and a manifest list)",
    "nim-v2": "NIM v2 manifest (schema_version 2.x)",
}
EXPECTED = ("expected nimbuild's manifest (schema_version 1.x with profiles), NIM v1 (profile id -> {tags, ...}), "
            "NIM's list of {id, tags, workspace}, the legacy model_profile + manifest list, or NIM v2 "
            "(schema_version 2.x with profiles)")


@dataclass
class ManifestRead:
    """What a manifest held, and which shape it was read as."""

    profiles: list[Profile]
    format: str  # a key of FORMATS
    details: dict[str, str] = field(default_factory=dict)  # e.g. v2's profile_selection_criteria

    def describe(self) -> str:
        extra = "".join(f", {k} {v}" for k, v in self.details.items())
        return f"{FORMATS[self.format]}{extra}"


MANIFEST_ENV = "NIM_MANIFEST_PATH"


KSERVE_MODEL_DIR = Path("/mnt/models")  # where KServe puts a storageUri's model (modelcar or storage initializer)


def manifest_path(given: Path | None) -> Path:
    """The manifest a command reads: the one given, else $NIM_MANIFEST_PATH (what a NIM image
    sets to its baked model_manifest.yaml), else the profile KServe mounted at /mnt/models (a model
    image from `publish --images`, or a pulled release), else ./profiles.yaml."""
    import os

    if given:
        return given
    if os.environ.get(MANIFEST_ENV):
        return Path(os.environ[MANIFEST_ENV])
    mounted = KSERVE_MODEL_DIR / "profiles.yaml"
    return mounted if mounted.is_file() else Path("profiles.yaml")


def read_profiles(path: str | Path) -> ManifestRead:
    """Profiles from a manifest of any supported shape, and the shape's name."""
    from nimbuild.profiles.index import read_index

    text = read_user_text(path, "manifest", ManifestError)
    document = without_collection(lambda: read_index(Path(path), text))  # nimbuild's JSON twin of this text
    if document is None:
        return parse_profiles(text, str(path))
    return without_collection(lambda: profiles_from_document(document, str(path)))


def parse_profiles(text: str, origin: str = "<manifest>") -> ManifestRead:
    data = load_or_raise(text, origin, ManifestError, local_tags=True)
    if _has_numeric_ids(data):  # rare: read again with numbers kept as written
        data = load_or_raise(text, origin, ManifestError, local_tags=True, numbers_as_text=True)
    return profiles_from_document(data, origin)


def profiles_from_document(data: Any, origin: str) -> ManifestRead:
    """The profiles of a manifest's value, whichever shape it has."""
    if isinstance(data, list):
        return ManifestRead(_listed(data, origin, "manifest"), "nim-list")
    if not isinstance(data, dict):
        raise ManifestError(f"{origin}: not a profile manifest; {EXPECTED}")
    version = str(data.get("schema_version", "")).strip()
    if "schema_version" in data:
        if version.startswith("1") and "profiles" in data:
            return ManifestRead(manifest_from_data(data, origin).profiles, "nimbuild")
        if version.startswith("2"):
            if not isinstance(data.get("profiles"), list):
                raise ManifestError(f"{origin}: a v2 manifest's 'profiles' must be a list of {{id, tags, workspace}}")
            criteria = data.get("profile_selection_criteria")
            details = {"profile_selection_criteria": str(criteria)} if criteria else {}
            return ManifestRead(_listed(data["profiles"], origin, "profiles"), "nim-v2", details)
        raise ManifestError(f"{origin}: unsupported schema_version {version!r}; {EXPECTED}")
    if isinstance(data.get("manifest"), list):
        details = {"model_profile": str(data["model_profile"])} if data.get("model_profile") else {}
        return ManifestRead(_listed(data["manifest"], origin, "manifest"), "nim-legacy", details)
    if not any(isinstance(v, dict) for v in data.values()):  # v1's values are profiles; say what is wrong in one
        raise ManifestError(f"{origin}: not a profile manifest; {EXPECTED}")
    return ManifestRead(check_profiles([_nim_profile(pid, p, origin, str(pid)) for pid, p in data.items()], origin), "nim-v1")


def _has_numeric_ids(data: Any) -> bool:
    if isinstance(data, dict) and "schema_version" not in data:
        entries = data.get("manifest") if isinstance(data.get("manifest"), list) else None
        if entries is None:
            return any(not isinstance(k, str) for k in data)
        data = entries
    if isinstance(data, dict):
        data = data.get("profiles") if isinstance(data.get("profiles"), list) else []
    return isinstance(data, list) and any(isinstance(e, dict) and isinstance(e.get("id", e.get("profile_id")), (int, float))
                                          for e in data)


def _listed(entries: list, origin: str, key: str) -> list[Profile]:
    profiles = []
    for i, entry in enumerate(entries):
        profile_id = entry.get("id") or entry.get("profile_id") if isinstance(entry, dict) else None
        profiles.append(_nim_profile(profile_id, entry, origin, f"{key}[{i}]"))
    return check_profiles(profiles, origin)




def _nim_profile(profile_id: Any, entry: Any, origin: str, where: str) -> Profile:
    where = f"{origin}: {where}"
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a mapping with tags")
    if not profile_id:
        raise ManifestError(f"{where}: missing 'id'")
    tags = entry.get("tags")
    if not isinstance(tags, dict) or not tags:
        raise ManifestError(f"{where}: 'tags' must be a non-empty mapping")
    try:
        tags = normalise_tags(tags)
    except ValueError as e:
        raise ManifestError(f"{where}: {e}") from None
    return Profile(
        id=str(profile_id), model=str(entry.get("model", "")), release=str(entry.get("release", "")),
        description=str(entry.get("description") or describe(tags)), tags=tags,
        files=_nim_files(entry.get("workspace"), where), requires=mapping_field(entry, "requires", where),
    )


def _nim_files(workspace: Any, where: str) -> dict[str, WorkspaceFile]:
    """The files a profile's workspace lists with a checksum (v2, the list form; v1's components
    name remote repositories and file names, which carry nothing to verify)."""
    if workspace is None:
        return {}
    if not isinstance(workspace, dict):
        raise ManifestError(f"{where}: 'workspace' must be a mapping (files, or components)")
    raw = workspace.get("files")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: 'workspace.files' must map paths to {{uri, checksum}}")
    files = {}
    for rel, f in raw.items():
        if not isinstance(f, dict) or not f.get("uri"):
            raise ManifestError(f"{where}: workspace file {rel!r} needs a uri")
        checksum = f.get("checksum") or f.get("digest")
        if checksum:
            checksum = str(checksum).strip().lower()  # NIM writes bare hex; a digest may say sha256:
            digest = checksum if ":" in checksum else f"sha256:{checksum}"
            size = f.get("size") or 0
            size = int(size) if isinstance(size, str) and size.isdigit() else size
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ManifestError(f"{where}: workspace file {rel!r} has size {size!r}; expected a whole number of bytes")
            files[str(rel)] = WorkspaceFile(str(f["uri"]), digest, size)
    return files


def go_regexp_refusals(profiles: list[Profile]) -> list[str]:
    """One line for each profile whose `product_name_regex` RE2 cannot compile. nimbuild's selection
    takes it as a Python regular expression (look-aheads included); the NIM Operator matches it with
    Go's regexp, which is RE2 (internal/nimparser/v1 and v2, nimparser.go: matchesRegex ignores the
    compile error), so there the profile silently never matches a GPU. Checked with Google's RE2."""
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 otherwise writes each refusal to stderr itself
    lines = []
    for p in profiles:
        pattern = p.tags.get("product_name_regex")
        if not pattern:
            continue
        try:
            re2.compile(pattern, options=options)
        except re2.error as e:
            reason = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
            lines.append(f"profile {p.id} ({p.description}): product_name_regex {pattern!r} is not RE2 syntax "
                         f"({reason}); the NIM Operator, which matches it with Go's regexp, never selects it")
    return lines


def nim_v2_text(profiles: list[Profile]) -> str:
    """Profiles as a NIM v2 manifest (per-file uri and checksum; size, model, release, description
    and requires beside them), which parse_profiles reads back to the same profiles."""
    entries = []
    for p in profiles:
        entry: dict[str, Any] = {"id": p.id, "model": p.model, "release": p.release, "description": p.description,
                                 "tags": dict(p.tags)}
        if p.requires:
            entry["requires"] = dict(p.requires)
        entry["workspace"] = {"files": {rel: {"uri": f.uri, "checksum": f.digest, "size": f.size}
                                        for rel, f in p.files.items()}}
        entries.append(entry)
    data = {"schema_version": "2.0.0", "profile_selection_criteria": "default", "profiles": entries}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=4096, allow_unicode=True)
