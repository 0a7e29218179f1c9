"""Triton model configurations, written through Triton's own schema (the `model_config` protobuf
that tritonclient ships), and the files of one model directory.

Building the message rather than formatting text means a field Triton does not know, or a value of
the wrong type, fails here when the repository is written, not inside tritonserver at start.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

# numpy / ONNX element type names -> Triton's
_TYPES = {"bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "int32": "TYPE_INT32",
          "int64": "TYPE_INT64", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float32": "TYPE_FP32",
          "float64": "TYPE_FP64", "string": "TYPE_STRING", "bytes": "TYPE_STRING"}


@dataclass
class Tensor:
    """One input or output, dims without the batch dimension (-1 where it varies)."""

    name: str
    dtype: str  # numpy-style name: float32, int64, string
    dims: list[int]
    ragged: bool = False  # Python models take ragged batches and pad them themselves
    optional: bool = False
    scalar: bool = False  # the network takes [batch], Triton carries [batch, 1]: reshape to []

    def fill(self, message) -> None:
        message.name, message.dims[:] = self.name, self.dims
        message.data_type = mc.DataType.Value(triton_type(self.dtype))
        if self.scalar:
            message.reshape.SetInParent()  # an empty shape: [batch, 1] in Triton, [batch] in the network
        if self.ragged and hasattr(message, "allow_ragged_batch"):
            message.allow_ragged_batch = True
        if self.optional and hasattr(message, "optional"):
            message.optional = True


@dataclass
class Model:
    """A model directory: its configuration and the files of version 1."""

    config: mc.ModelConfig
    files: dict[str, Path] = field(default_factory=dict)  # path under 1/ -> source

    @property
    def name(self) -> str:
        return self.config.name


def triton_type(dtype: str) -> str:
    try:
        return _TYPES[dtype]
    except KeyError:
        raise ValueError(f"no Triton data type for {dtype!r}") from None


def new_config(name: str, max_batch_size: int, inputs: list[Tensor], outputs: list[Tensor], *,
               backend: str | None = None, platform: str | None = None) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    if backend:
        config.backend = backend
    if platform:
        config.platform = platform
    for spec in inputs:
        spec.fill(config.input.add())
    for spec in outputs:
        spec.fill(config.output.add())
    return config


def dynamic_batching(config: mc.ModelConfig, delay_us: int) -> None:
    config.dynamic_batching.max_queue_delay_microseconds = int(delay_us)


def instances(config: mc.ModelConfig, gpu: bool, profiles: list[str] | None = None) -> None:
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    group = config.instance_group.add(kind=kind, count=1)
    if profiles:  # TensorRT: the engine's optimisation profile(s) this instance uses
        group.profile[:] = profiles


def parameters(config: mc.ModelConfig, **values: str) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def ensemble(name: str, max_batch_size: int, inputs: list[Tensor], outputs: list[Tensor],
             steps: list[tuple[str, dict[str, str], dict[str, str]]]) -> mc.ModelConfig:
    """steps: (model, {member input: ensemble tensor}, {member output: ensemble tensor})."""
    config = new_config(name, max_batch_size, inputs, outputs, platform="ensemble")
    for model, input_map, output_map in steps:
        step = config.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        step.input_map.update(input_map)
        step.output_map.update(output_map)
    return config


def to_text(config: mc.ModelConfig) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


LINK_ABOVE = 8 << 20


def write_models(models: list[Model], store: Path, portable: bool = True) -> None:
    """Each model as `store/<name>/config.pbtxt` and `store/<name>/1/...`. Files are hard-linked where
    the filesystem allows (engines and graphs can be GBs); elsewhere a portable repository (one that
    names no path outside itself) copies them, and the runtime's own, private one links to those
    over LINK_ABOVE symbolically: a cache mounted read-only from another filesystem (or owned by
    another user, which the kernel's protected_hardlinks keeps from being hard-linked) would
    otherwise be copied at every start."""
    for model in models:
        directory = store / model.name
        shutil.rmtree(directory, ignore_errors=True)
        version = directory / "1"
        version.mkdir(parents=True)
        for rel, source in sorted(model.files.items()):
            target = version / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target)
                continue
            try:
                os.link(source, target)
            except OSError:
                # small files (the models' code above all: a Python model finds its files beside its
                # own resolved path) are copied; only graphs and engines are linked to
                if portable or source.stat().st_size < LINK_ABOVE:
                    shutil.copyfile(source, target)
                else:
                    os.symlink(source.resolve(), target)
        (directory / "config.pbtxt").write_text(to_text(model.config), encoding="utf-8")


def python_instances(store: Path) -> int:
    """How many Python-backend model instances Triton will start for the repository in `store`."""
    from google.protobuf import text_format

    count = 0
    for path in sorted(store.glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())
        if config.backend == "python":
            count += sum(g.count or 1 for g in config.instance_group) or 1
    return count
