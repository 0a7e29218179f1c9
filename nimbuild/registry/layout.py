"""A registry in a directory: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`).

Refs are named `<model>:<tag>` (the `org.opencontainers.image.ref.name` annotation), so one layout
holds many models, and tools such as skopeo read it as `oci:DIR:<model>:<tag>`. Blobs are written
to a temporary name, verified, then renamed; index.json is rewritten atomically under a lock.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator

from nimbuild.errors import IntegrityError, RegistryError
from nimbuild.registry.artifacts import INDEX, canonical, digest_of
from nimbuild.registry.cache import hex_of
from nimbuild.util.files import atomic_write_bytes, file_in_the_way, iter_file

REF_NAME = "org.opencontainers.image.ref.name"
_CHUNK = 1 << 20


class LayoutStore:
    def __init__(self, root: Path, create: bool = False):
        self.root = root.resolve()
        self.uri = self.root.as_uri()
        if (blocking := file_in_the_way(self.root)) is not None:
            raise RegistryError(f"{root}: {blocking} is a file; a registry on disk is a directory (an OCI image layout)")
        if (self.root / "oci-layout").exists():
            return
        if not create:
            raise RegistryError(f"{self.root}: not an OCI image layout (no oci-layout file)")
        if self.root.exists() and any(self.root.iterdir()):
            raise RegistryError(f"{self.root}: exists, is not empty, and is not an OCI image layout")
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        atomic_write_bytes(self.root / "index.json", canonical({"schemaVersion": 2, "mediaType": INDEX, "manifests": []}))

    def repo(self, model: str) -> str:
        return model

    def describe(self, repo: str) -> str:
        return f"{self.root}:{repo}"

    # --- blobs ------------------------------------------------------------------------------------

    def _blob(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / hex_of(digest)

    def blob_exists(self, repo: str, digest: str) -> bool:
        return self._blob(digest).exists()

    def push_blob(self, repo: str, digest: str, size: int, source: Path, on_bytes=None) -> None:
        final = self._blob(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        hasher = hashlib.sha256()
        try:
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    hasher.update(chunk)
                    dst.write(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
            if "sha256:" + hasher.hexdigest() != digest:
                raise IntegrityError(f"{source}: content does not match its recorded digest {digest[:19]}...")
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, repo: str, digest: str, data: bytes) -> None:
        if digest_of(data) != digest:
            raise IntegrityError("internal: bytes do not match their digest")
        if not self._blob(digest).exists():
            atomic_write_bytes(self._blob(digest), data)

    def blob_reader(self, repo: str, digest: str, size: int) -> Callable[[int], Iterator[bytes]]:
        path = self._blob(digest)

        def read(offset: int) -> Iterator[bytes]:
            if not path.exists():
                raise RegistryError(f"{self.describe(repo)}: blob {digest[:19]}... is missing from the layout")
            yield from iter_file(path, offset)

        return read

    # --- manifests and refs -----------------------------------------------------------------------

    def push_manifest(self, repo: str, ref: str | None, body: bytes, media_type: str, artifact_type: str | None = None) -> None:
        digest = digest_of(body)
        self.put_bytes(repo, digest, body)
        if ref is None:
            return
        from filelock import FileLock

        with FileLock(str(self.root / ".index.lock")):
            index = self._index()
            name = f"{repo}:{ref}"
            entries = [m for m in index["manifests"] if (m.get("annotations") or {}).get(REF_NAME) != name]
            entry = {"mediaType": media_type, "digest": digest, "size": len(body), "annotations": {REF_NAME: name}}
            if artifact_type:
                entry["artifactType"] = artifact_type
            entries.append(entry)
            index["manifests"] = sorted(entries, key=lambda m: m["annotations"][REF_NAME])
            atomic_write_bytes(self.root / "index.json", canonical(index))

    def get_manifest(self, repo: str, ref: str) -> bytes | None:
        if ref.startswith("sha256:"):
            digest = ref
        else:
            name = f"{repo}:{ref}"
            match = [m for m in self._index()["manifests"] if (m.get("annotations") or {}).get(REF_NAME) == name]
            if not match:
                return None
            digest = match[0]["digest"]
        path = self._blob(digest)
        if not path.exists():
            raise RegistryError(f"{self.describe(repo)}: manifest {digest[:19]}... is missing from the layout")
        body = path.read_bytes()
        if digest_of(body) != digest:
            raise IntegrityError(f"{self.describe(repo)}: manifest {digest[:19]}... is corrupt")
        return body

    def tags(self, repo: str) -> list[str]:
        prefix = f"{repo}:"
        return sorted(n[len(prefix):] for n in self._ref_names() if n.startswith(prefix))

    def repositories(self) -> list[str]:
        return sorted({n.rpartition(":")[0] for n in self._ref_names()})

    def _ref_names(self) -> list[str]:
        return [(m.get("annotations") or {}).get(REF_NAME, "") for m in self._index()["manifests"]]

    def _index(self) -> dict:
        try:
            index = json.loads((self.root / "index.json").read_text())
            assert isinstance(index.get("manifests"), list)
            return index
        except (OSError, ValueError, AssertionError):
            raise RegistryError(f"{self.root}/index.json: missing or corrupt") from None

    def close(self) -> None:
        pass

