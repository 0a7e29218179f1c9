"""Unpacking tar archives nobody vetted (RMIR archives, .nemo checkpoints) without trusting them.

Refused: any member that is not a regular file or directory (links, devices, FIFOs), any path that
is absolute or climbs out with `..`, and archives over the member-count or total-size limits. The
checks run on the member list before a byte is written; extraction then uses tarfile's "data"
filter as a second line of defence.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path, PurePosixPath

from nimbuild.errors import NimbuildError

MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 64 << 30


def safe_extract(archive: Path, dest: Path, error: type[NimbuildError], kind: str,
                 max_members: int = MAX_MEMBERS, max_bytes: int = MAX_TOTAL_BYTES) -> None:
    """Unpack into dest (which must not exist yet), or raise `error` naming the problem; a refused
    or unreadable archive leaves nothing behind."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            check_members(archive, members, error, kind, max_members, max_bytes)
            dest.mkdir(parents=True)
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise error(f"{archive}: not a readable {kind}: {e}") from None
    except error:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def check_members(archive: Path, members: list, error: type[NimbuildError], kind: str,
                  max_members: int, max_bytes: int) -> None:
    if len(members) > max_members:
        raise error(f"{archive}: {len(members)} members, over the limit of {max_members}")
    total = 0
    for m in members:
        path = PurePosixPath(m.name)
        if path.is_absolute() or ".." in path.parts or not m.name.strip("/"):
            raise error(f"{archive}: member {m.name!r} is outside the archive's directory")
        if not (m.isfile() or m.isdir()):
            what = "link" if (m.issym() or m.islnk()) else "special file"
            raise error(f"{archive}: member {m.name!r} is a {what}; a {kind} holds only files")
        total += m.size
        if total > max_bytes:
            raise error(f"{archive}: members add up to more than {max_bytes} bytes")
