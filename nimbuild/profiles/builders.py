"""Which builder turns an RMIR into an engine on a target GPU (docs/design.md §6), decided without
importing any builder, so selection can say before anything is downloaded whether an RMIR can
become an engine here.

As Riva's riva-deploy builds on the target: datacenter TensorRT on the target GPU where it is
installed (it builds for every capability, and is the only builder for Hopper and Blackwell
datacenter GPUs, 9.0 and 10.0), else TensorRT-RTX where its builder supports the capability (it
builds ahead of time, without that GPU).
"""

from __future__ import annotations

from typing import Mapping

# TensorRT-RTX 1.7's ComputeCapability enum (SM75 ... SM121); a test checks it against the installed one.
TENSORRT_RTX_TARGETS = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")


def rmir_builder(cc: str, runtimes: Mapping[str, str] | None, on_target_gpu: bool = True) -> tuple[str | None, str | None]:
    """(builder, None) when an engine for compute capability `cc` can be built; (None, why) when not.
    `runtimes` None (a simulated system that does not say) is taken as able to build.
    `on_target_gpu`: this machine has a GPU of that capability (datacenter TensorRT cannot cross-build)."""
    rtx_can = cc in TENSORRT_RTX_TARGETS
    if runtimes is None:
        return ("tensorrt_rtx" if rtx_can else "tensorrt"), None
    if "tensorrt" in runtimes and on_target_gpu:
        return "tensorrt", None
    if rtx_can and "tensorrt_rtx" in runtimes:
        return "tensorrt_rtx", None
    if rtx_can:
        return None, (f"building the engine for compute capability {cc} at first start needs tensorrt_rtx or, "
                      "on that GPU, tensorrt; neither is installed")
    return None, (f"building the engine for compute capability {cc} at first start needs TensorRT on that GPU, "
                  f"which is not installed (TensorRT-RTX builds only for {', '.join(TENSORRT_RTX_TARGETS)})")
