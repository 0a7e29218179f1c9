"""The installed commands, run as a user runs them."""

import os
import subprocess

from helpers.paths import VENV_BIN


def run_installed(*args, env=None, exe="nim_list_model_profiles"):
    return subprocess.run([str(VENV_BIN / exe), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
