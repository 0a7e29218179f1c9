"""What a NIM container does at start, reduced to its essentials (docs/design.md §8):

detect the system -> select a profile (the same function as nim_list_model_profiles) -> check that
a Triton here can run it (before anything is downloaded) -> fetch it into the cache, verified ->
deploy it (an RMIR becomes an engine for this GPU first) into a Triton model repository -> start
tritonserver -> serve the HTTP API with the task's routes -> on SIGTERM/SIGINT, finish in-flight
requests, stop Triton, exit 0 (no child left behind).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from nimbuild.errors import NimbuildError
from nimbuild.profiles.manifest import Profile
from nimbuild.profiles.system import System
from nimbuild.tasks import BY_ID
from nimbuild.util.progress import Reporter

if TYPE_CHECKING:  # the deploy stack is imported when a profile is deployed, not at start
    from runtime_min.deploy import Deployment
    from runtime_min.settings import Settings

log = logging.getLogger("runtime_min")


def manifest_profiles(manifest: Path, cache_root: Path) -> tuple[list[Profile], dict[str, Path]]:
    """The manifest's profiles, then those earlier starts built into the cache (runtime_min.local_cache),
    and for each id the manifest its files are named relative to. A local manifest that cannot be
    read is left out with one line: it must not stop the image's own profiles from serving."""
    from nimbuild.profiles.nim import read_profiles
    from runtime_min.local_cache import built_profiles, local_manifest

    read = read_profiles(manifest)
    log.info("Manifest: %s (%s)", manifest, read.describe())
    origins = {p.id: manifest for p in read.profiles}
    try:
        built = [p for p in built_profiles(cache_root) if p.id not in origins]
    except NimbuildError as e:
        log.warning("Ignoring the profiles built into the cache: %s", e)
        built = []
    if built:
        log.info("Built on earlier starts: %s (%s)", ", ".join(p.description for p in built), local_manifest(cache_root))
    origins.update({p.id: local_manifest(cache_root) for p in built})
    return read.profiles + built, origins


def select(manifest: Path, cache_root: Path) -> tuple[Profile, System, Path]:
    """(the profile, the system, the manifest its files are named relative to)."""
    from nimbuild.profiles.select import select_profile
    from nimbuild.profiles.system import detect_system

    profiles, origins = manifest_profiles(manifest, cache_root)
    system = detect_system()
    gpus = ", ".join(f"{g.name} ({g.compute_capability})" for g in system.gpus) or "no GPU"
    log.info("Detected system: %s", gpus)
    selection = select_profile(profiles, system, os.environ)
    if selection.warning:
        log.warning("%s", selection.warning)
    profile = selection.require()
    log.info("Selected profile: %s (%s)", profile.id, profile.description)
    for key, value in profile.tags.items():
        log.info("Profile metadata: %s: %s", key, value)
    return profile, system, origins[profile.id]


def check_runnable(profile: Profile, servers: list, chosen: tuple | None = None) -> None:
    """What only this machine can tell (selection may have judged a simulated system): a GPU core
    needs a real GPU, and a runner needs its Python modules in the bundled server's interpreter
    (the runtime's own). `chosen`: the (server, Core) deployed; before the fetch, the planned one."""
    import importlib.util

    from nimbuild.profiles.system import detect_system
    from runtime_min.deploy import kind_of, plan

    simulated = f" (NIMBUILD_SYSTEM={os.environ['NIMBUILD_SYSTEM']} describes another machine)" \
        if os.environ.get("NIMBUILD_SYSTEM") else ""
    kind = kind_of(profile)
    if kind == "rmir" and not chosen:  # whichever builder makes its engine, the engine runs on a GPU
        if not detect_system({}).gpus:
            raise NimbuildError(f"profile {profile.description} becomes an engine for this GPU; this machine has "
                                f"no GPU{simulated}")
        return  # what it becomes is known once it is built; selection has checked its builder
    server, core = chosen or plan(kind, Path(), {}, servers, gpu=False)
    if core.gpu and not detect_system({}).gpus:
        raise NimbuildError(f"profile {profile.description} runs as {core.describe()}; this machine has no GPU{simulated}")
    if server.bundled:
        missing = [m for m in core.python_modules if importlib.util.find_spec(m.split(".")[0]) is None]
        if missing:
            raise NimbuildError(f"profile {profile.description} runs as {core.describe()}, which needs the Python "
                                f"module(s) {', '.join(missing)} (pip install 'nimbuild[trt]' for tensorrt_rtx)")


def cached_workspace(profile: Profile, cache_root: Path) -> Path | None:
    """The profile's workspace from the cache alone, as NIM starts after download-to-cache with no
    network: every file's blob verified in the blob cache and placed (hard-linked) in the workspace
    pull lays out; None when any blob is missing, so the caller fetches."""
    from nimbuild.registry.cache import BlobCache

    cache = BlobCache(cache_root)
    if not profile.files or any(cache.verified(f.digest, f.size) is None for f in profile.files.values()):
        return None
    workspace = cache_root / "profiles" / profile.model / profile.release / "profiles" / profile.description
    for rel, f in profile.files.items():
        target = workspace / rel
        if not (target.exists() and os.path.samefile(target, cache.path(f.digest))):
            cache.place(f.digest, target)
    return workspace


def registry_for(profile: Profile, given: str | None) -> str | None:
    """Where the profile is fetched from: the one given, else $NIMBUILD_REGISTRY, else the registry
    its files' URIs name (a manifest baked into an image from a published release names it, which
    is all a NIM Operator caching Job has: it passes no registry)."""
    from nimbuild.registry import REGISTRY_ENV, registry_of

    return given or os.environ.get(REGISTRY_ENV) or registry_of(profile)


def fetch(profile: Profile, manifest: Path, registry: str | None, cache_root: Path) -> Path:
    """The profile's workspace, verified: from the cache when every file is there (no registry is
    contacted), else pulled through the cache, else checked where the manifest points."""
    cached = cached_workspace(profile, cache_root)
    if cached is not None:
        log.info("Profile %s found in the cache %s; nothing to download", profile.description, cache_root)
        return cached
    registry = registry_for(profile, registry)
    if registry:
        _require_writable(profile, cache_root)
        return _pull(profile, registry, cache_root)
    from nimbuild.registry.cache import Stamps

    base = manifest.resolve().parent
    stamps = Stamps(cache_root)  # files the manifest points at are checked as cached blobs are
    roots = set()
    for rel, f in profile.files.items():
        path = base / f.uri
        if "://" in f.uri or not path.is_file():
            raise NimbuildError(f"{rel}: {f.uri} is not a local file and the profile is not in the cache "
                                f"{cache_root}; pass --registry to fetch it, or run download-to-cache first")
        if not stamps.matches(path, f.digest, f.size):
            raise NimbuildError(f"{path}: does not match its digest in {manifest}; the workspace is damaged")
        roots.add(Path(str(path)[: -len(rel)]))
    if len(roots) != 1:
        raise NimbuildError(f"profile {profile.description}: its files are not in one workspace directory")
    return roots.pop()


def _require_writable(profile: Profile, cache_root: Path) -> None:
    if not writable(cache_root):
        raise NimbuildError(f"profile {profile.description} is not in the cache {cache_root}, which this process "
                            "cannot write (a read-only mount?): fill it first (download-to-cache, a NIMCache), or "
                            "mount it writable")


def _pull(profile: Profile, registry: str, cache_root: Path) -> Path:
    """One profile through the blob cache into the workspace layout cached_workspace finds."""
    from nimbuild.registry import pull
    from nimbuild.registry.cache import BlobCache

    report = pull(f"{profile.model}:{profile.release}", registry, Reporter(quiet=True), profile=profile.id,
                  cache=BlobCache(cache_root), dest=cache_root / "profiles" / profile.model / profile.release)
    log.info("Fetched %d file(s) (%d from the cache) into %s", report.blobs_sent + report.blobs_present,
             report.blobs_present, report.dest)
    return report.dest / "profiles" / profile.description


def download_to_cache(manifest: Path, registry: str | None, cache_root: Path, wanted: list[str],
                      everything: bool) -> list[tuple[Profile, Path, bool]]:
    """NIM's download-to-cache: the named profiles, all of them, or the one this machine would run,
    fetched (verified, resumable) into the cache so that a later start needs no registry.
    Returns (profile, workspace, already cached) for each."""
    from nimbuild.profiles.nim import read_profiles
    from nimbuild.profiles.select import Candidate, find_candidate, select_profile
    from nimbuild.profiles.system import detect_system

    profiles = read_profiles(manifest).profiles
    if everything:
        chosen = profiles
    elif wanted:
        candidates = [Candidate(p) for p in profiles]
        chosen = list({id(p): p for p in (find_candidate(w, candidates).profile for w in wanted)}.values())
    else:
        chosen = [select_profile(profiles, detect_system(), os.environ).require()]
    results = []
    for profile in chosen:
        cached = cached_workspace(profile, cache_root)
        source = None if cached else registry_for(profile, registry)
        if cached is None and not source:
            raise NimbuildError(f"profile {profile.description} is not in the cache {cache_root}; "
                                "pass --registry to download it")
        if cached is None:
            _require_writable(profile, cache_root)
        results.append((profile, cached or _pull(profile, source, cache_root), cached is not None))
    return results


def deploy_into(profile: Profile, workspace: Path, system: System, servers: list, store: Path, cache_root: Path,
                work: Path, portable: bool = True):
    """Write the profile's model repository for the first server that can run it: (server, Deployment).
    An RMIR's engine is built into the cache, where the next start finds it, or into `work` when the
    cache is read-only (said in one line: it is then built again at every start)."""
    from runtime_min.deploy import Deployment, kind_of, plan, prepare, write_store

    cc = system.gpus[0].compute_capability if system.gpus else None
    engines = cache_root
    if kind_of(profile) == "rmir" and not writable(cache_root):
        engines = work
        log.warning("The cache %s is read-only: the engine this RMIR profile becomes is built into %s and is not "
                    "kept; start once with the cache writable (or run `nimbuild rmir deploy` into it) to keep it",
                    cache_root, work)
    served, kind, info = prepare(profile, workspace, engines, cc)
    if kind_of(profile) == "rmir" and engines == cache_root:
        from runtime_min.local_cache import local_manifest, record_built

        built = record_built(profile, served, cc, cache_root)
        log.info("Built profile %s (%s) recorded in %s", built.id, built.description, local_manifest(cache_root))
    if (row := BY_ID.get(info.get("task"))) and row.streaming:  # Speech NIM's mode: offline (ofl) or streaming too (str)
        info["mode"] = profile.tags.get("mode") or "ofl"
    server, core = plan(kind, served, info, servers, gpu=bool(system.gpus))
    models = write_store(profile.model, info, core, served, store, portable)
    log.info("Model repository: %s (%s; models %s)", store, core.describe(), ", ".join(models))
    return server, Deployment(profile.model, info, core, served, models)


def serve(manifest: Path, registry: str | None, settings: "Settings", cache_root: Path) -> int:
    """Everything a start writes goes to the work root (settings.work_root), never to the cache: a
    NIMService may mount NIM_CACHE_PATH read-only, and many pods may share it."""
    from runtime_min.tasks import task_module
    from runtime_min.triton import check_shared_memory, find_servers

    profile, system, origin = select(manifest, cache_root)
    work = ensure_work_root(settings.work_root)
    servers = find_servers(work)
    check_runnable(profile, servers)  # before anything is downloaded
    workspace = fetch(profile, origin, registry, cache_root)
    repository = Path(tempfile.mkdtemp(prefix="triton-repo-", dir=work))
    try:
        install, deployment = deploy_into(profile, workspace, system, servers, repository, cache_root, work,
                                          portable=False)
        check_runnable(profile, [install], (install, deployment.core))
        check_shared_memory(repository)  # before Triton starts: it would fail the load less clearly
        task = task_module(deployment.info)
        grpc_at = _address_free("gRPC", settings.grpc_host, settings.grpc_port, "NIM_GRPC_API_PORT") \
            if hasattr(task, "add_servicers") else None
        listener = _listen(settings.http_host, settings.http_port)  # ours before Triton starts, or one line says why not
        return _run(profile, deployment, task, install, repository, work, listener, settings, grpc_at)
    finally:
        shutil.rmtree(repository, ignore_errors=True)


STOP_TRITON_SECONDS = 5.0


def _run(profile: Profile, deployment, task, install, repository: Path, work: Path, listener, settings, grpc_at) -> int:
    """Start Triton and the front ends; return the exit status once a signal (or a Triton that keeps
    failing) has stopped them, Triton last."""
    from runtime_min.triton import TritonServer

    exit_code = {"value": 0}
    server: dict = {}

    def fatal(message: str) -> None:
        exit_code["value"] = 1
        if "uvicorn" in server:
            server["uvicorn"].should_exit = True

    triton = TritonServer(install, repository, work / "logs" / f"{repository.name}.log", on_fatal=fatal)
    log.info("Starting %s", install.describe())
    triton.launch()
    try:
        # The web stack is imported and the app built while Triton loads its models: on the
        # embeddings example that was a third of a second after Triton was ready (bench_runtime).
        import uvicorn

        from runtime_min.http import ServedModel, create_app

        served = ServedModel(profile.model, profile.id, deployment.workspace, deployment.info)
        front_ends = []
        if grpc_at:  # speech: Riva's gRPC API beside the HTTP one
            from runtime_min.grpc import GrpcFrontEnd

            front_ends.append(GrpcFrontEnd(*grpc_at, triton, lambda server, state: task.add_servicers(
                server, served, triton, state)))
        app = create_app(served, triton, task.add_routes, front_ends=front_ends)
        # httptools parses HTTP in C where uvicorn's default h11 is pure Python (neutral within
        # this machine's noise, measured); the loop stays asyncio's, which grpc.aio runs on.
        # log_config=None: uvicorn logs through the root logger (JSON lines when NIM_JSONL_LOGGING=1)
        config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_level="warning",
                                log_config=None, timeout_graceful_shutdown=15, access_log=False, http="httptools",
                                loop="asyncio")
        server["uvicorn"] = _stopping_server(config, app.state.begin_stop)
        # uvicorn re-raises the SIGTERM/SIGINT it handled once it has shut down, into whatever
        # handler was there before; a recording one keeps that from killing us before Triton
        # is stopped, so a signal ends in a clean exit 0.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda number, frame: log.info("received signal %d; shutting down", number))
        triton.wait_until_ready()
        log.info("Triton ready on %s; serving %s on http://%s:%d", triton.url, profile.model, settings.http_host,
                 settings.http_port)
        server["uvicorn"].run(sockets=[listener])  # returns after SIGTERM/SIGINT, once in-flight requests finish
        if not server["uvicorn"].started or any(not f.started for f in front_ends):
            log.error("the API did not start (see above)")  # uvicorn or the gRPC front end logged why
            exit_code["value"] = 1
    finally:
        listener.close()
        # the API has drained and the tasks' work is ended (stop hooks): what Triton has left is
        # unloading, which a model that stays referenced holds up (Triton's own stream handler
        # once did, found by tests/tasks/test_llm.py); a stop must stay prompt, so it is not waited on long
        triton.stop(timeout=STOP_TRITON_SECONDS)
        log.info("Triton stopped")
    return exit_code["value"]


def _stopping_server(config, begin_stop):
    """uvicorn's server, which on a stop first runs the tasks' stop hooks (an LLM's: end every live
    sequence) and only then waits for in-flight requests: a stop is as prompt after clients hung up
    mid-stream as after none did."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            await begin_stop()
            await super().shutdown(sockets)

    return Server(config)


def create_model_store(manifest: Path, requested: str, store: Path, registry: str | None, cache_root: Path,
                       backends: set[str] | None) -> "Deployment":
    """NIM's create-model-store: the profile's repository alone, for any `tritonserver
    --model-repository STORE`. `backends` names the target Triton's (default: a Triton found here)."""
    from nimbuild.profiles.select import Candidate, find_candidate
    from nimbuild.profiles.system import detect_system
    from runtime_min.settings import work_root
    from runtime_min.triton import TritonInstall, find_servers

    profiles, origins = manifest_profiles(manifest, cache_root)
    profile = find_candidate(requested, [Candidate(p) for p in profiles]).profile
    if backends:
        servers = [TritonInstall(Path("tritonserver"), None, {}, bundled=False, backends=frozenset(backends))]
    else:
        servers = find_servers(None)
    workspace = fetch(profile, origins[profile.id], registry, cache_root)
    work = ensure_work_root(work_root())
    _, deployment = deploy_into(profile, workspace, detect_system(), servers, store, cache_root, work)
    return deployment


def _listen(host: str, port: int):
    """The API's listening socket, bound now: a port already taken is one line before Triton starts."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio turns Nagle's algorithm off only on sockets whose proto
    # says TCP, and with Nagle on every small response waited 40 ms for a delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise NimbuildError(f"cannot listen for HTTP on {host}:{port} ({e.strerror}); set NIM_HTTP_API_PORT "
                            "or --port") from None
    sock.set_inheritable(False)
    return sock


def _address_free(what: str, host: str, port: int, variable: str) -> tuple[str, int]:
    """Where a front end will listen; checked before anything starts, so a port in use is one line
    at start, not a failure after Triton is up."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise NimbuildError(f"cannot listen for {what} on {host}:{port} ({e.strerror}); set {variable}") from None
    return host, port


def ensure_work_root(path: Path) -> Path:
    """The work root, created private to this user; one that another user owns is refused (a shared
    /tmp must not hand this process a folder someone else prepared)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        owner = path.stat().st_uid
    except OSError as e:
        raise NimbuildError(f"cannot create the work folder {path} ({e.strerror}); set NIM_WORKSPACE to a "
                            "writable folder") from None
    if owner != os.getuid():
        raise NimbuildError(f"the work folder {path} belongs to user {owner}, not to this one ({os.getuid()}); "
                            "set NIM_WORKSPACE to a folder of your own")
    return path


def writable(path: Path) -> bool:
    """Whether this process can write into `path` (created if it is missing): False for a read-only
    mount or a folder without write permission, as a NIMService mounts a shared cache."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)
