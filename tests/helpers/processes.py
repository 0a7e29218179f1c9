"""What a fresh interpreter loads."""

import ast
import subprocess
import sys


def modules_loaded_by(snippet: str, watched: tuple[str, ...]) -> list[str]:
    """Run `snippet` in a fresh interpreter; the watched modules it loaded. A watched name matches a
    top-level package ("torch") or a dotted prefix ("nimbuild.targets")."""
    probe = (f"{snippet}\nimport sys\n"
             f"print(sorted({{w for w in {watched!r} for m in sys.modules if m == w or m.startswith(w + '.')}}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.strip().splitlines()[-1])
