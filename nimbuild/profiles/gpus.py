"""A catalogue of common NVIDIA datacenter and workstation GPUs.

Keyed by PCI device id (vendor 10de), as NIM's `gpu_device` tag is. It lets a listing name a GPU
by product, lets `gpu`/`gpu_device` tags match, and lets a simulated system be written with just a
product name. Memory is what NVML reports as total, in MiB (a little under the marketing figure).
"""

from __future__ import annotations

from dataclasses import dataclass

NVIDIA_VENDOR = "10de"


@dataclass(frozen=True)
class GpuModel:
    device_id: str  # "26b9:10de"
    product: str  # short name, as NIM's `gpu` tag uses it: "L40S"
    name: str  # as NVML reports it: "NVIDIA L40S"
    compute_capability: str
    memory_mib: int


def _m(device: str, product: str, name: str, cc: str, memory_mib: int) -> GpuModel:
    return GpuModel(f"{device}:{NVIDIA_VENDOR}", product, name, cc, memory_mib)


CATALOGUE: tuple[GpuModel, ...] = (
    _m("1eb8", "T4", "Tesla T4", "7.5", 15360),
    _m("2236", "A10", "NVIDIA A10", "8.6", 23028),
    _m("2237", "A10G", "NVIDIA A10G", "8.6", 23028),
    _m("20b7", "A30", "NVIDIA A30", "8.0", 24576),
    _m("2235", "A40", "NVIDIA A40", "8.6", 46068),
    _m("20b0", "A100 SXM 40GB", "NVIDIA A100-SXM4-40GB", "8.0", 40960),
    _m("20f1", "A100 PCIe 40GB", "NVIDIA A100-PCIE-40GB", "8.0", 40960),
    _m("20b2", "A100 SXM 80GB", "NVIDIA A100-SXM4-80GB", "8.0", 81920),
    _m("20b5", "A100 PCIe 80GB", "NVIDIA A100 80GB PCIe", "8.0", 81920),
    _m("27b8", "L4", "NVIDIA L4", "8.9", 23034),
    _m("26b5", "L40", "NVIDIA L40", "8.9", 46068),
    _m("26b9", "L40S", "NVIDIA L40S", "8.9", 46068),
    _m("2330", "H100 SXM", "NVIDIA H100 80GB HBM3", "9.0", 81559),
    _m("2331", "H100 PCIe", "NVIDIA H100 PCIe", "9.0", 81559),
    _m("2321", "H100 NVL", "NVIDIA H100 NVL", "9.0", 95830),
    _m("2342", "GH200", "NVIDIA GH200 480GB", "9.0", 97871),
    _m("2335", "H200", "NVIDIA H200", "9.0", 143771),
    _m("233b", "H200 NVL", "NVIDIA H200 NVL", "9.0", 143771),
    _m("2901", "B200", "NVIDIA B200", "10.0", 183359),
    _m("2941", "GB200", "NVIDIA GB200", "10.0", 189471),
    _m("2230", "RTX A6000", "NVIDIA RTX A6000", "8.6", 49140),
    _m("26b1", "RTX 6000 Ada", "NVIDIA RTX 6000 Ada Generation", "8.9", 49140),
    _m("2684", "RTX 4090", "NVIDIA GeForce RTX 4090", "8.9", 24564),
    _m("2685", "RTX 5090", "NVIDIA GeForce RTX 5090", "12.0", 32607),
    _m("2bb1", "RTX PRO 6000 Blackwell", "NVIDIA RTX PRO 6000 Blackwell Workstation Edition", "12.0", 97887),
    _m("2bb5", "RTX PRO 6000 Blackwell Server", "NVIDIA RTX PRO 6000 Blackwell Server Edition", "12.0", 97887),
)

_BY_DEVICE = {m.device_id: m for m in CATALOGUE}
_BY_PRODUCT = {m.product.lower(): m for m in CATALOGUE}


def by_device_id(device_id: str) -> GpuModel | None:
    return _BY_DEVICE.get(device_id.lower())


def by_product(product: str) -> GpuModel | None:
    """Look a GPU up by short product name ("L40S", "h100 sxm") or NVML name."""
    key = product.strip().lower()
    if key in _BY_PRODUCT:
        return _BY_PRODUCT[key]
    return next((m for m in CATALOGUE if m.name.lower() == key), None)


def name_matches(tag: str, gpu_name: str, product: str | None) -> bool:
    """Does a `gpu` tag ("H100", "L40S", "A100 SXM 80GB") name this GPU?

    Word-wise, so "L40" does not match an L40S and "H100" matches "NVIDIA H100 80GB HBM3".
    """
    wanted = _words(tag)
    have = _words(gpu_name) | _words(product or "")
    return bool(wanted) and wanted <= have


def _words(text: str) -> set[str]:
    return {w for w in text.lower().replace("-", " ").replace("_", " ").split() if w != "nvidia"}
