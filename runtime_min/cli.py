"""NIM's commands: `serve`, `create-model-store`, `download-to-cache` and `list-model-profiles`, as
`runtime_min <command>` (also `python -m runtime_min`) and as executables of their own on PATH, which
is how the NIM Operator's Jobs call them (`download-to-cache --profiles ID ID...`). serve and
create-model-store are also `nimbuild serve` and `nimbuild create-model-store`.

The registry a profile comes from is, in order: `--registry`, $NIMBUILD_REGISTRY, or the registry its
files' URIs name (a manifest baked into an image from a published release names it).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from nimbuild.errors import NimbuildError
from nimbuild.profiles.nim import manifest_path

MANIFEST_HELP = ("Profiles manifest (default: $NIM_MANIFEST_PATH, else /mnt/models/profiles.yaml where KServe "
                 "mounted a model, else ./profiles.yaml).")
REGISTRY_HELP = ("Registry to fetch from (directory, oci://, ngc://); default: $NIMBUILD_REGISTRY, else the "
                 "registry the manifest's file URIs name.")


def serve_options(command):
    command = click.option("--manifest", "-m", type=click.Path(path_type=Path, dir_okay=False), default=None,
                           help=MANIFEST_HELP)(command)
    command = click.option("--registry", default=None, help=REGISTRY_HELP)(command)
    command = click.option("--host", default=None,
                           help="Address for the HTTP and gRPC APIs (default: $NIM_HTTP_API_HOST, else 0.0.0.0; "
                                "Triton itself listens on loopback only).")(command)
    return click.option("--port", type=int, default=None,
                        help="HTTP API port (default: $NIM_HTTP_API_PORT, else $NIM_SERVER_PORT, else 8000).")(command)


def run_serve(manifest: Path | None, registry: str | None, host: str | None, port: int | None) -> int:
    from nimbuild.registry.cache import default_cache_root
    from runtime_min.service import serve
    from runtime_min.settings import configure_logging, from_env

    settings = from_env(host=host, port=port)
    configure_logging(settings)
    return serve(manifest_path(manifest), registry, settings, default_cache_root())


def store_options(command):
    command = click.option("--profile", "-p", "profile", required=True,
                           help="Profile id, unique id prefix, or description.")(command)
    # a string, not a click.Path: a Path would fold s3://bucket into s3:/bucket
    command = click.option("--model-store", "store", required=True,
                           help="Directory to write the Triton model repository into, or s3://BUCKET/PREFIX "
                                "(s3://http://HOST:PORT/BUCKET/PREFIX for an S3-compatible endpoint) to upload "
                                "it for `tritonserver --model-repository s3://...`.")(command)
    command = click.option("--manifest", "-m", type=click.Path(path_type=Path, dir_okay=False), default=None,
                           help=MANIFEST_HELP)(command)
    command = click.option("--registry", default=None, help=REGISTRY_HELP)(command)
    return click.option("--triton-backends", "backends", default=None,
                        help="Write for a Triton with these backends (comma-separated, e.g. python,onnxruntime,tensorrt "
                             "for NGC's Triton container); default: the tritonserver found here.")(command)


def run_create_model_store(profile: str, store: str | Path, manifest: Path | None, registry: str | None,
                           backends: str | None) -> str:
    """Write the repository (or upload it, for an s3:// store); the line that says what was written."""
    from runtime_min import object_store

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    wanted = {b.strip() for b in backends.split(",") if b.strip()} if backends else None
    if object_store.is_object_store(str(store)):
        return _upload_model_store(profile, object_store.parse(str(store)), manifest, registry, wanted)
    if Path(store).is_file():
        raise NimbuildError(f"--model-store {store}: a file is in the way; give a directory")
    deployment = _write_model_store(profile, Path(store), manifest, registry, wanted)
    return (f"wrote {len(deployment.models)} model(s) to {store}: {', '.join(deployment.models)} "
            f"(core: {deployment.core.describe()})")


def _write_model_store(profile: str, store: Path, manifest: Path | None, registry: str | None, wanted):
    from nimbuild.registry.cache import default_cache_root
    from runtime_min.service import create_model_store

    return create_model_store(manifest_path(manifest), profile, store, registry, default_cache_root(), wanted)


def _upload_model_store(profile: str, where, manifest: Path | None, registry: str | None, wanted) -> str:
    """The repository written in the work folder, then uploaded (its address was checked before any fetch)."""
    import shutil
    import tempfile

    from runtime_min import object_store
    from runtime_min.service import ensure_work_root
    from runtime_min.settings import work_root

    staging = Path(tempfile.mkdtemp(prefix="model-store-", dir=ensure_work_root(work_root())))
    try:
        deployment = _write_model_store(profile, staging / "store", manifest, registry, wanted)
        sent = object_store.upload(staging / "store", deployment.models, where)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return (f"uploaded {len(deployment.models)} model(s) ({sent} files) to {where.triton_uri}: "
            f"{', '.join(deployment.models)} (core: {deployment.core.describe()}); "
            f"serve with tritonserver --model-repository={where.triton_uri}")


class _ProfilesTakeMany(click.Command):
    """`--profiles A B C` as the NIM Operator's caching Job passes it (one option, several values,
    up to the next option), read as `--profile A --profile B --profile C`; click options take one."""

    def parse_args(self, ctx, args):
        rewritten, taking = [], False
        for arg in args:
            if arg == "--profiles":
                taking = True
                continue
            if taking and not arg.startswith("-"):
                rewritten += ["--profile", arg]
                continue
            taking = False
            rewritten.append(arg)
        return super().parse_args(ctx, rewritten)


def _one_line_errors(run) -> int:
    from runtime_min.settings import report_error

    try:
        return run()
    except NimbuildError as e:
        report_error(str(e))
        return e.exit_code
    except Exception as e:  # Triton failing to start, a port in use: one line, non-zero
        report_error(f"{type(e).__name__}: {e}")
        return 1


@click.group()
def main() -> None:
    """The minimal NIM-style runtime."""


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


@main.command("download-to-cache", cls=_ProfilesTakeMany)
@click.option("--manifest-file", "--manifest", "-m", "manifest", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help=MANIFEST_HELP)
@click.option("--registry", default=None, help=REGISTRY_HELP)
@click.option("--profile", "-p", "profiles", multiple=True,
              help="Profile id, unique id prefix or description; repeat for several, or give several after one "
                   "--profiles (default: the one this machine would run).")
@click.option("--all", "everything", is_flag=True, help="Every profile of the manifest.")
def download_to_cache_cmd(manifest, registry, profiles, everything) -> None:
    """Fetch profiles into NIM_CACHE_PATH (verified, resumable), so that serve starts with no registry."""
    def run() -> int:
        from nimbuild.registry.cache import default_cache_root
        from runtime_min.service import download_to_cache

        if everything and profiles:
            raise NimbuildError("--all and --profile choose in different ways; give one")
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        fetched = download_to_cache(manifest_path(manifest), registry, default_cache_root(), list(profiles), everything)
        for profile, workspace, cached in fetched:
            state = "already in the cache" if cached else "downloaded"
            click.echo(f"{profile.id} ({profile.description}): {state}, {workspace}")
        return 0

    sys.exit(_one_line_errors(run))


@main.command("list-model-profiles", add_help_option=False,
              context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def list_model_profiles_cmd(ctx) -> None:
    """NIM's listing (the same as nim_list_model_profiles; --help shows its options)."""
    from nimbuild.commands import list_model_profiles_main

    list_model_profiles_main.main(args=ctx.args, prog_name="list-model-profiles")


def command_main(name: str):
    """The entry point of one command as an executable of its own (pyproject's console scripts)."""
    def run() -> None:
        main.commands[name].main(args=sys.argv[1:], prog_name=name)

    return run


download_to_cache_main = command_main("download-to-cache")
create_model_store_main = command_main("create-model-store")
# list-model-profiles, the executable, is nimbuild.commands' own command (pyproject): the one above
# only forwards to it
