"""The `nimbuild` command line.

Only click and the standard library are imported at start; each command imports what it needs,
so `nimbuild --help` never loads torch, transformers, onnx, NeMo or TensorRT.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click

from nimbuild import __version__
from nimbuild.errors import NimbuildError

FORMAT_OPTION = click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="json prints machine-readable output on stdout.",
)


class _Group(click.Group):
    """Turns user errors into one line on stderr and a non-zero exit; never a traceback for them."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
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


def _verbosity(command):
    """-v/-q on a command as well as on the group: `nimbuild compile R --out D -v` reads naturally."""
    command = click.option("-v", "--verbose", "cmd_verbose", is_flag=True, help="More detail.")(command)
    return click.option("-q", "--quiet", "cmd_quiet", is_flag=True, help="No progress output.")(command)


def _reporter(ctx: click.Context):
    from nimbuild.progress import Reporter

    root = ctx.find_root().params
    return Reporter(
        quiet=root.get("quiet", False) or ctx.params.get("cmd_quiet", False),
        verbose=root.get("verbose", False) or ctx.params.get("cmd_verbose", False),
    )


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nimbuild")
@click.option("-v", "--verbose", is_flag=True, help="More detail, and tracebacks for internal errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def main(verbose: bool, quiet: bool) -> None:
    """Turn NeMo and Hugging Face checkpoints into verified, tagged, deployable model profiles."""


# --- recipes ------------------------------------------------------------------------------------

@main.group(cls=_Group)
def recipe() -> None:
    """Work with recipes."""


@recipe.command("check")
@click.argument("file", type=click.Path(path_type=Path))
@FORMAT_OPTION
def recipe_check(file: Path, fmt: str) -> None:
    """Validate a recipe; exit 2 naming the line and field of each problem."""
    from nimbuild.build import plan_variants
    from nimbuild.recipe import load_recipe

    loaded = load_recipe(file)
    variants = plan_variants(loaded)
    if fmt == "json":
        _emit_json({"recipe": str(file), "valid": True, "name": loaded.name, "release": loaded.release,
                    "variants": [v.description for v in variants]})
    else:
        click.echo(f"{file}: ok ({loaded.name} {loaded.release}, {loaded.task}, {len(variants)} profile(s): "
                   f"{', '.join(v.description for v in variants)})")


# --- compile ------------------------------------------------------------------------------------

@main.command("compile")
@click.argument("recipe_file", metavar="RECIPE", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory for profiles.yaml and the profile workspaces.")
@click.option("--force", is_flag=True, help="Rebuild every profile even if its inputs did not change.")
@FORMAT_OPTION
@_verbosity
@click.pass_context
def compile_cmd(ctx: click.Context, recipe_file: Path, out: Path, force: bool, fmt: str, **_: bool) -> None:
    """Build a recipe's profiles into OUT, verified against the source model."""
    from nimbuild.build import compile_recipe
    from nimbuild.profiles.manifest import MANIFEST_NAME
    from nimbuild.recipe import load_recipe

    loaded = load_recipe(recipe_file)
    reporter = _reporter(ctx)
    result = compile_recipe(loaded, out, reporter, force=force)
    if fmt == "json":
        _emit_json({
            "manifest": str(out / MANIFEST_NAME), "built": result.built, "unchanged": result.reused,
            "profiles": [p.to_dict() for p in result.manifest.profiles],
        })
        return
    if not result.built:
        click.echo(f"up to date: {len(result.reused)} profile(s) of {loaded.name} {loaded.release} unchanged; nothing rebuilt")
    else:
        click.echo(f"compiled {loaded.name} {loaded.release} into {out}: "
                   f"{len(result.built)} built, {len(result.reused)} unchanged")
    built = set(result.built)
    for p in result.manifest.profiles:
        size = sum(f.size for f in p.files.values())
        click.echo(f"  {p.id[:12]}  {p.description:<40} {len(p.files):>3} files {size / 1e6:>9.1f} MB  "
                   f"{'built' if p.id in built else 'unchanged'}")
    click.echo(f"manifest: {out / MANIFEST_NAME}")


# --- profiles -----------------------------------------------------------------------------------

@main.group(cls=_Group)
def profiles() -> None:
    """Inspect, select and merge profile manifests."""


@profiles.command("merge")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the merged profiles.yaml.")
def profiles_merge(inputs: tuple[Path, ...], out: Path) -> None:
    """Combine manifests (files, or directories holding profiles.yaml); refuse conflicts."""
    from nimbuild.profiles.manifest import MANIFEST_NAME, load_manifest, merge_manifests

    paths = [p / MANIFEST_NAME if p.is_dir() else p for p in inputs]
    merged = merge_manifests((str(p), load_manifest(p).rebased(p.parent, out.parent)) for p in paths)
    merged.save(out)
    click.echo(f"merged {len(paths)} manifest(s): {len(merged.profiles)} profile(s) -> {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
