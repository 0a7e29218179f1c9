"""Where things are: the repository, and the virtual environment's executables (the commands a user runs)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
