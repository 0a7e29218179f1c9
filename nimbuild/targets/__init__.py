"""Stage 4 of a compile: the builders of each kind of target, one module each.

generic.py (ONNX profiles for onnxruntime, and RMIR archives), tensorrt.py, tensorrt_rtx.py and
tensorrt_llm.py (engines), trt_common.py (what the TensorRT builders share) and rmir.py (RMIR
archives: written at build time, turned into an engine on the target machine). The compile that
drives them is nimbuild.compile. This package's own import loads nothing, so an RMIR deploy on a
target machine loads only the builder it uses.
"""
