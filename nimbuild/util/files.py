"""Small filesystem helpers: hashing and writes that never leave a half-written final file."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterator

_CHUNK = 1 << 20


def iter_file(path: str | os.PathLike, offset: int = 0) -> Iterator[bytes]:
    """A file's bytes from `offset`, in chunks, so memory stays flat for multi-GB weights."""
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(_CHUNK):
            yield chunk


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    for chunk in iter_file(path):
        h.update(chunk)
    return h.hexdigest()


def file_matches(path: str | os.PathLike, digest: str, size: int) -> bool:
    """The file exists and holds exactly `size` bytes whose sha256 is `digest` ("sha256:<hex>")."""
    path = Path(path)
    return path.is_file() and path.stat().st_size == size and "sha256:" + sha256_file(path) == digest


_SHA256_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def is_sha256_digest(value: object) -> bool:
    """`sha256:` and 64 lowercase hex digits: the one digest form manifests, registries and the cache use."""
    return isinstance(value, str) and _SHA256_DIGEST.fullmatch(value) is not None


def file_in_the_way(directory: Path) -> Path | None:
    """The file (if any) standing where `directory` or a folder above it must be: found late, deep
    in a write, it is a bare NotADirectoryError."""
    for folder in (directory, *directory.parents):
        if folder.exists():
            return None if folder.is_dir() else folder
    return None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_digest(root: Path, skip: Callable[[str], bool] = lambda rel: False) -> str:
    """Hex sha256 over every file's relative path and content below `root` (a checkpoint's
    identity), leaving out the relative paths `skip` names."""
    entries = []
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if not skip(rel):
            entries.append(f"{rel}\0{sha256_file(file)}")
    return sha256_bytes("\n".join(entries).encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a manifest is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_user_text(path: str | os.PathLike, what: str, error: type[Exception]) -> str:
    """A text file the user named: its content, or `error` with one clear line naming it."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read {what}: {e}") from None
