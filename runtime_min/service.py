"""What a NIM container does at start, reduced to its essentials (DESIGN.md §8):

detect the system -> select a profile (the same function as nim_list_model_profiles) -> fetch it
into the cache, verified -> write a Triton model repository -> start tritonserver -> serve the HTTP
API -> on SIGTERM/SIGINT, finish in-flight requests, stop Triton, exit 0 (no child left behind).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

from nimbuild.errors import NimbuildError
from nimbuild.fsutil import file_matches
from nimbuild.profiles.manifest import Profile
from nimbuild.progress import Reporter

log = logging.getLogger("runtime_min")
DEFAULT_PORT = 8000


def select(manifest: Path) -> Profile:
    from nimbuild.profiles.nim import read_profiles
    from nimbuild.profiles.select import select_profile
    from nimbuild.profiles.system import detect_system

    profiles, _ = read_profiles(manifest)
    system = detect_system()
    gpus = ", ".join(f"{g.name} ({g.compute_capability})" for g in system.gpus) or "no GPU"
    log.info("Detected system: %s", gpus)
    profile = select_profile(profiles, system, os.environ).require()
    log.info("Selected profile: %s (%s)", profile.id, profile.description)
    for key, value in profile.tags.items():
        log.info("Profile metadata: %s: %s", key, value)
    if profile.tags.get("type") in ("prebuilt", "rmir") or profile.tags.get("backend") != "onnxruntime":
        raise NimbuildError(f"profile {profile.description}: runtime_min serves generic onnxruntime profiles; "
                            "engine and RMIR profiles are not supported by this version")
    return profile


def fetch(profile: Profile, manifest: Path, registry: str | None, cache_root: Path) -> Path:
    """The profile's workspace, verified: pulled through the cache, or checked where the manifest points."""
    if registry:
        from nimbuild.registry import pull
        from nimbuild.registry.cache import BlobCache

        report = pull(f"{profile.model}:{profile.release}", registry, Reporter(quiet=True), profile=profile.id,
                      cache=BlobCache(cache_root), dest=cache_root / "profiles" / profile.model / profile.release)
        log.info("Fetched %d file(s) (%d from the cache) into %s", report.blobs_sent + report.blobs_present,
                 report.blobs_present, report.dest)
        return report.dest / "profiles" / profile.description
    base = manifest.resolve().parent
    roots = set()
    for rel, f in profile.files.items():
        path = base / f.uri
        if "://" in f.uri or not path.is_file():
            raise NimbuildError(f"{rel}: {f.uri} is not a local file; pass --registry to fetch the profile")
        if not file_matches(path, f.digest, f.size):
            raise NimbuildError(f"{path}: does not match its digest in {manifest}; the workspace is damaged")
        roots.add(Path(str(path)[: -len(rel)]))
    if len(roots) != 1:
        raise NimbuildError(f"profile {profile.description}: its files are not in one workspace directory")
    return roots.pop()


def serve(manifest: Path, registry: str | None, host: str, port: int, cache_root: Path) -> int:
    import uvicorn

    from runtime_min.api import ServedModel, create_app
    from runtime_min.repository import write_repository
    from runtime_min.triton import TritonServer, locate_triton

    profile = select(manifest)
    workspace = fetch(profile, manifest, registry, cache_root)
    install = locate_triton(cache_root)
    repository = Path(tempfile.mkdtemp(prefix="triton-repo-", dir=_ensure(cache_root)))
    try:
        info = write_repository(profile.model, workspace, repository, profile.tags.get("mode"))
        exit_code = {"value": 0}
        server: dict = {}

        def fatal(message: str) -> None:
            exit_code["value"] = 1
            if "uvicorn" in server:
                server["uvicorn"].should_exit = True

        triton = TritonServer(install, repository, cache_root / "logs" / f"tritonserver-{os.getpid()}.log", on_fatal=fatal)
        log.info("Starting tritonserver (%s)", "bundled with nvidia-pytriton" if install.bundled else install.binary)
        triton.start()
        try:
            log.info("Triton ready on %s; serving %s on http://%s:%d", triton.url, profile.model, host, port)
            app = create_app(ServedModel(profile.model, profile.id, workspace, info), triton)
            config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=15,
                                    access_log=False)
            server["uvicorn"] = uvicorn.Server(config)
            # uvicorn re-raises the SIGTERM/SIGINT it handled once it has shut down, into whatever
            # handler was there before; a recording one keeps that from killing us before Triton
            # is stopped, so a signal ends in a clean exit 0.
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda number, frame: log.info("received signal %d; shutting down", number))
            server["uvicorn"].run()  # returns after SIGTERM/SIGINT, once in-flight requests finish
        finally:
            triton.stop()
            log.info("Triton stopped")
        return exit_code["value"]
    finally:
        shutil.rmtree(repository, ignore_errors=True)


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
