"""The blob cache (`NIM_CACHE_PATH`, default ~/.cache/nim): verified blobs by digest.

    blobs/sha256/<hex>     complete, verified, read-only
    partial/<hex>          a download in progress (kept across failures, so it resumes)
    locks/<hex>.lock       one writer per blob, across processes
    verified/<key>         what a checked file looked like (Stamps), so an unchanged one is not re-read

Several processes may pull at once: the first to lock a digest downloads it, the others wait and
then find it verified. A cached blob is checked before each use (re-hashed unless its stamp shows
it unchanged since it last matched); a corrupt or truncated one is removed and fetched again.
Nothing reaches `blobs/` without matching its digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Callable, Iterator

from nimbuild.errors import IntegrityError, NimbuildError, RegistryError
from nimbuild.util.files import atomic_write_text, file_in_the_way, file_matches, is_sha256_digest, iter_file, sha256_bytes

CACHE_ENV = "NIM_CACHE_PATH"
_WRITE_BUFFER = 8 << 20


class TransientError(Exception):
    """A failure worth retrying: a dropped connection, a timeout, a 5xx."""


def default_cache_root() -> Path:
    """$NIM_CACHE_PATH (else ~/.cache/nim), refused at once when it, or a folder above it, is a file:
    found later, deep in a fetch or a deploy, it was a bare NotADirectoryError."""
    named = os.environ.get(CACHE_ENV)
    root = Path(named or Path.home() / ".cache" / "nim")
    if (blocking := file_in_the_way(root)) is not None:
        where = f"{CACHE_ENV}={named}" if named else f"the cache {root}"
        raise NimbuildError(f"{where}: {blocking} is a file, not a directory; point {CACHE_ENV} at a directory")
    return root


def hex_of(digest: str) -> str:
    if not is_sha256_digest(digest):
        raise IntegrityError(f"unsupported or malformed digest {digest!r}")
    return digest[len("sha256:"):]


class Stamps:
    """What a file looked like (size, mtime, inode, device) when its sha256 last matched, so that an
    unchanged file is not read again: a multi-GB profile was re-hashed at every start. A write
    changes the mtime and a replacement the inode, so a changed file is hashed again. The ctime is
    left out (git's core.trustctime=false): every start hard-links the model files into Triton's
    repository, and a new link changes the ctime. As git's index does, a file modified within
    RACY_SECONDS of its check is not stamped (a write in the same clock tick would look unchanged).
    Not caught: bit rot in place, or a write that deliberately puts the old mtime back; `nimbuild
    pull` and download-to-cache hash everything they fetch."""

    RACY_SECONDS = 2.0

    def __init__(self, root: Path):
        self.dir = root / "verified"

    def matches(self, path: Path, digest: str, size: int) -> bool:
        """file_matches(path, digest, size), trusting a stamp that still describes the file."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        seen = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]
        entry = self.dir / sha256_bytes(f"{os.path.realpath(path)}\0{digest}".encode())
        try:
            if json.loads(entry.read_text()) == seen:
                return True
        except (OSError, ValueError):
            pass
        if not file_matches(path, digest, size):
            entry.unlink(missing_ok=True)
            return False
        if time.time() - st.st_mtime > self.RACY_SECONDS:
            try:
                atomic_write_text(entry, json.dumps(seen))
            except OSError:  # a read-only cache still verifies, it just hashes every time
                pass
        return True


class BlobCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_cache_root()
        self.stamps = Stamps(self.root)

    def path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / hex_of(digest)

    def _lock(self, digest: str):
        from filelock import FileLock

        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{hex_of(digest)}.lock"))

    def verified(self, digest: str, size: int) -> Path | None:
        """The cached blob if it is intact; a damaged one is removed so it is fetched again."""
        path = self.path(digest)
        if not path.exists():
            return None
        if self.stamps.matches(path, digest, size):
            return path
        path.chmod(0o644)
        path.unlink(missing_ok=True)
        return None

    def fetch(self, digest: str, size: int, download: Callable[[int], Iterator[bytes]], source: str,
              attempts: int = 5, on_bytes: Callable[[int], None] | None = None) -> tuple[Path, bool]:
        """Make `digest` present and verified; return (path, whether bytes were transferred).

        `download(offset)` yields the blob's bytes from `offset`; a TransientError from it is retried
        with backoff, resuming from what already arrived.
        """
        with self._lock(digest):
            path = self.verified(digest, size)
            if path:
                return path, False
            partial = self.root / "partial" / hex_of(digest)
            partial.parent.mkdir(parents=True, exist_ok=True)
            hasher = hashlib.sha256()
            if partial.exists() and partial.stat().st_size <= size:
                _hash_into(hasher, partial)  # resume: what arrived earlier counts
            else:
                partial.unlink(missing_ok=True)
            for attempt in range(attempts):
                offset = partial.stat().st_size if partial.exists() else 0
                try:
                    # Sockets deliver ~64 KiB at a time; writing each piece costs a syscall that, on a
                    # VM disk, caps throughput near 350 MB/s. An 8 MiB buffer writes ~3 GB/s.
                    with open(partial, "ab", buffering=_WRITE_BUFFER) as f:
                        written = offset
                        for chunk in (download(offset) if offset < size else ()):
                            written += len(chunk)
                            if written > size:
                                raise IntegrityError(f"{source}: sent more than the {size} bytes of {digest}")
                            f.write(chunk)
                            hasher.update(chunk)
                            if on_bytes:
                                on_bytes(len(chunk))
                    if partial.stat().st_size < size:
                        raise TransientError(f"stream ended at {partial.stat().st_size} of {size} bytes")
                    break
                except TransientError as e:
                    if attempt == attempts - 1:
                        raise RegistryError(f"{source}: download of {digest[:19]} failed after {attempts} attempts: {e}") from None
                    time.sleep(min(0.2 * 2 ** attempt, 5.0))
                except IntegrityError:
                    partial.unlink(missing_ok=True)
                    raise
            if "sha256:" + hasher.hexdigest() != digest:
                partial.unlink(missing_ok=True)
                raise IntegrityError(f"{source}: content of {digest[:19]}... does not match its digest "
                                     f"(got sha256:{hasher.hexdigest()[:12]}...); nothing was kept")
            final = self.path(digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            partial.chmod(0o444)
            os.replace(partial, final)
            return final, True

    def place(self, digest: str, dest: Path) -> None:
        """Put a cached blob at `dest`: a hard link when possible (instant, no extra disk), else a copy."""
        import shutil

        dest.parent.mkdir(parents=True, exist_ok=True)
        # a name of this process's own: pods sharing one cache place the same workspace at once,
        # and with one shared name a second placer's unlink took the first's link from under it
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            try:
                os.link(self.path(digest), tmp)
            except OSError:
                shutil.copyfile(self.path(digest), tmp)
            os.replace(tmp, dest)
        finally:
            # a copy cut short never stays behind, and neither does a link that another placer had
            # already put at dest: rename(2) of two links to one file does nothing and succeeds
            tmp.unlink(missing_ok=True)


def _hash_into(hasher, path: Path) -> None:
    for chunk in iter_file(path):
        hasher.update(chunk)
