"""The core network of a profile as the deploy step hands it to a task: which file it is, and
how it runs in Triton (as its own model on a native backend, or inside the task's Python models
through a runner). Profile kinds make Cores (runtime_min/deploy/<kind>.py); tasks place them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runtime_min.deploy.config import Model, Tensor, dynamic_batching, instances, new_config

RUNNERS = Path(__file__).with_name("runners.py")
CORE_SUFFIX = "-core"


@dataclass
class Core:
    kind: str  # what runs it: onnxruntime | tensorrt | tensorrt_rtx | tensorrt_llm
    workspace: Path  # the directory holding the file (the profile's workspace, or a deployed RMIR's)
    file: str  # the graph, engine or engine directory, relative to workspace
    native: str | None = None  # a Triton backend that runs it as its own model: onnxruntime | tensorrt
    runner: str | None = None  # else the runner inside the task's Python models (runtime_min/deploy/runners.py)
    gpu: bool = False
    companions: list[str] = field(default_factory=list)  # e.g. model.onnx.data beside model.onnx
    python_modules: tuple[str, ...] = ()  # what the runner imports inside Triton's Python backend
    max_batch: int | None = None  # the engine's optimisation profile caps the batch

    @property
    def backends(self) -> set[str]:
        """Triton backends a repository with this core needs (every task has Python models)."""
        return {"python", self.native} if self.native else {"python"}

    def describe(self) -> str:
        how = f"Triton's {self.native} backend" if self.native else f"{self.runner} in a Python model"
        return f"{self.kind} ({how}{', GPU' if self.gpu else ''})"

    def batch(self, wanted: int) -> int:
        return max(1, min(wanted, self.max_batch)) if self.max_batch else max(1, wanted)

    def python_files(self) -> dict[str, Path]:
        """What a Python model that runs this core itself carries in its version directory."""
        files = {"runners.py": RUNNERS}
        if self.runner and not self.native:
            for rel in [self.file, *self.companions]:
                files[rel] = self.workspace / rel
        return files

    def python_runner(self, model_name: str) -> str:
        """The `runner` parameter of a Python model: in-process, or the native core model through BLS."""
        return f"triton:{model_name}{CORE_SUFFIX}" if self.native else self.runner

    def native_model(self, model_name: str, inputs: list[Tensor], outputs: list[Tensor], max_batch: int,
                     delay_us: int) -> Model:
        """`<model>-core` on the native backend, with the network's bindings as the config's I/O."""
        name = model_name + CORE_SUFFIX
        if self.native == "tensorrt":
            config = new_config(name, self.batch(max_batch), inputs, outputs, platform="tensorrt_plan")
            files = {"model.plan": self.workspace / self.file}
        elif self.native == "onnxruntime":
            config = new_config(name, self.batch(max_batch), inputs, outputs, backend="onnxruntime")
            files = {"model.onnx": self.workspace / self.file,
                     **{rel: self.workspace / rel for rel in self.companions}}
        else:
            raise ValueError(f"{self.kind}: no native Triton backend runs it")
        dynamic_batching(config, delay_us)
        instances(config, gpu=self.gpu, profiles=["0"] if self.native == "tensorrt" else None)
        return Model(config, files)
