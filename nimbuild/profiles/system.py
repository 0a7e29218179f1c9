"""The system description selection works from: the GPUs (through NVML) and the installed runtimes.

No driver, no NVML library or no GPU means a CPU-only system, never an error. A JSON file named by
NIMBUILD_SYSTEM replaces detection, so selection for any machine can be tested anywhere:

    {"gpus": [{"index": 0, "name": "NVIDIA L40S", "device_id": "26b9:10de",
               "compute_capability": "8.9", "memory_mib": 46068}],
     "runtimes": {"tensorrt": "10.13.3", "tensorrt_rtx": "1.7.1"}}

A GPU may also be given by product alone (`{"product": "L40S"}`); the catalogue fills in the rest.
`runtimes` is optional in a file: when it is absent, engine runtime versions are not checked.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from nimbuild.errors import SystemDescriptionError
from nimbuild.profiles import gpus as catalogue

SYSTEM_ENV = "NIMBUILD_SYSTEM"
# Distributions whose version is the runtime version an engine was built with.
_RUNTIME_DISTRIBUTIONS = {
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-lean-cu13", "tensorrt-lean-cu12"),
    "tensorrt_rtx": ("tensorrt-rtx", "tensorrt-rtx-cu12", "tensorrt-rtx-cu13", "tensorrt-rtx-cu12-bindings",
                     "tensorrt-rtx-cu13-bindings"),
    "tensorrt_llm": ("tensorrt-llm", "tensorrt_llm"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
}


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    device_id: str  # "26b9:10de", NIM's gpu_device form
    compute_capability: str  # "8.9"
    memory_mib: int
    memory_free_mib: int | None = None
    utilization_percent: int | None = None

    @property
    def product(self) -> str | None:
        model = catalogue.by_device_id(self.device_id)
        return model.product if model else None

    @property
    def product_label(self) -> str:
        """The product name as NVIDIA's GPU feature discovery labels nodes (nvidia.com/gpu.product):
        NVML's name with spaces as dashes, e.g. NVIDIA-A10G. NIM's product_name_regex matches this."""
        return "-".join(self.name.split())

    @property
    def cc(self) -> tuple[int, int]:
        return cc_tuple(self.compute_capability)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class System:
    gpus: tuple[GPU, ...] = ()
    # runtime name -> installed version; None when unknown (a simulated system that does not say)
    runtimes: Mapping[str, str] | None = None
    driver: str | None = None
    source: str = "nvml"  # nvml | file | none
    note: str | None = None  # why detection found no GPU, when it did not

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"gpus": [g.to_dict() for g in self.gpus]}
        if self.runtimes is not None:
            out["runtimes"] = dict(self.runtimes)
        if self.driver:
            out["driver"] = self.driver
        out["source"] = self.source
        if self.note:
            out["note"] = self.note
        return out


@lru_cache(maxsize=4096)  # called per profile with the same few capabilities
def cc_tuple(value: str) -> tuple[int, int]:
    major, _, minor = str(value).strip().partition(".")
    return int(major), int(minor or 0)


def detect_system(env: Mapping[str, str] | None = None) -> System:
    env = os.environ if env is None else env
    if env.get(SYSTEM_ENV):
        return load_system_file(env[SYSTEM_ENV])
    return _detect_nvml()


def load_system_file(path: str | Path) -> System:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemDescriptionError(f"{SYSTEM_ENV}={path}: file not found") from None
    except (OSError, ValueError) as e:
        raise SystemDescriptionError(f"{SYSTEM_ENV}={path}: not valid JSON: {e}") from None
    try:
        return system_from_dict(data)
    except (TypeError, ValueError, KeyError) as e:
        raise SystemDescriptionError(f"{SYSTEM_ENV}={path}: {e}") from None


def system_from_dict(data: Any) -> System:
    """Read the listing's `system` object (or the whole listing, which holds one)."""
    if isinstance(data, dict) and isinstance(data.get("system"), dict):
        data = data["system"]
    if not isinstance(data, dict) or not isinstance(data.get("gpus", []), list):
        raise ValueError('expected an object like {"gpus": [{"name": ..., "compute_capability": ...}]}')
    gpus = tuple(_gpu_from_dict(g, i) for i, g in enumerate(data.get("gpus", [])))
    runtimes = data.get("runtimes")
    if runtimes is not None and not (isinstance(runtimes, dict) and all(isinstance(v, str) for v in runtimes.values())):
        raise ValueError('"runtimes" must map runtime names to version strings')
    for key in ("driver", "source", "note"):  # what `nimbuild system --format json` writes beside them
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ValueError(f"{key} must be a string, got {type(data[key]).__name__}")
    return System(gpus=gpus, runtimes=runtimes, driver=data.get("driver"), source="file")


def _gpu_from_dict(entry: Any, position: int) -> GPU:
    where = f"gpus[{position}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object")
    _check_types(entry, where)
    model = None
    if entry.get("device_id"):
        model = catalogue.by_device_id(str(entry["device_id"]))
    if model is None and (entry.get("product") or entry.get("name")):
        model = catalogue.by_product(str(entry.get("product") or entry.get("name")))
    if model is None and not {"name", "compute_capability", "memory_mib"} <= set(entry):
        raise ValueError(f"{where}: unknown GPU; give name, compute_capability and memory_mib "
                         f"(or a product the catalogue knows, e.g. \"L40S\")")
    cc = str(entry.get("compute_capability") or model.compute_capability)
    try:
        cc_tuple(cc)
        memory = int(entry.get("memory_mib") or model.memory_mib)
        index = int(entry.get("index", position))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: compute_capability must look like \"8.9\" and memory_mib be an integer") from None
    device_id = str(entry.get("device_id") or (model.device_id if model else "0000:10de")).lower()
    if len(device_id.split(":")) != 2:
        raise ValueError(f"{where}: device_id must look like \"26b9:10de\"")
    optional = {}
    for key in ("memory_free_mib", "utilization_percent"):  # the listing compares them: whole numbers or absent
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{where}: {key} must be a whole number, got {value!r}")
        optional[key] = value
    return GPU(
        index=index, name=str(entry.get("name") or model.name), device_id=device_id, compute_capability=cc,
        memory_mib=memory, **optional,
    )


def _check_types(entry: dict, where: str) -> None:
    """Each field the type it describes, before any is used: a word where MiB are expected, an
    object where a name is, or 1e400 (read as infinity) would fail later as an internal error."""
    for key in ("name", "product", "device_id"):
        if key in entry and not isinstance(entry[key], str):
            raise ValueError(f"{where}: {key} must be a string, got {type(entry[key]).__name__}")
    for key, most in (("memory_mib", 1 << 40), ("index", 1 << 16)):
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < most):
            raise ValueError(f"{where}: {key} must be a whole number from 0 to {most - 1}, got {value!r}")
    cc = entry.get("compute_capability")
    if cc is not None:
        try:
            major = cc_tuple(str(cc))[0] if isinstance(cc, (str, float, int)) and not isinstance(cc, bool) else None
        except (TypeError, ValueError):
            major = None
        if major is None or not 1 <= major < 100:
            raise ValueError(f"{where}: compute_capability must look like \"8.9\", got {cc!r}")


def runtime_version(runtime: str) -> str | None:
    """The installed version of an inference runtime ("tensorrt", "tensorrt_rtx", ...), read from
    package metadata: nothing is imported. (importlib.metadata itself costs 12 ms, lazily: a
    listing from a system file never reads it.)"""
    from importlib import metadata

    for dist in _RUNTIME_DISTRIBUTIONS[runtime]:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def installed_runtimes() -> dict[str, str]:
    """Versions of the inference runtimes installed here."""
    return {r: v for r in _RUNTIME_DISTRIBUTIONS if (v := runtime_version(r)) is not None}


def _detect_nvml() -> System:
    runtimes = installed_runtimes()
    try:
        import pynvml
    except ImportError:
        return System(runtimes=runtimes, source="none", note="nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return System(runtimes=runtimes, source="none", note=f"no NVIDIA driver ({e})")
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = tuple(_nvml_gpu(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount()))
    except pynvml.NVMLError as e:
        return System(runtimes=runtimes, source="none", note=f"NVML failed: {e}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    return System(gpus=gpus, runtimes=runtimes, driver=driver, source="nvml")


def _nvml_gpu(pynvml, index: int) -> GPU:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    pci = pynvml.nvmlDeviceGetPciInfo(handle)
    # pciDeviceId packs the device id in the high 16 bits and the vendor id in the low 16
    device_id = f"{(pci.pciDeviceId >> 16) & 0xFFFF:04x}:{pci.pciDeviceId & 0xFFFF:04x}"
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        utilization = int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except pynvml.NVMLError:
        utilization = None
    return GPU(
        index=index, name=_text(pynvml.nvmlDeviceGetName(handle)), device_id=device_id,
        compute_capability=f"{major}.{minor}", memory_mib=int(memory.total // (1 << 20)),
        memory_free_mib=int(memory.free // (1 << 20)), utilization_percent=utilization,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
