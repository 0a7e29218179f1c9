"""`python -m runtime_min serve` (also `nimbuild serve`)."""

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


@click.group()
def main() -> None:
    """The minimal NIM-style runtime."""


@main.command("serve")
@serve_options
def serve_cmd(manifest, registry, host, port) -> None:
    """Select the profile for this machine, fetch it, and serve it through Triton."""
    try:
        code = run_serve(manifest, registry, host, port)
    except NimbuildError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except Exception as e:  # Triton failing to start, a port in use: one line, non-zero
        click.echo(f"error: {type(e).__name__}: {e}", err=True)
        sys.exit(1)
    sys.exit(code)
