"""Publish and pull profiles: one interface, three stores (docs/design.md §7).

    ./registry, file:///...   an OCI image layout on disk (the default; no server)
    oci://host[:port]/ns      any OCI distribution registry; a model lives in ns/<model>
    ngc://org[/team]          NGC's model registry through ngcsdk

Publishing sends each distinct blob once (a blob the registry already has is not sent), then the
profile manifests, then the release index last, so a release tag never points at missing content.
A release is immutable: different content under an existing tag is refused unless forced.
Pulling verifies every byte into the cache before a file appears under its final name.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nimbuild.errors import IntegrityError, RegistryError
from nimbuild.profiles.manifest import MANIFEST_NAME, Manifest, Profile, load_manifest, parse_manifest
from nimbuild.registry import artifacts as art
from nimbuild.registry import modelpack
from nimbuild.registry.cache import BlobCache
from nimbuild.registry.local import choose, materialise, with_uris
from nimbuild.util.progress import Reporter, TransferProgress

WORKERS = 4


@dataclass
class TransferReport:
    releases: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # MODEL:TAG of each model image pushed (--images)
    blobs_sent: int = 0
    bytes_sent: int = 0
    blobs_present: int = 0  # already in the registry or the cache: not transferred
    unchanged: list[str] = field(default_factory=list)  # releases identical to what was there
    profiles: list[Profile] = field(default_factory=list)
    dest: Path | None = None


def open_store(uri: str, create: bool = False):
    if uri.startswith("oci://"):
        from nimbuild.registry.oci import OciStore

        return OciStore(uri)
    if uri.startswith("ngc://"):
        from nimbuild.registry.ngc import NgcStore

        return NgcStore(uri)
    if "://" in uri and not uri.startswith("file://"):
        raise RegistryError(f"{uri}: unsupported registry (use a directory, file://, oci:// or ngc://)")
    from urllib.parse import unquote, urlparse

    from nimbuild.registry.layout import LayoutStore

    path = Path(unquote(urlparse(uri).path)) if uri.startswith("file://") else Path(uri)
    return LayoutStore(path, create=create)


REGISTRY_ENV = "NIMBUILD_REGISTRY"  # the registry to fetch from where no command line names one


def registry_of(profile: Profile) -> str | None:
    """The registry a profile's files name, or None for files named relative to their manifest (a
    compile's output). The registry's copy of profiles.yaml, and a NIM v2 export of it, name each
    file `<registry>/<model>@sha256:...` (NGC: `<registry>/<model>:<version>/<path>`)."""
    bases = set()
    for rel, f in profile.files.items():
        if "://" not in f.uri:
            return None
        marker = f"/{profile.model}:" if f.uri.startswith("ngc://") else f"/{profile.model}@"
        base, sep, _ = f.uri.rpartition(marker)
        if not sep or not base:
            raise RegistryError(f"{profile.description}/{rel}: {f.uri} names no registry "
                                f"(expected <registry>{marker}...)")
        bases.add(base)
    if len(bases) > 1:
        raise RegistryError(f"profile {profile.description}: its files name {len(bases)} registries "
                            f"({', '.join(sorted(bases))}); give one with --registry or ${REGISTRY_ENV}")
    return bases.pop() if bases else None


def parse_ref(ref: str) -> tuple[str, str]:
    model, sep, release = ref.partition(":")
    if not sep or not model or not release:
        raise RegistryError(f"{ref!r}: expected MODEL:RELEASE, e.g. minilm-embed:0.1.0")
    return model, release


# --- publish ----------------------------------------------------------------------------------------

def publish(manifest_path: Path, uri: str, reporter: Reporter, force: bool = False,
            images: str | None = None) -> TransferReport:
    """Publish each release; with `images` ("models" or "modelcar", with a shell), also an OCI image
    per profile with the profile under /models (model_image.py), for KServe and image volumes."""
    from nimbuild.registry import model_image

    manifest_path = manifest_path / MANIFEST_NAME if manifest_path.is_dir() else manifest_path
    manifest = load_manifest(manifest_path)
    base = manifest_path.parent
    shell = model_image.find_busybox() if images == "modelcar" else None
    store = open_store(uri, create=True)
    report = TransferReport()
    try:
        if hasattr(store, "publish_release"):  # NGC has versions, not manifests
            if images:
                raise RegistryError(f"{uri}: NGC's model registry holds no images; publish --images to an OCI registry")
            groups = _by_release(manifest)
            for (model, release), profiles in groups.items():
                store.publish_release(model, release, profiles, base, reporter, force)
                report.releases.append(f"{model}:{release}")
            return report
        for (model, release), profiles in _by_release(manifest).items():
            _publish_release(store, model, release, profiles, base, reporter, force, report)
            if images:
                _publish_images(store, model, release, profiles, base, shell, reporter, force, report)
    finally:
        store.close()
    return report


def _by_release(manifest: Manifest) -> dict[tuple[str, str], list[Profile]]:
    groups: dict[tuple[str, str], list[Profile]] = {}
    for p in manifest.profiles:
        groups.setdefault((p.model, p.release), []).append(p)
    if not groups:
        raise RegistryError("the manifest holds no profiles to publish")
    return groups


def _publish_release(store, model: str, release: str, profiles: list[Profile], base: Path,
                     reporter: Reporter, force: bool, report: TransferReport) -> None:
    repo = store.repo(model)
    blobs = _local_blobs(profiles, base)
    registry_manifest = Manifest([with_uris(p, lambda rel, f: f"{store.uri}/{model}@{f.digest}") for p in profiles])
    yaml_bytes = registry_manifest.dumps().encode()
    bodies = [(p, art.profile_manifest(p)) for p in profiles]
    existing = store.get_manifest(repo, release)
    name = f"{model}:{release}"
    if existing is not None:
        # A release's content is its profiles (ids, tags, files), not the provenance in its
        # profiles.yaml: the same profiles rebuilt by a newer nimbuild are the same release.
        there, here = _profile_manifests(existing), {p.id: art.digest_of(body) for p, body in bodies}
        if there == here and not force:
            report.unchanged.append(name)
            report.releases.append(name)
            return
        if not force:
            changed = sorted(set(there) ^ set(here)) or sorted(k for k in here if there.get(k) != here[k])
            raise RegistryError(
                f"{name} is already published in {store.uri} with different profiles "
                f"({', '.join(i[:12] for i in changed[:4])} differ); a release is immutable: "
                "bump the release, or pass --force to replace it"
            )
    packs = _modelpack_manifests(profiles, base)  # after the check: an unchanged release does not read its graphs
    wrapper = art.manifest_wrapper(art.digest_of(yaml_bytes), len(yaml_bytes))
    index = art.release_index(model, release, bodies, wrapper, [(p, body) for p, (_, body) in zip(profiles, packs)])
    _send_blobs(store, repo, blobs, reporter, report)
    store.put_bytes(repo, art.EMPTY_DIGEST, b"{}")
    store.put_bytes(repo, art.digest_of(yaml_bytes), yaml_bytes)
    for profile, body in bodies:
        store.push_manifest(repo, art.profile_tag(release, profile.id), body, art.MANIFEST, art.PROFILE_TYPE)
    for profile, (config, body) in zip(profiles, packs):  # the same blobs, described for ModelPack readers
        store.put_bytes(repo, art.digest_of(config), config)
        store.push_manifest(repo, art.modelpack_tag(release, profile.id), body, art.MANIFEST, art.MODELPACK_TYPE)
    store.push_manifest(repo, None, wrapper, art.MANIFEST, art.MANIFEST_TYPE)
    store.push_manifest(repo, release, index, art.INDEX)  # last: the tag appears when all is there
    report.releases.append(name)


def _publish_images(store, model: str, release: str, profiles: list[Profile], base: Path, shell: Path | None,
                    reporter: Reporter, force: bool, report: TransferReport) -> None:
    """One image per profile, tagged `<release>-<id>-image`; layers the registry has are not sent."""
    import tempfile

    from nimbuild.registry import model_image

    repo = store.repo(model)
    for p in profiles:
        tag = model_image.image_tag(release, p.id)
        with tempfile.TemporaryDirectory(prefix="nimbuild-image-") as tmp:
            config, body, layers = model_image.build(p, base, Path(tmp), shell)
            existing = store.get_manifest(repo, tag)
            if existing is not None and existing != body and not force:
                raise RegistryError(f"{model}:{tag} is already published in {store.uri} with different content; "
                                    "pass --force to replace it")
            _send_blobs(store, repo, {digest: (size, path) for digest, size, path in layers}, reporter, report)
        store.put_bytes(repo, art.digest_of(config), config)
        store.push_manifest(repo, tag, body, art.MANIFEST)
        report.images.append(f"{model}:{tag}")


def _modelpack_manifests(profiles: list[Profile], base: Path) -> list[tuple[bytes, bytes]]:
    """(config, manifest) of each profile as a CNCF ModelPack artifact (docs/design.md §12)."""
    out = []
    for p in profiles:
        config = modelpack.config(p, base)
        out.append((config, modelpack.manifest(p, config, art.identity(p))))
    return out


def _profile_manifests(index_body: bytes) -> dict[str, str]:
    """{profile id: manifest digest} of a published release index."""
    index = art.parse_json(index_body, "published release index")
    return {d["annotations"][art.PREFIX + "profile.id"]: d["digest"] for d in index.get("manifests") or []
            if (d.get("annotations") or {}).get(art.PREFIX + "profile.id")}


def _local_blobs(profiles: list[Profile], base: Path) -> dict[str, tuple[int, Path]]:
    blobs: dict[str, tuple[int, Path]] = {}
    for p in profiles:
        for rel, f in p.files.items():
            if "://" in f.uri:
                raise RegistryError(f"{p.description}/{rel}: file is not local ({f.uri}); publish a compile output")
            path = base / f.uri
            if not path.is_file():
                raise RegistryError(f"{p.description}/{rel}: {path} is missing")
            if path.stat().st_size != f.size:
                raise IntegrityError(f"{path}: size {path.stat().st_size} differs from the manifest's {f.size}")
            blobs[f.digest] = (f.size, path)
    return blobs


def _send_blobs(store, repo: str, blobs: dict[str, tuple[int, Path]], reporter: Reporter, report: TransferReport) -> None:
    with ThreadPoolExecutor(WORKERS) as pool:
        missing = [d for d, present in zip(blobs, pool.map(lambda d: store.blob_exists(repo, d), blobs)) if not present]
        report.blobs_present += len(blobs) - len(missing)
        progress = TransferProgress(reporter, sum(blobs[d][0] for d in missing), "push")

        def send(digest: str) -> None:
            size, path = blobs[digest]
            store.push_blob(repo, digest, size, path, on_bytes=progress.advance)
            progress.file_done(f"pushed {path.name} ({size / 1e6:.1f} MB)")

        try:
            list(pool.map(send, missing))
        finally:
            progress.close()
    report.blobs_sent += len(missing)
    report.bytes_sent += sum(blobs[d][0] for d in missing)


# --- pull -------------------------------------------------------------------------------------------

def pull(ref: str, uri: str, reporter: Reporter, dest: Path | None = None, profile: str | None = None,
         select: bool = False, cache: BlobCache | None = None) -> TransferReport:
    model, release = parse_ref(ref)
    cache = cache or BlobCache()
    store = open_store(uri)
    report = TransferReport(releases=[ref])
    try:
        if hasattr(store, "pull_release"):
            return store.pull_release(model, release, reporter, dest, profile, select, cache, report)
        repo = store.repo(model)
        entries, profiles = _release(store, repo, ref, cache)
        chosen = choose(profiles, profile, select)
        for p in chosen:
            if entries is not None:  # a ModelPack manifest is itself the list of the profile's layers
                _check_profile_layers(store, repo, p, entries)
        _fetch_all(store, repo, chosen, cache, reporter, report)
        dest = dest or cache.root / "profiles" / model / release
        materialise(chosen, cache, dest)
        report.profiles, report.dest = chosen, dest
        return report
    finally:
        store.close()


def published_profiles(ref: str, uri: str, cache: BlobCache | None = None) -> list[Profile]:
    """A published release's profiles as the registry's copy of profiles.yaml names them: each file
    by its URI in that registry. What an image bakes as its manifest, so that download-to-cache,
    given no registry (as the NIM Operator's caching Job gives none), fetches from the one named."""
    model, release = parse_ref(ref)
    store = open_store(uri)
    try:
        if hasattr(store, "release_profiles"):
            return store.release_profiles(model, release)
        return _release(store, store.repo(model), ref, cache or BlobCache())[1]
    finally:
        store.close()


def _release(store, repo: str, ref: str, cache: BlobCache) -> tuple[list | None, list[Profile]]:
    """(the release index's entries, the profiles its profiles.yaml lists). The ref may also name one
    profile's ModelPack manifest (`<release>-<id>-modelpack`, or one copied on its own): then its
    profile, and None for the entries."""
    model, release = parse_ref(ref)
    index_body = store.get_manifest(repo, release)
    if index_body is None:
        known = ", ".join(t for t in store.tags(repo) if not _is_profile_tag(t)) or "none"
        raise RegistryError(f"{ref} not found in {store.uri} (releases of {model}: {known})")
    index = art.parse_json(index_body, f"{ref} index")
    if _is_modelpack(index):
        return None, [_modelpack_profile(store, repo, index, ref)]
    if "layers" in index:  # one image manifest: a model image (publish --images), or a profile's own tag
        raise RegistryError(f"{ref} names one manifest, not a release: pull {model}:RELEASE, or a profile's "
                            f"ModelPack tag {model}:RELEASE-ID-modelpack")
    entries = art.Descriptor.listed(index.get("manifests"), f"{ref} index: manifests")
    if not any(map(_is_wrapper, entries)):
        packs = [e for e in entries if e.artifact_type == art.MODELPACK_TYPE or (e.annotations or {}).get(art.MODELPACK_OF)]
        if packs:  # an index of ModelPack manifests alone: each holds its whole profile
            return None, [_modelpack_profile(store, repo, art.parse_json(_manifest(store, repo, e.digest),
                                                                         f"{ref} ModelPack manifest"), ref) for e in packs]
    return entries, _registry_profiles(store, repo, ref, entries, cache)


def _is_wrapper(entry) -> bool:
    """The index entry of profiles.yaml: by artifactType, or by title, since copies made by older
    clients (skopeo 1.9) drop artifactType from index descriptors but keep annotations."""
    return entry.artifact_type == art.MANIFEST_TYPE or (entry.annotations or {}).get(art.TITLE) == "profiles.yaml"


def _is_modelpack(body: dict) -> bool:
    return body.get("artifactType") == art.MODELPACK_TYPE or (body.get("config") or {}).get("mediaType") == modelpack.CONFIG


def _modelpack_profile(store, repo: str, body: dict, what: str) -> Profile:
    return modelpack.profile_of(body, what, lambda digest: f"{store.uri}/{repo.rpartition('/')[2]}@{digest}")


def _is_profile_tag(tag: str) -> bool:
    head, _, tail = tag.removesuffix("-modelpack").removesuffix("-image").rpartition("-")
    return bool(head) and len(tail) == 12 and all(c in "0123456789abcdef" for c in tail)


def _registry_profiles(store, repo: str, ref: str, entries: list, cache: BlobCache) -> list[Profile]:
    wrappers = [e for e in entries if _is_wrapper(e)]
    if not wrappers:
        raise RegistryError(f"{ref} is not a nimbuild release (its index lists no profiles.yaml)")
    wrapper = art.parse_json(_manifest(store, repo, wrappers[0].digest), f"{ref} profiles.yaml manifest")
    layers = art.Descriptor.listed(wrapper.get("layers"), f"{ref} profiles.yaml manifest: layers")
    if not layers:
        raise RegistryError(f"{ref}: its profiles.yaml manifest has no layer")
    layer = layers[0]
    path, _ = cache.fetch(layer.digest, layer.size, store.blob_reader(repo, layer.digest, layer.size), store.describe(repo))
    return parse_manifest(path.read_text(encoding="utf-8"), f"{ref}:profiles.yaml").profiles


def _manifest(store, repo: str, digest: str) -> bytes:
    body = store.get_manifest(repo, digest)
    if body is None:
        raise RegistryError(f"{store.describe(repo)}: manifest {digest[:19]}... is missing")
    return body


def _check_profile_layers(store, repo: str, profile: Profile, entries: list) -> None:
    """The profile's OCI manifest must list exactly the files profiles.yaml says it has."""
    entry = next((e for e in entries if (e.annotations or {}).get(art.PREFIX + "profile.id") == profile.id), None)
    if entry is None:
        raise RegistryError(f"{store.describe(repo)}: the release index lists no manifest for profile {profile.id[:12]}")
    body = art.parse_json(_manifest(store, repo, entry.digest), f"profile {profile.id[:12]} manifest")
    layers = {}
    for d in art.Descriptor.listed(body.get("layers"), f"{profile.description} manifest: layers"):
        layers[(d.annotations or {}).get(art.TITLE, "")] = (d.digest, d.size)
    expected = {rel: (f.digest, f.size) for rel, f in profile.files.items()}
    if layers != expected:
        raise IntegrityError(f"{store.describe(repo)}: profile {profile.id[:12]}'s manifest disagrees with profiles.yaml")


def _fetch_all(store, repo: str, profiles: list[Profile], cache: BlobCache, reporter: Reporter, report: TransferReport) -> None:
    blobs = {f.digest: f.size for p in profiles for f in p.files.values()}
    progress = TransferProgress(reporter, sum(blobs.values()), "pull")

    def fetch(digest: str) -> None:
        size = blobs[digest]
        _, moved = cache.fetch(digest, size, store.blob_reader(repo, digest, size), store.describe(repo),
                               on_bytes=progress.advance)
        if moved:
            report.blobs_sent += 1
            report.bytes_sent += size
            progress.file_done(f"pulled {digest[:19]}... ({size / 1e6:.1f} MB)")
        else:
            report.blobs_present += 1

    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(fetch, blobs))
    finally:
        progress.close()


# --- listing ----------------------------------------------------------------------------------------

def list_registry(uri: str) -> dict[str, dict[str, list[str]]]:
    """{model: {"releases", "profile_tags", "modelpack_tags", "image_tags": [...]}} for every model in
    the registry: each profile has nimbuild's tag and a ModelPack one, and an image tag if published so."""
    store = open_store(uri)
    try:
        out = {}
        for model in store.repositories():
            tags = store.tags(store.repo(model))
            profile_tags = [t for t in tags if _is_profile_tag(t)]
            out[model] = {"releases": [t for t in tags if not _is_profile_tag(t)],
                          "profile_tags": [t for t in profile_tags if not t.endswith(("-modelpack", "-image"))],
                          "modelpack_tags": [t for t in profile_tags if t.endswith("-modelpack")],
                          "image_tags": [t for t in profile_tags if t.endswith("-image")]}
        return out
    finally:
        store.close()
