"""Progress reporting: a spinner on a terminal, plain timestamped lines otherwise, nothing when quiet.

All progress goes to stderr so that stdout stays clean for `--format json`.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator


class Reporter:
    def __init__(self, quiet: bool = False, verbose: bool = False, stream=None):
        self.quiet = quiet
        self.verbose = verbose
        self.stream = stream or sys.stderr
        self._console = None
        if not quiet and getattr(self.stream, "isatty", lambda: False)():
            from rich.console import Console  # only on a terminal: rich costs ~50 ms to import

            self._console = Console(file=self.stream)

    def info(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def debug(self, message: str) -> None:
        if self.verbose and not self.quiet:
            print(message, file=self.stream, flush=True)

    @contextmanager
    def step(self, message: str) -> Iterator[None]:
        """Show `message` while the block runs, then how long it took."""
        start = time.perf_counter()
        if self.quiet:
            yield
            return
        if self._console is not None:
            with self._console.status(message + " ..."):
                yield
            self._console.print(f"[green]done[/green] {message} ({time.perf_counter() - start:.1f}s)")
        else:
            self.info(f"... {message}")
            yield
            self.info(f"done {message} ({time.perf_counter() - start:.1f}s)")
