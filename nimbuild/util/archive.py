"""Unpacking tar archives nobody vetted (RMIR archives, .nemo checkpoints) without trusting them.

Refused: any member that is not a regular file or directory (links, devices, FIFOs), any path that
is absolute or climbs out with `..`, and archives over the member-count or size limits. The size
limit is the smaller of a fixed cap and a multiple of the archive's own size: nimbuild writes its
archives uncompressed and checkpoint weights barely compress, so an archive that expands to many
times its size is a decompression bomb (2 MB of gzip is 2 GiB of zeros). Extraction is one pass
and each member's header is checked before its data is read or written, so a refused archive
costs a header's worth of work and leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from nimbuild.errors import NimbuildError, first_line

MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 64 << 30
MAX_EXPANSION = 32  # bytes unpacked per archive byte
SMALL_ARCHIVE_BYTES = 64 << 20  # below this size the multiple does not apply: tiny archives compress well
_CHUNK = 1 << 20


def size_limit(archive: Path, max_bytes: int) -> int:
    """What an archive may unpack to: `max_bytes`, and at most MAX_EXPANSION times its size."""
    try:
        size = archive.stat().st_size
    except OSError:
        return max_bytes
    return min(max_bytes, max(SMALL_ARCHIVE_BYTES, MAX_EXPANSION * size))


def safe_extract(archive: Path, dest: Path, error: type[NimbuildError], kind: str,
                 max_members: int = MAX_MEMBERS, max_bytes: int = MAX_TOTAL_BYTES) -> None:
    """Unpack into dest (which must not exist yet), or raise `error` naming the problem; a refused
    or unreadable archive leaves nothing behind."""
    limit = size_limit(archive, max_bytes)
    try:
        with tarfile.open(archive, "r:*") as tar:
            dest.mkdir(parents=True)
            # one pass: each header is checked as it is read, before its data (reading the whole
            # member list first would inflate a bomb just to count it)
            _write_members(tar, vetted(tar, archive, error, kind, max_members, limit), dest)
    except (tarfile.TarError, EOFError, OSError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise error(f"{archive}: not a readable {kind}: {archive_reason(e)}") from None
    except error:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def archive_reason(e: BaseException) -> str:
    # tarfile's "r:*" lists every compression it tried, a line each: the first says enough
    text = first_line(e)
    return "not a tar archive (plain, gzip, bz2 or xz)" if text.startswith("file could not be opened") else text


def _is_plain_file(fileobj) -> bool:
    import io

    return isinstance(fileobj, (io.BufferedReader, io.FileIO))


def _write_members(tar: tarfile.TarFile, members, dest: Path) -> None:
    """Directories and regular files only (`vetted` checked each path, kind and size before its
    data is read; tarfile yields exactly the size a header declares), with plain permissions."""
    for m in members:
        target = dest.joinpath(*PurePosixPath(m.name).parts)
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(m)
        with open(target, "wb") as out:
            if source is not None:
                shutil.copyfileobj(source, out, _CHUNK)
        os.chmod(target, 0o644)


def vetted(tar: tarfile.TarFile, archive: Path, error: type[NimbuildError], kind: str, max_members: int,
           max_bytes: int):
    """The archive's members as their headers are read, each refused (raising `error`) if it is a
    link or special file, lies outside the archive's directory, or takes the count or the declared
    size over the limits."""
    total = 0
    # a plain tar's members must lie within the file: tarfile takes a header past the end for the
    # archive's end, so a file cut mid-member read as a shorter, valid one (compressed streams
    # fail on their own when they end early)
    length = os.fstat(tar.fileobj.fileno()).st_size if _is_plain_file(tar.fileobj) else None
    for count, m in enumerate(tar, 1):
        if count > max_members:
            raise error(f"{archive}: more than {max_members} members, over the limit")
        path = PurePosixPath(m.name)
        if path.is_absolute() or ".." in path.parts or not m.name.strip("/"):
            raise error(f"{archive}: member {m.name!r} is outside the archive's directory")
        if not (m.isfile() or m.isdir()):
            what = "link" if (m.issym() or m.islnk()) else "special file"
            raise error(f"{archive}: member {m.name!r} is a {what}; a {kind} holds only files")
        if length is not None and m.offset_data + m.size > length:
            raise error(f"{archive}: not a readable {kind}: truncated (member {m.name!r} runs past the end of the file)")
        total += m.size
        if total > max_bytes:
            raise error(f"{archive}: members add up to more than {max_bytes} bytes; refused as a decompression bomb "
                        "or an archive too large")
        yield m
