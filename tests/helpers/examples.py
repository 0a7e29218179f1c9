"""The examples' own scripts (examples/*/NAME.py) as modules: their data, voices and scoring."""

import sys

from helpers.paths import REPO


def script_module(name: str):
    """An example's script, examples/*/NAME.py, as a module (every example's folder on the path, as
    the scripts put the ones they use)."""
    import importlib.util

    (path,) = (REPO / "examples").glob(f"*/{name}.py")
    for folder in sorted((REPO / "examples").iterdir()):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # registered first, as an import would: a dataclass looks its module up
    spec.loader.exec_module(module)
    return module



def asr_trainer():
    """examples/asr-digits/make_asr_digits.py: its voice lists and sentence generator define the speech
    examples' held-out set, and its word error rate scores them."""
    return script_module("make_asr_digits")
