"""A profile as an OCI image with the profile under /models: what KServe reads from `storageUri:
oci://REG/REPO:TAG`, both as a "modelcar" sidecar (the image runs `sh -c "ln -sf /proc/$$/root/models
/mnt/models && sleep infinity"`, so it needs a shell) and in its fetch mode (the storage initializer
streams each tar layer and extracts the members under models/), and what Kubernetes image volumes
mount.

    models/profiles.yaml     the profile's manifest, its file URIs relative to it
    models/<path>            the workspace files

Layers are plain tars (model files do not compress; KServe's fetch mode reads `.tar` and `.tar+gzip`),
built reproducibly as ModelPack's guidance asks: members in path order, owner 0:0, mtime 0, fixed
modes, no platform headers. Each file of 1 MiB or more is a layer of its own (a file shared by two
profiles' images is one blob); the small files and the manifest share one. With a shell, the first
layer is a statically linked busybox (Debian's busybox-static) with the applets the modelcar and its
init container run.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import shutil
import tarfile
from pathlib import Path

from nimbuild.errors import RegistryError
from nimbuild.registry.artifacts import MANIFEST, Descriptor, canonical, digest_of, identity

CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
OWN_LAYER = 1 << 20  # files at least this big get a layer each
MAX_LAYERS = 100  # overlay filesystems refuse images of more than ~128 layers
SHELL_APPLETS = ("sh", "ln", "sleep", "ls", "mkdir", "echo", "cat", "test", "[")
BUSYBOX_ENV = "NIMBUILD_BUSYBOX"


def image_tag(release: str, profile_id: str) -> str:
    return f"{release}-{profile_id[:12]}-image"


def find_busybox() -> Path:
    """A statically linked busybox ($NIMBUILD_BUSYBOX, else busybox on PATH): a dynamic one would
    need the host's libc inside the image."""
    named = os.environ.get(BUSYBOX_ENV) or shutil.which("busybox")
    if not named:
        raise RegistryError("--images modelcar puts a shell in the image and needs a statically linked busybox: "
                            f"install Debian's busybox-static, or set {BUSYBOX_ENV}")
    path = Path(named).resolve()
    if not _is_static_elf(path):
        raise RegistryError(f"{path} is not a statically linked executable; --images modelcar needs one "
                            f"(Debian's busybox-static), or use --images models for an image without a shell")
    return path


def build(profile, base: Path, workdir: Path, shell: Path | None) -> tuple[bytes, bytes, list[tuple[str, int, Path]]]:
    """(image config, image manifest, [(digest, size, tar path)] of its layers), tars under workdir."""
    from nimbuild.profiles.manifest import MANIFEST_NAME, Manifest, Profile, WorkspaceFile

    if MANIFEST_NAME in profile.files:
        raise RegistryError(f"{profile.description}: a workspace file is named {MANIFEST_NAME}, which the image's "
                            "manifest takes")
    local = Profile(profile.id, profile.model, profile.release, profile.description, profile.tags,
                    {rel: WorkspaceFile(rel, f.digest, f.size) for rel, f in profile.files.items()},
                    profile.requires, profile.build)
    groups = [[(rel, base / f.uri)] for rel, f in sorted(profile.files.items()) if f.size >= OWN_LAYER]
    small = [(rel, base / f.uri) for rel, f in sorted(profile.files.items()) if f.size < OWN_LAYER]
    small_bytes = {MANIFEST_NAME: Manifest([local]).dumps().encode()}
    if len(groups) + 2 > MAX_LAYERS:
        raise RegistryError(f"{profile.description}: {len(groups)} files of 1 MiB or more make too many layers "
                            f"for one image (at most {MAX_LAYERS})")
    workdir.mkdir(parents=True, exist_ok=True)
    layers = [_shell_layer(shell, workdir)] if shell else []
    layers += [_tar_layer(workdir, group, {}) for group in groups]
    layers.append(_tar_layer(workdir, small, small_bytes))
    config = canonical({
        "architecture": _goarch(), "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Labels": identity(profile)},
        "rootfs": {"type": "layers", "diff_ids": [digest for digest, _, _ in layers]},
    })
    manifest = canonical({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": Descriptor(CONFIG, digest_of(config), len(config)).to_dict(),
        "layers": [Descriptor(LAYER, digest, size).to_dict() for digest, size, _ in layers],
        "annotations": identity(profile),
    })
    return config, manifest, layers


def _tar_layer(workdir: Path, files: list[tuple[str, Path]], data: dict[str, bytes]) -> tuple[str, int, Path]:
    """One reproducible tar of files (from disk) and data (bytes), all under models/."""
    entries = sorted([(rel, path, None) for rel, path in files] + [(rel, None, body) for rel, body in data.items()])
    dirs = sorted({"models"} | {f"models/{parent}" for rel, _, _ in entries for parent in _parents(rel)})
    out = workdir / f"layer-{len(list(workdir.iterdir()))}.tar"
    with _HashingFile(out) as sink, tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            tar.addfile(_info(d, tarfile.DIRTYPE, 0o755))
        for rel, path, body in entries:
            size = path.stat().st_size if path else len(body)
            if path:
                with open(path, "rb") as src:
                    tar.addfile(_info(f"models/{rel}", tarfile.REGTYPE, 0o644, size), src)
            else:
                tar.addfile(_info(f"models/{rel}", tarfile.REGTYPE, 0o644, size), io.BytesIO(body))
    return sink.digest, out.stat().st_size, out


def _shell_layer(busybox: Path, workdir: Path) -> tuple[str, int, Path]:
    out = workdir / "layer-shell.tar"
    with _HashingFile(out) as sink, tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info("bin", tarfile.DIRTYPE, 0o755))
        with open(busybox, "rb") as src:
            tar.addfile(_info("bin/busybox", tarfile.REGTYPE, 0o755, busybox.stat().st_size), src)
        for applet in SHELL_APPLETS:
            link = _info(f"bin/{applet}", tarfile.SYMTYPE, 0o777)
            link.linkname = "busybox"
            tar.addfile(link)
        tar.addfile(_info("tmp", tarfile.DIRTYPE, 0o1777))
    return sink.digest, out.stat().st_size, out


def _info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


class _HashingFile(io.RawIOBase):
    """A file written once, front to back, whose sha256 is known when it closes."""

    def __init__(self, path: Path):
        self._file = open(path, "wb")
        self._hash = hashlib.sha256()
        self._written = 0
        self.digest = ""

    def writable(self) -> bool:
        return True

    def tell(self) -> int:  # tarfile asks where it starts
        return self._written

    def write(self, data) -> int:
        self._hash.update(data)
        self._written += len(data)
        return self._file.write(data)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
            self.digest = "sha256:" + self._hash.hexdigest()
        super().close()


def _goarch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


def _is_static_elf(path: Path) -> bool:
    """An ELF executable without a PT_INTERP program header (no dynamic loader named)."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
                return False
            order = "<" if head[5] == 1 else ">"
            phoff, = struct.unpack(order + "Q", head[32:40])
            phentsize, phnum = struct.unpack(order + "HH", head[54:58])
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    kinds = [struct.unpack(order + "I", table[i * phentsize:i * phentsize + 4])[0] for i in range(phnum)]
    return 3 not in kinds  # PT_INTERP
