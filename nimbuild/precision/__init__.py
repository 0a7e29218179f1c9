"""Stage 3 of a compile: precision variants of the reference graph, each gated against it.

variants.py makes fp16/bf16/int8/fp8 graphs and runs their gates; quantize.py writes the explicit
Q/DQ (int8, fp8) that engine builders take. Both load onnx and onnxruntime lazily.
"""
