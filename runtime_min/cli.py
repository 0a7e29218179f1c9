"""`python -m runtime_min serve | create-model-store | download-to-cache | list-model-profiles` (NIM's
commands; serve and create-model-store also as `nimbuild serve` and `nimbuild create-model-store`)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from nimbuild.errors import NimbuildError


def serve_options(command):
    command = click.option("--manifest", "-m", type=click.Path(path_type=Path, dir_okay=False), default=None,
                           help="Profiles manifest (default: $NIM_MANIFEST_PATH, else ./profiles.yaml).")(command)
    command = click.option("--registry", default=None,
                           help="Fetch the selected profile from this registry (directory, oci://, ngc://) "
                                "instead of the files next to the manifest.")(command)
    command = click.option("--host", default=os.environ.get("NIM_HTTP_API_HOST", "0.0.0.0"), show_default=True,
                           help="Address for the HTTP API (Triton itself listens on loopback only).")(command)
    return click.option("--port", type=int, default=None,
                        help="HTTP API port (default: $NIM_HTTP_API_PORT, else 8000).")(command)


def run_serve(manifest: Path | None, registry: str | None, host: str, port: int | None) -> int:
    from nimbuild.registry.cache import default_cache_root
    from runtime_min.service import DEFAULT_PORT, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe is noise
    manifest = manifest or Path(os.environ.get("NIM_MANIFEST_PATH") or "profiles.yaml")
    port = port or int(os.environ.get("NIM_HTTP_API_PORT") or DEFAULT_PORT)
    return serve(manifest, registry, host, port, default_cache_root())


def store_options(command):
    command = click.option("--profile", "-p", "profile", required=True,
                           help="Profile id, unique id prefix, or description.")(command)
    command = click.option("--model-store", "store", required=True, type=click.Path(path_type=Path, file_okay=False),
                           help="Directory to write the Triton model repository into.")(command)
    command = click.option("--manifest", "-m", type=click.Path(path_type=Path, dir_okay=False), default=None,
                           help="Profiles manifest (default: $NIM_MANIFEST_PATH, else ./profiles.yaml).")(command)
    command = click.option("--registry", default=None,
                           help="Fetch the profile from this registry instead of the files next to the manifest.")(command)
    return click.option("--triton-backends", "backends", default=None,
                        help="Write for a Triton with these backends (comma-separated, e.g. python,onnxruntime,tensorrt "
                             "for NGC's Triton container); default: the tritonserver found here.")(command)


def run_create_model_store(profile: str, store: Path, manifest: Path | None, registry: str | None,
                           backends: str | None) -> str:
    """Write the repository; the line that says what was written."""
    from nimbuild.registry.cache import default_cache_root
    from runtime_min.service import create_model_store

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    manifest = manifest or Path(os.environ.get("NIM_MANIFEST_PATH") or "profiles.yaml")
    wanted = {b.strip() for b in backends.split(",") if b.strip()} if backends else None
    deployment = create_model_store(manifest, profile, store, registry, default_cache_root(), wanted)
    return (f"wrote {len(deployment.models)} model(s) to {store}: {', '.join(deployment.models)} "
            f"(core: {deployment.core.describe()})")


@click.group()
def main() -> None:
    """The minimal NIM-style runtime."""


def _one_line_errors(run) -> int:
    try:
        return run()
    except NimbuildError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except Exception as e:  # Triton failing to start, a port in use: one line, non-zero
        click.echo(f"error: {type(e).__name__}: {e}", err=True)
        return 1


@main.command("serve")
@serve_options
def serve_cmd(manifest, registry, host, port) -> None:
    """Select the profile for this machine, fetch it, and serve it through Triton."""
    sys.exit(_one_line_errors(lambda: run_serve(manifest, registry, host, port)))


@main.command("create-model-store")
@store_options
def create_model_store_cmd(profile, store, manifest, registry, backends) -> None:
    """Write one profile's Triton model repository (servable by `tritonserver --model-repository`)."""
    def run() -> int:
        click.echo(run_create_model_store(profile, store, manifest, registry, backends))
        return 0

    sys.exit(_one_line_errors(run))


@main.command("download-to-cache")
@click.option("--manifest-file", "--manifest", "-m", "manifest", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="Profiles manifest (default: $NIM_MANIFEST_PATH, else ./profiles.yaml).")
@click.option("--registry", default=None, help="Registry to download from (directory, oci://, ngc://).")
@click.option("--profile", "-p", "profiles", multiple=True,
              help="Profile id, unique id prefix or description; repeat for several (default: the one this "
                   "machine would run).")
@click.option("--all", "everything", is_flag=True, help="Every profile of the manifest.")
def download_to_cache_cmd(manifest, registry, profiles, everything) -> None:
    """Fetch profiles into NIM_CACHE_PATH (verified, resumable), so that serve starts with no registry."""
    def run() -> int:
        from nimbuild.registry.cache import default_cache_root
        from runtime_min.service import download_to_cache

        if everything and profiles:
            raise NimbuildError("--all and --profile choose in different ways; give one")
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        path = manifest or Path(os.environ.get("NIM_MANIFEST_PATH") or "profiles.yaml")
        for profile, workspace, cached in download_to_cache(path, registry, default_cache_root(), list(profiles), everything):
            state = "already in the cache" if cached else "downloaded"
            click.echo(f"{profile.id} ({profile.description}): {state}, {workspace}")
        return 0

    sys.exit(_one_line_errors(run))


@main.command("list-model-profiles", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def list_model_profiles_cmd(ctx) -> None:
    """NIM's listing (the same as nim_list_model_profiles)."""
    from nimbuild.cli import list_model_profiles_main

    list_model_profiles_main.main(args=ctx.args, prog_name="list-model-profiles")
