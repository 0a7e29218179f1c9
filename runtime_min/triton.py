"""Start, watch and stop a real Triton Inference Server.

Two servers can be at hand, and `find_servers` lists them in the order they are preferred: the
server bundled in the `nvidia-pytriton` wheel (PLATFORM.md), which has the Python backend only,
and a `tritonserver` on PATH (NGC's Triton container), with whatever backends its backend
directory holds. The deploy step takes the first that has every backend its repository needs.
The bundled one needs the Python backend stub for this interpreter in its backends/python/: an
image puts it there when it is built (`prepare_bundled`), and it then runs where it lies; elsewhere
it is copied once into the runtime's work root with the stub added. It runs with this interpreter's libpython first
on LD_LIBRARY_PATH and this environment's bin/ first on PATH (the stub finds its interpreter as
`python3`). Triton listens on loopback only, on free ports.

If Triton exits on its own, readiness turns false at once and it is restarted with backoff, a
bounded number of times; after that the supervisor reports a fatal failure.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx

log = logging.getLogger("runtime_min")


class TritonError(RuntimeError):
    pass


# The Python backend's shared-memory region per model instance, in /dev/shm (shm-default-byte-size)
SHM_PER_INSTANCE = 4 << 20


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports. The sockets are held open together while the kernel
    picks: closed one at a time, it may hand the same port out twice (a CI run drew one port for
    Triton's HTTP and metrics endpoints, and Triton refused to start)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class TritonInstall:
    binary: Path
    backend_dir: Path | None  # None: the server's own default
    env: dict[str, str]
    bundled: bool
    backends: frozenset[str] = frozenset()

    def describe(self) -> str:
        which = "the tritonserver bundled with nvidia-pytriton" if self.bundled else f"{self.binary}"
        return f"{which} (backends: {', '.join(sorted(self.backends)) or 'none'})"


def find_servers(work_root: Path | None) -> list[TritonInstall]:
    """The bundled server first (if nvidia-pytriton is installed), then one on PATH. With
    `work_root` None nothing is copied: the bundled server is described, not made runnable."""
    servers = []
    bundled = _bundled(work_root)
    if bundled:
        servers.append(bundled)
    on_path = shutil.which("tritonserver")
    if on_path:
        binary = Path(on_path)
        # NGC's layout: /opt/tritonserver/bin/tritonserver beside /opt/tritonserver/backends (the default)
        default = binary.resolve().parents[1] / "backends"
        backend_dir = default if default.is_dir() else Path("/opt/tritonserver/backends")
        servers.append(TritonInstall(binary, None, dict(os.environ), bundled=False, backends=_backends(backend_dir)))
    return servers


def _backends(directory: Path) -> frozenset[str]:
    """Backends a directory holds: <name>/libtriton_<name>.so (Python-based backends: model.py)."""
    if not directory.is_dir():
        return frozenset()
    return frozenset(d.name for d in directory.iterdir()
                     if (d / f"libtriton_{d.name}.so").exists() or (d / "model.py").exists())


def locate_triton(work_root: Path) -> TritonInstall:
    """The preferred server (bundled, else PATH), for callers that need no backend beyond Python."""
    servers = find_servers(work_root)
    if not servers:
        raise TritonError("no tritonserver on PATH and nvidia-pytriton is not installed "
                          "(pip install 'nimbuild[serve]')")
    return servers[0]


def _bundled_paths() -> tuple[Path, Path] | None:
    """(pytriton's package folder, the Python backend stub for this interpreter), without importing
    pytriton: `import pytriton` loads its client stack, 0.38 s of every start (-X importtime), for a path."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(list(spec.submodule_search_locations)[0])
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = package / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        log.warning("nvidia-pytriton has no Python backend stub for Python %s; its tritonserver is not used", version)
        return None
    return package, stub


def prepare_bundled() -> Path:
    """Put this interpreter's stub into the bundled server's backends/python/ where it lies, so the
    server runs in place with no copy: what an image build does (as root, once)."""
    found = _bundled_paths()
    if found is None:
        raise TritonError("nvidia-pytriton is not installed, or has no stub for this Python")
    package, stub = found
    shutil.copy2(stub, package / "tritonserver" / "backends" / "python" / stub.name)
    return package / "tritonserver"


def _bundled(work_root: Path | None) -> TritonInstall | None:
    found = _bundled_paths()
    if found is None:
        return None
    package, stub = found
    source = package / "tritonserver"
    backends = _backends(source / "backends")
    in_place = source / "backends" / "python" / stub.name
    if work_root is None:
        return TritonInstall(source / "bin" / "tritonserver", source / "backends", {}, bundled=True, backends=backends)
    import filecmp

    prepared = in_place.exists() and filecmp.cmp(in_place, stub)  # this interpreter's stub, not another's
    target = source if prepared else _writable_copy(source, stub, work_root)
    libs = package.parent / "nvidia_pytriton.libs"
    libpython_dir = sysconfig.get_config_var("LIBDIR") or ""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libpython_dir, str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    return TritonInstall(target / "bin" / "tritonserver", target / "backends", env, bundled=True, backends=backends)


def _writable_copy(source: Path, stub: Path, work_root: Path) -> Path:
    """Copy the bundled server into the work root once per pytriton build and Python version."""
    from importlib.metadata import version

    from filelock import FileLock

    target = work_root / "triton" / f"pytriton-{version('nvidia-pytriton')}-py{sys.version_info.major}{sys.version_info.minor}"
    done = target / ".complete"
    if done.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if done.exists():
            return target
        shutil.rmtree(target, ignore_errors=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("python_backend_stubs", "__pycache__"))
        shutil.copy2(stub, tmp / "backends" / "python" / "triton_python_backend_stub")
        os.replace(tmp, target)
        done.touch()
    return target


def _model_env(env: dict[str, str]) -> dict[str, str]:
    """The environment Triton and its Python models run in. numpy's OpenBLAS starts a thread per
    core in every Python model's process and spins them after each small matrix product (a speech
    front end's filterbank): measured here, the features model used 2.5x the CPU for the same work,
    taken from the models beside it. One BLAS thread each, unless the user set otherwise; the
    runners' own thread pools (onnxruntime, TensorRT) are unaffected."""
    return {"OPENBLAS_NUM_THREADS": "1", **env}


def _parent_death_prefix() -> list[str]:
    """`setpriv --pdeathsig TERM`: Triton gets SIGTERM if the runtime dies, so it never outlives it.

    Done by exec-ing through util-linux's setpriv rather than a preexec_fn, which Python documents
    as unsafe in a threaded process (restarts are launched from the watcher thread)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


class TritonServer:
    """One supervised tritonserver process serving a model repository."""

    def __init__(self, install: TritonInstall, repository: Path, log_path: Path,
                 max_restarts: int = 3, on_fatal: Callable[[str], None] | None = None):
        self.install, self.repository, self.log_path = install, repository, log_path
        self.max_restarts, self.on_fatal = max_restarts, on_fatal
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.process: subprocess.Popen | None = None
        self.ready = threading.Event()
        self.restarts = 0
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 120.0) -> None:
        self.launch()
        self.wait_until_ready(timeout)

    def wait_until_ready(self, timeout: float = 120.0) -> None:
        """Block until the launched Triton is ready, then supervise it (restarts)."""
        self._wait_ready(timeout)
        self._watcher = threading.Thread(target=self._watch, name="triton-watch", daemon=True)
        self._watcher.start()

    def launch(self) -> None:
        """Start the process and return at once (the caller may prepare the API meanwhile)."""
        if not self.http_port:  # a restart keeps the ports: the API's client holds this address
            self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        cmd = [
            str(self.install.binary), f"--model-repository={self.repository}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false", "--log-verbose=0", "--exit-on-error=true",
            f"--backend-config=python,shm-default-byte-size={SHM_PER_INSTANCE}",
        ]
        if self.install.backend_dir:
            cmd.append(f"--backend-directory={self.install.backend_dir}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path, "ab")
        # its own process group: a terminal's Ctrl-C reaches the runtime, which then stops Triton
        self.process = subprocess.Popen(_parent_death_prefix() + cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                        env=_model_env(self.install.env), process_group=0)
        log_file.close()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonError(f"tritonserver exited with status {self.process.returncode} while starting; "
                                  f"last lines of {self.log_path}:\n{_tail(self.log_path)}")
            try:
                if httpx.get(f"http://{self.url}/v2/health/ready", timeout=1.0).status_code == 200:
                    self.ready.set()
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TritonError(f"tritonserver was not ready after {timeout:.0f} s; see {self.log_path}")

    def _watch(self) -> None:
        """Readiness drops the moment Triton exits; restart it with backoff, a bounded number of times."""
        while not self._stopping.is_set():
            code = self.process.wait()
            self._reap_group()
            if self._stopping.is_set():
                return
            self.ready.clear()
            log.error("tritonserver exited unexpectedly (status %s)", code)
            if self.restarts >= self.max_restarts:
                message = f"tritonserver keeps exiting; gave up after {self.restarts} restarts (see {self.log_path})"
                log.error(message)
                if self.on_fatal:
                    self.on_fatal(message)
                return
            self.restarts += 1
            time.sleep(min(0.5 * 2 ** (self.restarts - 1), 8.0))
            try:
                self.launch()
                self._wait_ready(120.0)
                log.info("tritonserver restarted (restart %d of at most %d)", self.restarts, self.max_restarts)
            except TritonError as e:
                log.error("restart failed: %s", e)

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        self.ready.clear()
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver had not exited %.0f s after SIGTERM (a model that does not unload); "
                            "killed", timeout)
                self.process.kill()
                self.process.wait()
        if self.process:
            self._reap_group()

    def _reap_group(self) -> None:
        """Kill what is left of a Triton that has exited: its Python backend stubs share its process
        group and, when Triton dies by SIGKILL or a crash, outlive it as orphans holding memory."""
        import signal

        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def check_shared_memory(repository: Path, shm: Path = Path("/dev/shm")) -> None:
    """Each Python-backend model instance maps SHM_PER_INSTANCE of /dev/shm when Triton loads it; a
    container's default 64 MiB, or a small NIMService sharedMemorySizeLimit, makes Triton fail the
    load with a message about shared memory. Said before it starts, in one line, with the fix."""
    import os

    from nimbuild.errors import NimbuildError
    from runtime_min.deploy.config import python_instances

    if not shm.is_dir():
        return  # not Linux: Triton's Python backend does not run here anyway
    need = python_instances(repository) * SHM_PER_INSTANCE
    stats = os.statvfs(shm)
    free = stats.f_bavail * stats.f_frsize
    if free < need:
        raise NimbuildError(f"{shm} has {free >> 20} MiB free; the profile's Triton Python models need "
                            f"{need >> 20} MiB to load (raise it: NIMService spec.storage.sharedMemorySizeLimit, "
                            "a Kubernetes emptyDir with medium Memory, or podman/docker --shm-size)")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
