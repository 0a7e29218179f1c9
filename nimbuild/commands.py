"""What both command lines share: nimbuild's, and runtime_min's NIM-named commands. User errors as
one line and an exit code, the output and manifest options, and NIM's profile listing
(`nim_list_model_profiles`, also `list-model-profiles` and `nimbuild profiles list`).

Only click and the standard library are imported here at start, as in nimbuild.cli.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click

from nimbuild.errors import NimbuildError

FORMAT_OPTION = click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="json prints machine-readable output on stdout.",
)


class UserErrors:
    """Turns user errors into one line on stderr and a non-zero exit; never a traceback for them."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except NimbuildError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `nimbuild ... | head`: the reader left; not an error worth a message
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as e:  # a bug, not a user error: say so plainly, details on -v
            if ctx.find_root().params.get("verbose") or "-v" in sys.argv or "--verbose" in sys.argv:
                traceback.print_exc()
            click.echo(f"internal error: {type(e).__name__}: {e} (rerun with -v for the traceback)", err=True)
            ctx.exit(1)


class Group(UserErrors, click.Group):
    pass


class Command(UserErrors, click.Command):
    pass


def emit_json(data) -> None:
    try:  # orjson (the runtime's extra) writes a 10,000-profile listing 10x faster than json
        import orjson

        text = orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()
    except (ImportError, TypeError):  # not installed, or a value it cannot write (an int past 64 bits)
        text = json.dumps(data, indent=2, sort_keys=False, default=str)
    click.echo(text)


def manifest_option(command):
    return click.option(
        "-m", "--manifest", type=click.Path(path_type=Path, dir_okay=False), default=None,
        help="Manifest to read (nimbuild's profiles.yaml or NIM's model_manifest.yaml). "
             "Default: $NIM_MANIFEST_PATH, else ./profiles.yaml.",
    )(command)


def select_from(manifest: Path | None):
    """Read the manifest and the system, and run the one selection function."""
    import os

    from nimbuild.profiles.nim import manifest_path, read_profiles
    from nimbuild.profiles.select import select_profile
    from nimbuild.profiles.system import detect_system

    path = manifest_path(manifest)
    read = read_profiles(path)
    system = detect_system()
    selection = select_profile(read.profiles, system, os.environ)
    if selection.warning:
        click.echo(f"warning: {selection.warning}", err=True)
    return system, selection, read, path


def list_profiles(manifest: Path | None, fmt: str, explain: bool) -> None:
    from nimbuild.profiles import listing

    system, selection, read, path = select_from(manifest)
    if fmt == "json":
        source = {"path": str(path), "format": read.format, "read_as": read.describe(), **read.details}
        emit_json(listing.as_json(system, selection, source))
    else:
        click.echo(f"read {path} as a {read.describe()}", err=True)  # stdout stays as NIM prints it
        click.echo(listing.as_text(system, selection, explain))


EXPLAIN_OPTION = click.option("--explain", is_flag=True,
                              help="Also mark the selected profile, say why each other one is not runnable, and "
                                   "show compute capabilities, memory and runtimes (NIM prints none of these).")


@click.command("nim_list_model_profiles", cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@manifest_option
@FORMAT_OPTION
@EXPLAIN_OPTION
def list_model_profiles_main(manifest: Path | None, fmt: str, explain: bool) -> None:
    """List model profiles in NIM's groups: runnable (LoRA apart), low memory, compilable, incompatible."""
    list_profiles(manifest, fmt, explain)
