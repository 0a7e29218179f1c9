"""RMIR: a portable archive that becomes an engine on the target GPU at first start (docs/design.md §6).

An `.rmir` file is a plain tar, written deterministically (sorted members, zero times and owners)
so the same inputs give the same bytes and the same profile id. It holds:

    rmir.yaml            format version, model, release, task, precision, minimum compute capability,
                         input shapes (the optimisation profile), builder options, serving spec
    model.onnx           the precision variant's graph (and model.onnx.data for large models)
    model_info.json      what the runtime needs to serve the engine
    tokenizer/...        the checkpoint's tokenizer files
    asr/...              speech models: the front end's mel filterbank and the vocabulary (the
                         feature config is in model_info.json); a transducer's decoder-joint graph
    tts/...              text-to-speech models: the mel filterbank the vocoder inverts
    translation/...      translation models: the KV-cache decoder graph (the engine is the encoder)

Unpacking refuses anything but regular files and directories (no links, devices, FIFOs), any path
that is absolute or climbs out with `..`, and archives over the member-count or size limits.
`deploy` builds the engine for the local GPU or a named compute capability and caches it under
the archive's digest, the compute capability and the builder's name and version.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import yaml

from nimbuild.errors import NimbuildError
from nimbuild.tasks import ASSET_FOLDERS
from nimbuild.util.archive import MAX_MEMBERS, MAX_TOTAL_BYTES, safe_extract
from nimbuild.util.files import atomic_write_bytes, sha256_file
from nimbuild.util.yamlsafe import YamlProblem, load_yaml

FORMAT_VERSION = 1

# Engines built from RMIR archives, in the cache: below local_cache/, where the local manifest that
# records them lies (runtime_min.local_cache), so its file uris stay inside its directory as every
# manifest's must (nimbuild.profiles.manifest.check_profiles)
ENGINES = Path("local_cache") / "rmir-engines"


class RmirError(NimbuildError):
    pass


def pack(dest: Path, meta: dict, files: dict[str, Path]) -> None:
    """Write the archive: rmir.yaml first, then the files in path order, all with fixed metadata."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        header = yaml.safe_dump(meta, sort_keys=True).encode()
        tar.addfile(_info("rmir.yaml", len(header)), io.BytesIO(header))
        for name in sorted(files):
            with open(files[name], "rb") as f:
                tar.addfile(_info(name, files[name].stat().st_size), f)
    tmp.replace(dest)


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def metadata_for(recipe, reference, precision: str, min_cc: str) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "model": recipe.name,
        "release": recipe.release,
        "task": recipe.task,
        "precision": precision,
        "min_compute_capability": min_cc,
        "inputs": {s.name: {d: [r.min, r.opt, r.max] for d, r in s.dims.items()} for s in reference.inputs},
        "builder": {"strongly_typed": True},
        "serving": recipe.serving.spec_for(recipe.task),
    }


def unpack(archive: Path, dest: Path, max_members: int = MAX_MEMBERS, max_bytes: int = MAX_TOTAL_BYTES) -> dict:
    """Safely unpack into dest (which must not exist yet); return rmir.yaml's content."""
    safe_extract(archive, dest, RmirError, "RMIR archive", max_members, max_bytes)
    try:
        meta = load_yaml((dest / "rmir.yaml").read_text())[0]
        assert isinstance(meta, dict) and int(meta["format_version"]) == FORMAT_VERSION
    except (OSError, UnicodeDecodeError, YamlProblem, AssertionError, KeyError, TypeError, ValueError):
        shutil.rmtree(dest, ignore_errors=True)
        raise RmirError(f"{archive}: missing or unsupported rmir.yaml (this nimbuild reads format {FORMAT_VERSION})") from None
    return meta


def deploy(archive: Path, cache_root: Path, target: str | None = None, digest: str | None = None) -> tuple[Path, bool]:
    """Build (or find in the cache) the engine for `target` or the local GPU: (engine path, cache hit).

    The builder is chosen per target as riva-deploy does (nimbuild.profiles.builders): datacenter
    TensorRT when it is installed and this machine's GPU is the target, else TensorRT-RTX where its
    builder supports the capability. The slot beside the engine holds what the runtime serves it
    with (model_info.json, tokenizer, speech assets) and deploy.json, the build record. `digest`
    ("sha256:..."): the archive's, when the caller has just verified it (the runtime's fetch does),
    which spares re-reading a multi-GB archive at every start."""
    from filelock import FileLock

    from nimbuild.profiles.builders import rmir_builder
    from nimbuild.profiles.system import installed_runtimes

    digest = digest.removeprefix("sha256:") if digest else sha256_file(archive)
    local = _local_capability(required=target is None)
    target = target or local
    _cc(target, archive)
    builder, why = rmir_builder(target, installed_runtimes(), on_target_gpu=local == target)
    if builder is None:
        raise RmirError(f"{archive}: {why}")
    version = installed_runtimes()[builder]
    slot = cache_root / ENGINES / digest / f"sm{target.replace('.', '')}-{builder}-{version}"
    engine = slot / "model.plan"
    slot.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(slot) + ".lock"):
        if engine.exists() and (slot / "deploy.json").exists():
            return engine, True
        with tempfile.TemporaryDirectory(dir=slot.parent) as tmp:
            staged, record = _build(archive, Path(tmp), target, builder)
            atomic_write_bytes(staged / "deploy.json", json.dumps({"rmir": "sha256:" + digest, **record},
                                                                  indent=2).encode())
            shutil.rmtree(slot, ignore_errors=True)
            staged.replace(slot)
    return engine, False


def _build(archive: Path, tmp: Path, target: str, builder: str) -> tuple[Path, dict]:
    """Unpack, build with `builder`, and stage the engine with what it is served with."""
    from pydantic import TypeAdapter, ValidationError

    from nimbuild.shapes import Dims, InputSpec

    meta = unpack(archive, tmp / "rmir")
    minimum = str(meta.get("min_compute_capability", "0.0"))
    if _cc(target, archive) < _cc(minimum, archive):
        raise RmirError(f"{archive}: needs compute capability {minimum} or newer; asked to build for {target}")
    try:  # the recipe's own rules for [min, opt, max]: a malformed range is named, not left to the builder
        shapes = TypeAdapter(dict[str, Dims]).validate_python(meta.get("inputs"))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if "[" not in str(p))
        raise RmirError(f"{archive}: rmir.yaml's inputs{'.' + where if where else ''} are malformed: "
                        f"{first['msg'].removeprefix('Value error, ')}") from None
    if not shapes:
        raise RmirError(f"{archive}: rmir.yaml lists no inputs")
    inputs = [InputSpec(name, dims) for name, dims in shapes.items()]
    staged = tmp / "engine"
    if builder == "tensorrt":
        from types import SimpleNamespace

        from nimbuild.targets.tensorrt import build_engine as build_tensorrt

        # an engine for exactly this GPU and TensorRT: it is built where it runs
        options = SimpleNamespace(hardware_compatibility="none", version_compatible=False, optimization_level=None,
                                  timing_cache=None)
        record = build_tensorrt(tmp / "rmir" / "model.onnx", inputs, target, staged / "model.plan", options)
    else:
        from nimbuild.targets.tensorrt_rtx import build_engine as build_rtx

        record = build_rtx(tmp / "rmir" / "model.onnx", inputs, target, staged / "model.plan")
    for assets in ASSET_FOLDERS:  # what the runtime reads beside the engine
        if (tmp / "rmir" / assets).is_dir():
            shutil.copytree(tmp / "rmir" / assets, staged / assets)
    info = json.loads((tmp / "rmir" / "model_info.json").read_text())
    info["engine_builder"] = record
    (staged / "model_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return staged, record


def _local_capability(required: bool) -> str | None:
    from nimbuild.profiles.system import detect_system

    system = detect_system()
    if not system.gpus:
        if required:
            raise RmirError("no GPU here to deploy for; name a compute capability with --target (e.g. --target 8.9)")
        return None
    return system.gpus[0].compute_capability


def _cc(value: str, archive: Path) -> tuple[int, int]:
    major, dot, minor = str(value).partition(".")
    if not (major.isdigit() and minor.isdigit() and dot):
        raise RmirError(f"{archive}: {value!r} is not a compute capability (expected e.g. 8.9)")
    return int(major), int(minor)
