"""What a pulled release becomes on this machine: the profiles chosen from it, and their workspaces
placed from the blob cache with a manifest that points at them. Every registry kind (OCI, NGC)
ends a pull here."""

from __future__ import annotations

import os
from pathlib import Path

from nimbuild.profiles.manifest import MANIFEST_NAME, Manifest, Profile, WorkspaceFile
from nimbuild.registry.cache import BlobCache


def choose(profiles: list[Profile], profile: str | None, select: bool) -> list[Profile]:
    """All profiles, the one named, or the one this machine would run (NIM's download-to-cache)."""
    from nimbuild.profiles.select import Candidate, find_candidate, select_profile

    if profile:
        return [find_candidate(profile, [Candidate(p) for p in profiles]).profile]
    if select:
        from nimbuild.profiles.system import detect_system

        return [select_profile(profiles, detect_system(), os.environ).require()]
    return profiles


def with_uris(profile: Profile, uri_for) -> Profile:
    files = {rel: WorkspaceFile(uri_for(rel, f), f.digest, f.size) for rel, f in profile.files.items()}
    return Profile(profile.id, profile.model, profile.release, profile.description, profile.tags, files,
                   profile.requires, profile.build)


def materialise(profiles: list[Profile], cache: BlobCache, dest: Path) -> None:
    """Workspaces under dest/profiles/<description>/, then dest/profiles.yaml pointing at them."""
    local = []
    for p in profiles:
        for rel, f in p.files.items():
            cache.place(f.digest, dest / "profiles" / p.description / rel)
        local.append(with_uris(p, lambda rel, f, p=p: f"profiles/{p.description}/{rel}"))
    Manifest(local).save(dest / MANIFEST_NAME)
