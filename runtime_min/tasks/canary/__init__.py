"""Canary profiles in Triton, served as Whisper's are (runtime_min/tasks/whisper: one Python model
that encodes the clips the dynamic batcher gathered and decodes them greedily together, and a
sequence-batched `<model>-stream` that re-decodes each stream as it grows); the model code picks
nimbuild/serving/canary_asr.py by the profile's `runtime.kind`. The HTTP and Riva front ends are
speech recognition's, which send the language (the source language; Canary takes no detection: none
given is the model's default) and the task (translate: into English)."""

from runtime_min.tasks.whisper import add_routes, add_servicers, models, refuses

__all__ = ["add_routes", "add_servicers", "models", "refuses"]
