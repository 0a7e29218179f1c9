"""The `nimbuild` command line.

Only click and the standard library are imported at start; each command imports what it needs,
so `nimbuild --help` never loads torch, transformers, onnx, NeMo or TensorRT.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nimbuild import __version__
from nimbuild.commands import (
    EXPLAIN_OPTION,
    FORMAT_OPTION,
    Command,
    Group,
    emit_json,
    list_profiles,
    manifest_option,
    select_from,
)
from nimbuild.errors import NimbuildError


def _verbosity(command):
    """-v/-q on a command as well as on the group: `nimbuild compile R --out D -v` reads naturally."""
    command = click.option("-v", "--verbose", "cmd_verbose", is_flag=True, help="More detail.")(command)
    return click.option("-q", "--quiet", "cmd_quiet", is_flag=True, help="No progress output.")(command)


def _reporter(ctx: click.Context):
    from nimbuild.util.progress import Reporter

    root = ctx.find_root().params
    return Reporter(
        quiet=root.get("quiet", False) or ctx.params.get("cmd_quiet", False),
        verbose=root.get("verbose", False) or ctx.params.get("cmd_verbose", False),
    )


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nimbuild")
@click.option("-v", "--verbose", is_flag=True, help="More detail, and tracebacks for internal errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def main(verbose: bool, quiet: bool) -> None:
    """Turn NeMo and Hugging Face checkpoints into verified, tagged, deployable model profiles."""


# --- recipes ------------------------------------------------------------------------------------

@main.group(cls=Group)
def recipe() -> None:
    """Work with recipes."""


@recipe.command("check")
@click.argument("file", type=click.Path(path_type=Path))
@FORMAT_OPTION
def recipe_check(file: Path, fmt: str) -> None:
    """Validate a recipe; exit 2 naming the line and field of each problem."""
    from nimbuild.compile import plan_variants
    from nimbuild.recipe import load_recipe

    loaded = load_recipe(file)
    variants = plan_variants(loaded)
    if fmt == "json":
        emit_json({"recipe": str(file), "valid": True, "name": loaded.name, "release": loaded.release,
                    "variants": [v.description for v in variants]})
    else:
        click.echo(f"{file}: ok ({loaded.name} {loaded.release}, {loaded.task}, {len(variants)} profile(s): "
                   f"{', '.join(v.description for v in variants)})")


@recipe.command("init")
@click.argument("checkpoint")
@click.option("--task", "task_id", default=None,
              help="The task to build (default: read from config.json's architectures or the NeMo class).")
@click.option("--out", "out", type=click.Path(path_type=Path, dir_okay=False), default=Path("recipe.yaml"),
              show_default=True, help="Where to write the recipe.")
@click.option("--name", default=None, help="The recipe's name (default: the checkpoint's).")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def recipe_init(checkpoint: str, task_id: str | None, out: Path, name: str | None, force: bool) -> None:
    """Write a first recipe for CHECKPOINT (a Hugging Face directory, hf://org/name, pkg://package/path,
    or a .nemo file), read from the checkpoint itself and checked as `recipe check` checks it."""
    from nimbuild.recipe_init import init_recipe
    from nimbuild.util.files import atomic_write_text

    if out.exists() and not force:
        raise NimbuildError(f"{out} exists; pass --force to replace it, or --out another file")
    text, row = init_recipe(checkpoint, out, task_id, name)
    atomic_write_text(out, text)
    click.echo(f"wrote {out} (task {row.id}); next: nimbuild compile {out} --out build/{out.stem}")


@main.command("inspect")
@click.argument("file", type=click.Path(path_type=Path))
@FORMAT_OPTION
def inspect_cmd(file: Path, fmt: str) -> None:
    """Describe a .nemo checkpoint (model class, sample rate, features, vocabulary) without NeMo."""
    from nimbuild.sources.nemo import resolve_nemo

    summary = resolve_nemo(str(file), Path.cwd()).summary()
    if fmt == "json":
        emit_json(summary)
        return
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        click.echo(f"{key + ':':<20} {value if value is not None else '-'}")


# --- compile ------------------------------------------------------------------------------------

@main.command("compile")
@click.argument("recipe_file", metavar="RECIPE", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory for profiles.yaml and the profile workspaces.")
@click.option("--force", is_flag=True, help="Rebuild every profile even if its inputs did not change.")
@click.option("--target", "targets", type=int, multiple=True,
              help="Only this target (its index in the recipe); repeatable. OUT then holds just this subset.")
@click.option("--precision", "precisions", multiple=True, help="Only this precision; repeatable.")
@click.option("--cell", default=None, help="Only this cell of `nimbuild matrix RECIPE`; writes a partial manifest.")
@FORMAT_OPTION
@_verbosity
@click.pass_context
def compile_cmd(ctx: click.Context, recipe_file: Path, out: Path, force: bool, targets: tuple[int, ...],
                precisions: tuple[str, ...], cell: str | None, fmt: str, **_: bool) -> None:
    """Build a recipe's profiles into OUT, verified against the source model."""
    from nimbuild.compile import compile_recipe
    from nimbuild.profiles.manifest import MANIFEST_NAME
    from nimbuild.recipe import load_recipe

    loaded = load_recipe(recipe_file)
    reporter = _reporter(ctx)
    result = compile_recipe(loaded, out, reporter, force=force, targets=targets, precisions=precisions, cell=cell)
    if fmt == "json":
        emit_json({
            "manifest": str(out / MANIFEST_NAME), "built": result.built, "unchanged": result.reused,
            "skipped": [{"profile": d, "reason": r} for d, r in result.skipped],
            "profiles": [p.to_dict() for p in result.manifest.profiles], "stages": result.stages,
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
    for description, reason in result.skipped:
        click.echo(f"  {'-' * 12}  {description:<40} skipped: {reason}")
    click.echo(f"manifest: {out / MANIFEST_NAME}")
    peaks = [s for s in result.stages if s["peak_rss_mib"] is not None]
    if result.built and peaks:
        from nimbuild.compile import COMPILE_RECORD

        top = max(peaks, key=lambda s: s["peak_rss_mib"])
        click.echo(f"peak memory: {top['peak_rss_mib'] / 1024:.2f} GiB, in \"{top['step']}\" "
                   f"(every step's: {out / COMPILE_RECORD})")


# --- profiles -----------------------------------------------------------------------------------

@main.group(cls=Group)
def profiles() -> None:
    """Inspect, select and merge profile manifests."""


@profiles.command("merge")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the merged profiles.yaml.")
@click.option("--allow-missing", is_flag=True, help="Merge what is there even if matrix cells are missing.")
def profiles_merge(inputs: tuple[Path, ...], out: Path, allow_missing: bool) -> None:
    """Combine manifests (files, or directories holding profiles.yaml); refuse conflicts and, for
    matrix cells, name the cells that are missing or built nothing."""
    from nimbuild.errors import NimbuildError
    from nimbuild.matrix import cells as matrix
    from nimbuild.profiles.manifest import MANIFEST_NAME, load_manifest, merge_manifests

    paths = [p / MANIFEST_NAME if p.is_dir() else p for p in inputs]
    records = [(str(p.parent), matrix.read_cell_record(p.parent / matrix.CELL_FILE))
               for p in paths if (p.parent / matrix.CELL_FILE).exists()]
    problems = matrix.check_cells(records)
    if problems and not allow_missing:
        raise NimbuildError("cannot merge: " + "; ".join(problems) + " (--allow-missing merges what is there)")
    merged = merge_manifests((str(p), load_manifest(p).rebased(p.parent, out.parent)) for p in paths)
    merged.save(out)
    click.echo(f"merged {len(paths)} manifest(s): {len(merged.profiles)} profile(s) -> {out}")


# --- matrix -------------------------------------------------------------------------------------

class _MatrixGroup(Group):
    """`nimbuild matrix RECIPE` shows the matrix; `nimbuild matrix run RECIPE --local` runs it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_MatrixGroup)
def matrix() -> None:
    """CI build matrices: one recipe fanned out over builder hosts (CPU; one GPU cell per capability)."""


@matrix.command("show")
@click.argument("recipe_file", metavar="RECIPE", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["json", "github", "gitlab", "k8s"]), default="json", show_default=True,
              help="github: what strategy.matrix takes via fromJSON; gitlab: parallel:matrix; k8s: one Job per cell.")
def matrix_show(recipe_file: Path, fmt: str) -> None:
    """Print the recipe's matrix cells, each with its runner labels, node selector and command."""
    from nimbuild.compile import plan_variants
    from nimbuild.matrix import cells as m
    from nimbuild.recipe import load_recipe

    click.echo(m.render(m.expand(plan_variants(load_recipe(recipe_file))), str(recipe_file), fmt), nl=False)
    click.echo("" if fmt in ("gitlab", "k8s") else "\n", nl=False)


@matrix.command("run")
@click.argument("recipe_file", metavar="RECIPE", type=click.Path(path_type=Path))
@click.option("--local", is_flag=True, required=True, help="Run the cells this machine can build, here.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--jobs", type=int, default=0, help="Parallel cells (default: the core count).")
@_verbosity
@click.pass_context
def matrix_run(ctx: click.Context, recipe_file: Path, local: bool, out: Path, jobs: int, **_: bool) -> None:
    """Run every cell this machine can build, in parallel processes, then merge into OUT: the same
    bytes as a single `nimbuild compile RECIPE --out OUT`."""
    from nimbuild.matrix.local import run_local

    result = run_local(recipe_file, out, _reporter(ctx), jobs=jobs)
    for cell, reason in result.skipped:
        click.echo(f"skipped cell {cell}: {reason}")
    click.echo(f"ran {len(result.ran)} cell(s) ({', '.join(result.ran)}); {len(result.profiles)} profile(s) -> {out / 'profiles.yaml'}")


# --- rmir ---------------------------------------------------------------------------------------

@main.group(cls=Group)
def rmir() -> None:
    """Work with RMIR archives (models turned into engines on the target)."""


@rmir.command("deploy")
@click.argument("archive", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--target", default=None, help="Compute capability to build for (default: the local GPU's), e.g. 8.9.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Engine cache (default: $NIM_CACHE_PATH, else ~/.cache/nim).")
@FORMAT_OPTION
def rmir_deploy(archive: Path, target: str | None, cache_dir: Path | None, fmt: str) -> None:
    """Build the engine for this GPU or a named compute capability, cached; a second deploy is a cache hit."""
    from nimbuild.errors import NimbuildError
    from nimbuild.registry.cache import default_cache_root
    from nimbuild.targets.rmir import deploy

    if not archive.is_file():
        raise NimbuildError(f"{archive}: RMIR archive not found")
    engine, hit = deploy(archive, cache_dir or default_cache_root(), target)
    if fmt == "json":
        emit_json({"engine": str(engine), "cache_hit": hit})
    else:
        click.echo(f"{'cache hit' if hit else 'built'}: {engine}")


# --- registry -----------------------------------------------------------------------------------

REGISTRY_OPTION = click.option(
    "--registry", "registry_uri", default="./registry", show_default=True,
    help="A directory (OCI image layout), oci://host[:port]/namespace, or ngc://org[/team].",
)


@main.command("publish")
@click.argument("source", type=click.Path(path_type=Path))
@REGISTRY_OPTION
@click.option("--force", is_flag=True, help="Replace a published release whose content differs.")
@click.option("--images", type=click.Choice(["models", "modelcar"]), default=None,
              help="Also push each profile as an OCI image with the profile under /models, tagged "
                   "<release>-<id>-image, for KServe's storageUri: oci://... and image volumes; modelcar adds "
                   "a shell (a static busybox) for KServe's modelcar sidecar.")
@FORMAT_OPTION
@_verbosity
@click.pass_context
def publish_cmd(ctx: click.Context, source: Path, registry_uri: str, force: bool, images: str | None, fmt: str,
                **_: bool) -> None:
    """Publish the profiles of SOURCE (a compile output or its profiles.yaml) as releases.

    To OCI registries and layouts each profile goes twice over the same blobs: as nimbuild's artifact
    (<release>-<id>) and as a CNCF ModelPack artifact (<release>-<id>-modelpack) that modctl, KitOps
    and Harbor read."""
    from nimbuild.registry import publish

    report = publish(source, registry_uri, _reporter(ctx), force=force, images=images)
    if fmt == "json":
        emit_json({"registry": registry_uri, "releases": report.releases, "unchanged": report.unchanged,
                    "images": report.images, "blobs_sent": report.blobs_sent, "bytes_sent": report.bytes_sent,
                    "blobs_already_present": report.blobs_present})
        return
    for name in report.releases:
        state = "unchanged" if name in report.unchanged else "published"
        click.echo(f"{state} {name} in {registry_uri}")
    for name in report.images:
        click.echo(f"image {name}")
    click.echo(f"sent {report.blobs_sent} blob(s), {report.bytes_sent / 1e6:.1f} MB; "
               f"{report.blobs_present} already present")


@main.command("pull")
@click.argument("ref", metavar="MODEL:RELEASE")
@REGISTRY_OPTION
@click.option("--profile", "profile", default=None, help="Only this profile (id, id prefix or description).")
@click.option("--select", "select", is_flag=True, help="Only the profile this machine would run.")
@click.option("--dest", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where to put profiles.yaml and the workspaces (default: inside the cache).")
@FORMAT_OPTION
@_verbosity
@click.pass_context
def pull_cmd(ctx: click.Context, ref: str, registry_uri: str, profile: str | None, select: bool,
             dest: Path | None, fmt: str, **_: bool) -> None:
    """Fetch a release (or one profile of it) into the cache, verified, and lay it out in DEST."""
    from nimbuild.errors import NimbuildError
    from nimbuild.registry import pull

    if profile and select:
        raise NimbuildError("--profile and --select choose in different ways; give one")
    report = pull(ref, registry_uri, _reporter(ctx), dest=dest, profile=profile, select=select)
    if fmt == "json":
        emit_json({"release": ref, "dest": str(report.dest), "profiles": [p.id for p in report.profiles],
                    "blobs_fetched": report.blobs_sent, "bytes_fetched": report.bytes_sent,
                    "blobs_from_cache": report.blobs_present})
        return
    for p in report.profiles:
        click.echo(f"pulled {p.id[:12]} {p.description}")
    click.echo(f"fetched {report.blobs_sent} blob(s), {report.bytes_sent / 1e6:.1f} MB; "
               f"{report.blobs_present} from the cache")
    click.echo(f"manifest: {report.dest / 'profiles.yaml'}")


@main.group(cls=Group)
def registry() -> None:
    """Inspect registries."""


@registry.command("ls")
@click.argument("uri")
@FORMAT_OPTION
def registry_ls(uri: str, fmt: str) -> None:
    """List the models in a registry with their releases."""
    from nimbuild.registry import list_registry

    listing = list_registry(uri)
    if fmt == "json":
        emit_json(listing)
        return
    if not listing:
        click.echo(f"{uri}: no models")
    for model, tags in listing.items():
        images = f", {len(tags['image_tags'])} image(s)" if tags["image_tags"] else ""
        click.echo(f"{model}: releases {', '.join(tags['releases']) or '-'} "
                   f"({len(tags['profile_tags'])} profile tag(s), {len(tags['modelpack_tags'])} ModelPack{images})")


@main.command("k8s", cls=Command)
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--image", required=True, help="The runtime_min image (make image), e.g. registry.example/runtime_min:0.1.0.")
@click.option("--profile", "-p", default=None,
              help="Profile id or description; default: the one selection picks for --system.")
@click.option("--system", "system_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The cluster's GPU node, as a NIMBUILD_SYSTEM file (`nimbuild system --format json` on one); "
                   "default: this machine.")
@click.option("--format", "fmt", type=click.Choice(["nim-operator", "deployment", "kserve"]), default="nim-operator",
              show_default=True, help="NIMCache + NIMService; a plain PVC + Deployment + Service + HPA; or KServe.")
@click.option("--name", default=None, help="Name of the resources (default: the model's name).")
@click.option("--namespace", default=None)
@click.option("--registry", default=None, help="Set NIMBUILD_REGISTRY (a mirror; default: the image's manifest names it).")
@click.option("--auth-secret", default="nimbuild-registry", show_default=True,
              help="Secret whose keys become the caching step's environment (NIMBUILD_REGISTRY_TOKEN, NGC_API_KEY, ...).")
@click.option("--pull-secret", default=None, help="Image pull secret.")
@click.option("--pvc-size", default="20Gi", show_default=True)
@click.option("--storage-class", default=None)
@click.option("--shm-size", default="1Gi", show_default=True, help="/dev/shm (a memory emptyDir) for Triton's Python models.")
@click.option("--min-replicas", type=int, default=1, show_default=True)
@click.option("--max-replicas", type=int, default=4, show_default=True)
@click.option("--in-flight-target", type=int, default=8, show_default=True,
              help="Requests in flight per pod (num_requests_running) the autoscaler keeps to.")
@click.option("--storage-uri", default=None,
              help="kserve: where KServe finds the profile: an oci:// model image (publish --images), pvc://, s3://.")
@click.option("--pvc", "existing_pvc", default=None,
              help="Serve from this claim, filled beforehand (air-gapped): no caching step is written.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write here (atomically) instead of standard output.")
def k8s_cmd(source: Path, image: str, profile: str | None, system_file: Path | None, fmt: str, name: str | None,
            out: Path | None, **settings) -> None:
    """Kubernetes manifests that deploy one profile of a manifest (or a recipe's plan) with the image."""
    from nimbuild import k8s
    from nimbuild.util.files import atomic_write_text

    chosen = k8s.choose_profile(source, profile, system_file)
    options = k8s.Options(image=image, name=name or chosen.model, **settings)
    text = k8s.to_yaml(k8s.render(chosen, fmt, options))
    click.echo(f"profile {chosen.id} ({chosen.description}): {k8s.gpu_count(chosen)} GPU(s)", err=True)
    if out:
        atomic_write_text(out, text)
    else:
        click.echo(text, nl=False)


@main.command("serve")
@click.option("--manifest", "-m", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help=("Profiles manifest (default: $NIM_MANIFEST_PATH, else /mnt/models/profiles.yaml where "
                    "KServe mounted a model, else ./profiles.yaml)."))
@click.option("--registry", default=None, help="Fetch the selected profile from this registry.")
@click.option("--host", default=None, help="Address for the HTTP and gRPC APIs (default $NIM_HTTP_API_HOST, "
                                           "else 0.0.0.0).")
@click.option("--port", type=int, default=None, help="HTTP API port (default $NIM_HTTP_API_PORT, else "
                                                     "$NIM_SERVER_PORT, else 8000).")
def serve_cmd(manifest: Path | None, registry: str | None, host: str | None, port: int | None) -> None:
    """Serve the profile this machine would run through Triton (same as python -m runtime_min serve)."""
    from runtime_min.cli import run_serve

    sys.exit(run_serve(manifest, registry, host, port))


@main.command("create-model-store")
@click.option("--profile", "-p", "profile", required=True, help="Profile id, unique id prefix, or description.")
@click.option("--model-store", "store", required=True,
              help="Directory to write the Triton model repository into, or s3://BUCKET/PREFIX to upload it.")
@click.option("--manifest", "-m", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help=("Profiles manifest (default: $NIM_MANIFEST_PATH, else /mnt/models/profiles.yaml where "
                    "KServe mounted a model, else ./profiles.yaml)."))
@click.option("--registry", default=None, help="Fetch the profile from this registry.")
@click.option("--triton-backends", "backends", default=None,
              help="Write for a Triton with these backends (e.g. python,onnxruntime,tensorrt); default: the one here.")
def create_model_store_cmd(profile: str, store: str, manifest: Path | None, registry: str | None,
                           backends: str | None) -> None:
    """Write one profile's Triton model repository (same as python -m runtime_min create-model-store)."""
    from runtime_min.cli import run_create_model_store

    click.echo(run_create_model_store(profile, store, manifest, registry, backends))


@profiles.command("list")
@manifest_option
@FORMAT_OPTION
@EXPLAIN_OPTION
def profiles_list(manifest: Path | None, fmt: str, explain: bool) -> None:
    """List profiles, grouped by whether this system can run them (same as nim_list_model_profiles)."""
    list_profiles(manifest, fmt, explain)


@profiles.command("select")
@manifest_option
@FORMAT_OPTION
def profiles_select(manifest: Path | None, fmt: str) -> None:
    """Print the id of the profile this system would run; exit 1 with the reasons if none fits."""
    selection = select_from(manifest)[1]
    chosen = selection.require()
    if fmt == "json":
        emit_json({"selected": chosen.id, "description": chosen.description, "tags": chosen.tags})
    else:
        click.echo(chosen.id)


@profiles.command("export")
@manifest_option
@click.option("--format", "fmt", type=click.Choice(["nim-v2"]), default="nim-v2", show_default=True,
              help="The manifest shape to write.")
@click.option("--release", "releases", multiple=True, metavar="MODEL:RELEASE",
              help="Export this published release (repeatable) as --registry holds it, its files named by their "
                   "URIs there: the manifest an image bakes (make image), instead of -m's.")
@click.option("--registry", default=None, help="The registry the releases are published in (with --release).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write here (atomically) instead of standard output.")
def profiles_export(manifest: Path | None, fmt: str, releases: tuple[str, ...], registry: str | None,
                    out: Path | None) -> None:
    """Write the manifest as a NIM v2 model_manifest.yaml (per-file uri and checksum) that NIM's readers
    and the NIM Operator take; warn, naming them, of profiles the operator could never match."""
    from nimbuild.profiles.nim import go_regexp_refusals, manifest_path, nim_v2_text, read_profiles
    from nimbuild.util.files import atomic_write_text

    if bool(releases) != bool(registry):
        raise NimbuildError("--release and --registry go together: the releases, and where they are published")
    if releases and manifest:
        raise NimbuildError("export either -m MANIFEST or published --release ...; not both")
    if releases:
        from nimbuild.registry import published_profiles

        profiles = [p for ref in releases for p in published_profiles(ref, registry)]
    else:
        profiles = read_profiles(manifest_path(manifest)).profiles
    for line in go_regexp_refusals(profiles):
        click.echo(f"warning: {line}", err=True)
    text = nim_v2_text(profiles)
    if out:
        atomic_write_text(out, text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text, nl=False)


@profiles.command("show")
@click.argument("profile")
@manifest_option
@FORMAT_OPTION
def profiles_show(profile: str, manifest: Path | None, fmt: str) -> None:
    """Show one profile (by id, unique id prefix, or description) with its status on this system."""
    import yaml

    from nimbuild.profiles.select import find_candidate

    selection = select_from(manifest)[1]
    candidate = find_candidate(profile, selection.candidates)
    data = {**candidate.profile.to_dict(), "status": candidate.status, "reasons": candidate.reasons,
            "selected": selection.selected is not None and selection.selected.id == candidate.profile.id}
    if fmt == "json":
        emit_json(data)
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=4096), nl=False)


@main.command("system")
@FORMAT_OPTION
def system_cmd(fmt: str) -> None:
    """Show the system selection sees (NVML, or the NIMBUILD_SYSTEM file). JSON is a valid NIMBUILD_SYSTEM."""
    from nimbuild.profiles import listing
    from nimbuild.profiles.system import detect_system

    system = detect_system()
    if fmt == "json":
        emit_json(system.to_dict())
    else:
        click.echo("\n".join(listing.system_lines(system, explain=True)))


if __name__ == "__main__":  # pragma: no cover
    main()
