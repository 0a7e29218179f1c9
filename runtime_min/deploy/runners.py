"""How a core network runs inside a Triton Python model: one `run(output_names, feeds)` call,
whatever runs it. This file is copied into every Python model directory that needs it, so a
repository carries the code it was written with.

- `onnxruntime`: the graph through an onnxruntime session (the CUDA provider when onnxruntime-gpu
  sees a GPU). The generic profiles' runner.
- `tensorrt_rtx`, `tensorrt`: an engine through the TensorRT-RTX or TensorRT runtime (their
  Python APIs agree), on the GPU of the model instance; device memory and copies through NVIDIA's
  cuda-python (`cuda.bindings.runtime`). Inputs and outputs keep the engine's own dtypes; shapes
  are set per call within its optimisation profile; an output whose shape depends on the data
  (a spectrogram generator's frames) gets its memory through TensorRT's output allocator. (A datacenter engine runs this way only where
  the Triton in use lacks its native TensorRT backend.)
- `triton:<model>`: the core runs as its own Triton model (native TensorRT or onnxruntime backend)
  and is called through the Python backend's BLS API (a streaming model that keeps state per
  sequence cannot sit in an ensemble).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def open_runner(kind: str, path: Path, device_id: int = 0):
    if kind == "onnxruntime":
        return OnnxRunner(path)
    if kind in ("tensorrt_rtx", "tensorrt"):
        return EngineRunner(kind, path, device_id)
    if kind.startswith("triton:"):
        return TritonRunner(kind.split(":", 1)[1])
    raise ValueError(f"unknown core runner {kind!r}")


def session_options(threads: int | None = None):
    """onnxruntime's options for every session runtime_min opens inside Triton: `threads` intra-op
    threads, else NIMBUILD_ORT_THREADS (0, the default: one per core), and no spin-waiting unless
    NIMBUILD_ORT_SPIN=1. A spinning thread keeps its core busy between operators for a while after
    the work ends; here the same cores run Triton, the API's gRPC and HTTP front ends and often the
    clients, which it starves. Measured with `python bench/run.py peer_nmt` (2 cores, runs each
    way side by side): TranslateText from 8 clients 378-426 translations/s spinning, 696-776 not."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("NIMBUILD_ORT_THREADS", "0")) if threads is None else threads
    options.log_severity_level = 3
    spin = "1" if os.environ.get("NIMBUILD_ORT_SPIN") == "1" else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return options


class OnnxRunner:
    def __init__(self, path: Path):
        import onnxruntime as ort

        options = session_options()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(path), options, providers=providers)

    def run(self, outputs, feeds):
        return self.session.run(outputs, feeds)


class EngineRunner:
    """Synchronous enqueue on one stream per instance; buffers are reallocated when a call needs more."""

    def __init__(self, module: str, path: Path, device_id: int):
        import importlib

        from cuda.bindings import runtime as cudart

        trt = importlib.import_module(module)
        self.trt, self.cudart = trt, cudart
        _check(cudart.cudaSetDevice(device_id))
        self.logger = trt.Logger(trt.Logger.ERROR)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{path}: {module} could not deserialise the engine (built for another GPU or version?)")
        self.context = self.engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                _check(self.cudart.cudaFree(pointer))
            pointer, size = _check(self.cudart.cudaMalloc(max(nbytes, 1))), max(nbytes, 1)
            self.buffers[name] = (pointer, size)
        return pointer

    def run(self, outputs, feeds):
        trt, cudart = self.trt, self.cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.inputs:
            array = np.ascontiguousarray(feeds[name], dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            self.context.set_input_shape(name, array.shape)
            pointer = self._buffer(name, array.nbytes)
            _check(cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, h2d, self.stream))
            self.context.set_tensor_address(name, pointer)
        results, later = {}, []
        for name in self.names:
            if name in self.inputs:
                continue
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):  # known only after the run (a TTS mel's frames follow its durations)
                self.context.set_output_allocator(name, self._allocator())
                later.append(name)
                continue
            results[name] = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            self.context.set_tensor_address(name, self._buffer(name, results[name].nbytes))
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("the engine failed to run")
        if later:
            _check(cudart.cudaStreamSynchronize(self.stream))
            for name in later:
                dtype = trt.nptype(self.engine.get_tensor_dtype(name))
                results[name] = np.empty(self.allocator.shapes[name], dtype=dtype)
        for name in outputs:
            array = results[name]
            _check(cudart.cudaMemcpyAsync(array.ctypes.data, self.buffers[name][0], array.nbytes, d2h, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return [results[name] for name in outputs]

    def _allocator(self):
        """One output allocator per runner: TensorRT asks it for memory once the output's size is
        known, and tells it the shape; the memory is the runner's own reusable buffer."""
        if getattr(self, "allocator", None) is None:
            runner = self

            class Allocator(self.trt.IOutputAllocator):
                def __init__(self):
                    runner.trt.IOutputAllocator.__init__(self)
                    self.shapes = {}

                def reallocate_output(self, tensor_name, memory, size, alignment):
                    return runner._buffer(tensor_name, size)

                def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
                    return runner._buffer(tensor_name, size)

                def notify_shape(self, tensor_name, shape):
                    self.shapes[tensor_name] = tuple(shape)

            self.allocator = Allocator()
        return self.allocator


class TritonRunner:
    """The core as another model of the same Triton, called through BLS."""

    def __init__(self, model: str):
        self.model = model

    def run(self, outputs, feeds):
        import triton_python_backend_utils as pb_utils

        request = pb_utils.InferenceRequest(model_name=self.model, requested_output_names=list(outputs),
                                            inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in feeds.items()])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.model}: {response.error().message()}")
        return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]


def _check(result):
    """cuda-python returns (error, value...) tuples; raise on an error, return the value."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise RuntimeError(f"CUDA error {int(error)} ({error})")
    return values[0] if len(values) == 1 else (tuple(values) or None)
