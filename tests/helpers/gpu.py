"""The GPU this machine has, and a skip with the reason where a test needs one (or a GPU library) it lacks."""

import importlib.util

import pytest


def local_gpu():
    from nimbuild.profiles.system import detect_system

    gpus = detect_system({}).gpus
    return gpus[0] if gpus else None



def needs(*modules: str):
    """This machine's GPU, or a skip naming what is missing (a GPU, or one of `modules`)."""
    gpu = local_gpu()
    if gpu is None:
        pytest.skip("needs an NVIDIA GPU")
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    return gpu
