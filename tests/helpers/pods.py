"""Commands run as the NIM Operator's pods run them: UID 1000, GID 2000, no other groups."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import nim_operator as op
from helpers.paths import REPO


def _private_ancestor(path: Path) -> Path | None:
    """The highest folder above `path` that other users cannot enter (/root, for pyenv's Pythons)."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            return parent
    return None



def pod_command(command: list[str], mounts: dict[Path, Path] | None = None) -> list[str]:
    """`command` as the operator's pods run it: UID 1000, GID 2000, no other groups (setpriv). An
    image has its interpreter and its code where that user can read them; here they may lie under a
    private folder (pyenv's Python under /root), so the command runs in a mount namespace of its own
    where a tmpfs covers that folder and only the interpreter and the checkout show through it.
    `mounts` {target: source}: volumes, each bound read-only at its target in that namespace alone
    (a tmpfs covers the target's parent first, so nothing is created on this machine's own /mnt)."""
    drop = ["setpriv", f"--reuid={op.USER_ID}", f"--regid={op.GROUP_ID}", "--clear-groups", "--"]
    hidden: dict[Path, list[Path]] = {}
    for path in {Path(sys.base_prefix).resolve(), REPO.resolve()}:
        if (ancestor := _private_ancestor(path)) is not None:
            hidden.setdefault(ancestor, []).append(path)
    if not hidden and not mounts:
        return drop + command
    steps = []
    for target, source in (mounts or {}).items():
        steps += [f"mount -t tmpfs -o mode=0755 tmpfs {target.parent}", f"mkdir -p {target}",
                  f"mount --bind {source} {target}", f"mount -o remount,bind,ro {target}"]
    for i, (ancestor, paths) in enumerate(sorted(hidden.items())):
        real = f"/run/nimbuild-pod-view-{i}"
        steps += [f"mkdir -p {real}", f"mount --bind {ancestor} {real}", f"mount -t tmpfs -o mode=0755 tmpfs {ancestor}"]
        for path in paths:
            steps += [f"mkdir -p {path}", f"mount --bind {real}/{path.relative_to(ancestor)} {path}"]
    script = " && ".join(steps) + ' && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *drop, *command]



def as_pod(command: list[str], env: dict, mounts: dict[Path, Path] | None = None, **kw) -> dict:
    """Popen arguments that run `command` as the operator's pods run it, with only `env`."""
    return dict(args=pod_command(command, mounts), env=env, cwd="/tmp", **kw)



def pod_user_refusal() -> str | None:
    """Why this machine cannot run this checkout as UID 1000 (None when it can)."""
    if os.geteuid() != 0:
        return "running as UID 1000, as the NIM Operator's pods run, needs root"
    probe = subprocess.run(**as_pod([sys.executable, "-c", "import os, runtime_min; print(os.getuid())"],
                                     {"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60))
    if probe.returncode != 0 or probe.stdout.strip() != str(op.USER_ID):
        return f"cannot run this checkout's interpreter as UID 1000 here: {probe.stderr.strip()[-300:]}"
    return None
