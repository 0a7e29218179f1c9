"""Weights streamed from the checkpoint into the written graph (docs/design.md §17).

Exporting a loaded model holds its weights twice: the module's parameters, and the transposed
copy of every linear weight that the exporter's optimizer folds `Transpose(weight)` into (onnxscript
folds a Transpose of any size). For a checkpoint whose weights go beside the graph anyway
(reference.EXTERNAL_WEIGHTS_FROM), the graph's structure is instead exported from a model whose
parameters take no memory (each a zero broadcast to its shape), the optimizer runs with the
parameters out of its reach (graph inputs while it runs, so nothing folds or merges them), and each
parameter comes back as a tensor read from the checkpoint's safetensors when the graph is written,
one at a time; a weight's Transpose becomes the transposed tensor, as the optimizer would have
folded it. The checks after the export (parity against the recorded source) judge the result as
they judge any graph.

A checkpoint is streamed only where every parameter of the model transformers builds is a tensor
of the same name and shape in the safetensors: transformers converts some layouts while loading
(stacked experts from per-expert tensors, renamed legacy keys), and those are exported from the
loaded model as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

WEIGHT_SUFFIX = ".T"  # a folded weight's initializer: the parameter's name and this


class CheckpointTensors:
    """The checkpoint's safetensors by tensor name, read one tensor at a time."""

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self.files: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for file in files:
            with safe_open(file, "pt") as f:
                for name in f.keys():
                    self.files[name] = file
                    self.shapes[name] = tuple(f.get_slice(name).get_shape())

    @classmethod
    def of(cls, path: Path) -> "CheckpointTensors | None":
        files = sorted(path.glob("*.safetensors"))
        return cls(files) if files else None

    def fp32_bytes(self) -> int:
        return sum(4 * int(np.prod(shape)) for shape in self.shapes.values())

    def read(self, name: str, transpose: bool) -> np.ndarray:
        import torch
        from safetensors import safe_open

        with safe_open(self.files[name], "pt") as f:
            array = f.get_tensor(name).to(torch.float32).numpy()
        return np.ascontiguousarray(array.T) if transpose else array


def empty_parameters(model) -> None:
    """Replace every parameter (tied ones stay one object) by a zero broadcast to its shape: the
    exporter traces shapes, not values, and these take no memory."""
    import torch

    placeholders: dict[int, Any] = {}
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is None:
                continue
            if id(parameter) not in placeholders:
                zero = torch.zeros((), dtype=torch.float32).expand(parameter.shape)
                placeholders[id(parameter)] = torch.nn.Parameter(zero, requires_grad=False)
            module._parameters[name] = placeholders[id(parameter)]


def parameter_sources(module, tensors: CheckpointTensors, strip: str, base: str = "") -> dict[str, str] | str:
    """{the name the exporter may give a parameter: its checkpoint tensor}, or why the checkpoint
    cannot be streamed. `strip` is the wrapper's prefix before the model's names ("lm."); `base`
    the model's base_model_prefix, which some checkpoints' names leave out (GPT-2's `h.0...`)."""
    aliases: dict[int, list[str]] = {}
    shapes: dict[int, tuple[int, ...]] = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(parameter), []).append(name)
        shapes[id(parameter)] = tuple(parameter.shape)

    def candidates(name: str) -> list[str]:
        own = name[len(strip):]
        return [own, own[len(base) + 1:]] if base and own.startswith(base + ".") else [own]

    sources: dict[str, str] = {}
    for key, names in aliases.items():
        found = [c for n in names for c in candidates(n) if tensors.shapes.get(c) == shapes[key]]
        if not found:
            return (f"the checkpoint has no tensor {names[0][len(strip):]} of shape {list(shapes[key])} "
                    f"(transformers converts its layout when loading)")
        sources.update({name: found[0] for name in names})
    return sources


def attach(model, sources: dict[str, str], tensors: CheckpointTensors) -> None:
    """Optimise the exported ir.Model with its parameters hidden, then give each one back as a
    tensor read from the checkpoint when the graph is written (module docstring)."""
    import onnx_ir as ir
    import onnxscript.optimizer

    graph = model.graph
    left = [name for name, value in graph.initializers.items() if name not in sources and _placeholder(value.const_value)]
    if left:  # a parameter the exporter named otherwise would be served as zeros
        from nimbuild.errors import ExportError

        raise ExportError(f"the exported graph kept placeholder weights for {', '.join(left[:3])}: "
                          "they were not matched to the checkpoint's tensors")
    hidden = [value for name, value in list(graph.initializers.items()) if name in sources]
    for value in hidden:
        value.const_value = None
        del graph.initializers[value.name]
        graph.inputs.append(value)
    onnxscript.optimizer.optimize_ir(model)
    for value in hidden:
        graph.inputs.remove(value)
        source = sources[value.name]
        for node in [use.node for use in value.uses() if _is_plain_transpose(use.node)]:
            folded = ir.Value(name=value.name + WEIGHT_SUFFIX, shape=ir.Shape(list(value.shape)[::-1]), type=value.type)
            folded.const_value = _lazy(tensors, source, folded, transpose=True)
            if folded.name not in graph.initializers:
                graph.register_initializer(folded)
            node.outputs[0].replace_all_uses_with(graph.initializers[folded.name])
            graph.remove(node, safe=True)
        if list(value.uses()):
            value.const_value = _lazy(tensors, source, value, transpose=False)
            graph.register_initializer(value)


def _placeholder(tensor) -> bool:
    """A parameter's stand-in (empty_parameters: every stride 0) still in the graph."""
    raw = getattr(tensor, "raw", None)
    return hasattr(raw, "stride") and raw.numel() > 1 and all(stride == 0 for stride in raw.stride())


def _is_plain_transpose(node) -> bool:
    perm = node.attributes.get("perm")
    return node.op_type == "Transpose" and node.domain == "" and perm is not None and list(perm.as_ints()) == [1, 0]


def _lazy(tensors: CheckpointTensors, source: str, value, transpose: bool):
    import onnx_ir as ir

    return ir.LazyTensor(lambda: ir.Tensor(tensors.read(source, transpose)), dtype=ir.DataType.FLOAT,
                         shape=value.shape, name=value.name)


def save(model, path: Path) -> None:
    """Write the graph with every weight in `<name>.data` beside it; the lazy tensors are read (and
    let go) one at a time as they are written."""
    import onnx_ir as ir

    ir.save(model, path, external_data=path.name + ".data", max_workers=1)
