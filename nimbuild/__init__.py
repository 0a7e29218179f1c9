"""nimbuild: checkpoints to verified, tagged, deployable model profiles.

Importing this package stays cheap on purpose: heavy libraries (torch, transformers,
onnx, onnxruntime, TensorRT, NeMo) are imported inside the functions that need them.
"""

__version__ = "0.1.0"
