"""NGC's model registry through `ngcsdk`: `ngc://org[/team]`, a model is `org/team/<model>`.

NGC stores versions of a model, each a directory of files. A profile becomes the version
`<release>-<first 12 hex of its id>` holding its workspace; the release's profiles.yaml becomes the
version `<release>`. Versions are immutable on NGC as releases are here: an existing profile
version is not sent again, and a release version with different content is refused unless forced
(then it is removed and uploaded again). Pulled files are verified against profiles.yaml's digests
in the cache before they are used.

The key comes from NGC_API_KEY or NGC_CLI_API_KEY and is passed to ngcsdk only. The calls used
(Client.configure, registry.model.create/get_version/upload_version/download_version/remove) and the
exception names matched (ResourceNotFoundException, ResourceAlreadyExistsException) were checked
against ngcsdk 4.37.0.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from nimbuild.errors import RegistryError
from nimbuild.profiles.manifest import MANIFEST_NAME, Manifest, Profile, parse_manifest
from nimbuild.registry.artifacts import profile_tag
from nimbuild.registry.local import choose, materialise, with_uris
from nimbuild.util.files import iter_file


def make_client(org: str, team: str | None):
    """A configured ngcsdk client. Tests replace this function with a recording stand-in."""
    try:
        import ngcsdk
    except ImportError:
        raise RegistryError("ngc:// registries need ngcsdk: pip install 'nimbuild[ngc]'") from None
    key = os.environ.get("NGC_API_KEY") or os.environ.get("NGC_CLI_API_KEY")
    if not key:
        raise RegistryError("ngc:// registries need an API key in NGC_API_KEY or NGC_CLI_API_KEY")
    client = ngcsdk.Client()
    client.configure(api_key=key, org_name=org, team_name=team or "no-team")
    return client


class NgcStore:
    def __init__(self, uri: str):
        parts = [p for p in uri[len("ngc://"):].split("/") if p]
        if not 1 <= len(parts) <= 2:
            raise RegistryError(f"{uri}: expected ngc://org or ngc://org/team")
        self.org, self.team = parts[0], (parts[1] if len(parts) == 2 else None)
        self.uri = f"ngc://{'/'.join(parts)}"
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = make_client(self.org, self.team)
        return self._client

    def repo(self, model: str) -> str:
        return "/".join(p for p in (self.org, self.team, model) if p)

    def close(self) -> None:
        pass

    def _exists(self, model: str, version: str) -> bool:
        models = self.client.registry.model
        try:
            models.get_version(org_name=self.org, team_name=self.team, model_name=model,
                                                   version=version)
            return True
        except Exception as e:  # ngcbase's ResourceNotFoundException, not importable without ngcsdk
            if "NotFound" in type(e).__name__:
                return False
            raise RegistryError(f"{self.uri}: NGC refused a lookup of {model}:{version}: {type(e).__name__}") from None

    def _upload(self, model: str, version: str, source: Path) -> None:
        result = self.client.registry.model.upload_version(target=f"{self.repo(model)}:{version}", source=str(source))
        status = result[1] if isinstance(result, (tuple, list)) and len(result) > 1 else "Completed"
        if status != "Completed":
            raise RegistryError(f"{self.uri}: upload of {model}:{version} ended with status {status!r}")

    def _download(self, model: str, version: str, into: Path) -> Path:
        self.client.registry.model.download_version(target=f"{self.repo(model)}:{version}", destination=str(into))
        return into

    # --- publish ----------------------------------------------------------------------------------

    def publish_release(self, model: str, release: str, profiles: list[Profile], base: Path, reporter, force: bool) -> None:
        self._create_model(model)
        with tempfile.TemporaryDirectory(prefix="nimbuild-ngc-") as tmp:
            for profile in profiles:
                version = profile_tag(release, profile.id)
                if self._exists(model, version):
                    reporter.info(f"{model}:{version} already on NGC; not sent again")
                    continue
                stage = Path(tmp) / version
                for rel, f in profile.files.items():
                    (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(base / f.uri, stage / rel)
                self._upload(model, version, stage)
            registry_copy = Manifest([_ngc_uris(p, self, model, release) for p in profiles]).dumps()
            if self._exists(model, release):
                there = _read_manifest_text(self._download(model, release, Path(tmp) / "existing"))
                published = parse_manifest(there, f"{self.uri}/{model}:{release}").profiles
                if sorted(p.id for p in published) == sorted(p.id for p in profiles) and not force:
                    return  # the same profiles: the same release, whatever their provenance says
                if not force:
                    raise RegistryError(f"{model}:{release} is already published in {self.uri} with different "
                                        "content; a release is immutable: bump the release, or pass --force")
                self.client.registry.model.remove(target=f"{self.repo(model)}:{release}")
            stage = Path(tmp) / f"release-{release}"
            stage.mkdir()
            (stage / MANIFEST_NAME).write_text(registry_copy, encoding="utf-8")
            self._upload(model, release, stage)

    def _create_model(self, model: str) -> None:
        models = self.client.registry.model  # outside the try: a missing SDK or key must say so itself
        try:
            models.create(
                target=self.repo(model), application="OTHER", framework="ONNX", model_format="nimbuild-profile",
                precision="ALL", short_description=f"{model}: model profiles built by nimbuild",
            )
        except Exception as e:  # ResourceAlreadyExistsException: the model is there, as wanted
            if "AlreadyExists" not in type(e).__name__:
                raise RegistryError(f"{self.uri}: cannot create model {model}: {type(e).__name__}") from None

    # --- pull -------------------------------------------------------------------------------------

    def pull_release(self, model: str, release: str, reporter, dest, profile, select, cache, report):
        with tempfile.TemporaryDirectory(prefix="nimbuild-ngc-") as tmp:
            profiles = self._release_profiles(model, release, Path(tmp))
            chosen = choose(profiles, profile, select)
            for p in chosen:
                if all(cache.verified(f.digest, f.size) for f in p.files.values()):
                    report.blobs_present += len(p.files)
                    continue
                root = self._download(model, profile_tag(release, p.id), Path(tmp) / p.id)
                for rel, f in p.files.items():
                    found = _find(root, rel)
                    _, moved = cache.fetch(f.digest, f.size, lambda offset, found=found: iter_file(found, offset),
                                           f"{self.uri}/{model}")
                    report.blobs_sent += int(moved)
                    report.bytes_sent += f.size if moved else 0
            dest = dest or cache.root / "profiles" / model / release
            materialise(chosen, cache, dest)
            report.profiles, report.dest = chosen, dest
            return report

    def release_profiles(self, model: str, release: str) -> list[Profile]:
        """The release's profiles.yaml as published (file URIs into this registry)."""
        with tempfile.TemporaryDirectory(prefix="nimbuild-ngc-") as tmp:
            return self._release_profiles(model, release, Path(tmp))

    def _release_profiles(self, model: str, release: str, tmp: Path) -> list[Profile]:
        if not self._exists(model, release):
            raise RegistryError(f"{model}:{release} not found in {self.uri}")
        text = _read_manifest_text(self._download(model, release, tmp / "release"))
        return parse_manifest(text, f"{self.uri}/{model}:{release}").profiles

    def tags(self, repo: str) -> list[str]:
        raise RegistryError(f"{self.uri}: listing is not supported for NGC; use the NGC web UI or CLI")

    def repositories(self) -> list[str]:
        raise RegistryError(f"{self.uri}: listing is not supported for NGC; use the NGC web UI or CLI")


def _ngc_uris(profile: Profile, store: NgcStore, model: str, release: str) -> Profile:
    version = profile_tag(release, profile.id)
    return with_uris(profile, lambda rel, f: f"{store.uri}/{model}:{version}/{rel}")


def _find(root: Path, rel: str) -> Path:
    """NGC downloads into a folder of its own naming (`<model>_v<version>/`); find the file in it."""
    matches = [p for p in root.rglob(Path(rel).name) if p.as_posix().endswith(rel)]
    if len(matches) != 1:
        raise RegistryError(f"NGC download lacks {rel}")
    return matches[0]


def _read_manifest_text(root: Path) -> str:
    return _find(root, MANIFEST_NAME).read_text(encoding="utf-8")

