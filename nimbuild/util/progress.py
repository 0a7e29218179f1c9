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
        # (step, seconds, peak resident MiB or None) per finished step, in order: compile-record.json's
        # steps (nimbuild.util.memory), kept quiet or not
        self.stages: list[tuple[str, float, float | None]] = []
        self._peaks = None
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
        """Show `message` while the block runs, then how long it took (and, verbose, its peak memory)."""
        if self._peaks is None:
            from nimbuild.util.memory import StagePeaks

            self._peaks = StagePeaks()
        start = time.perf_counter()
        self._peaks.start()
        try:
            if self.quiet:
                yield
            elif self._console is not None:
                with self._console.status(message + " ..."):
                    yield
            else:
                self.info(f"... {message}")
                yield
        finally:
            peak = self._peaks.stop()
        seconds = time.perf_counter() - start
        self.stages.append((message, seconds, peak))
        if self.quiet:
            return
        memory = f", peak {peak / 1024:.2f} GiB" if self.verbose and peak is not None else ""
        if self._console is not None:
            self._console.print(f"[green]done[/green] {message} ({seconds:.1f}s{memory})")
        else:
            self.info(f"done {message} ({seconds:.1f}s{memory})")


class TransferProgress:
    """Bytes moved across parallel transfers: one bar on a terminal, a line per file otherwise."""

    def __init__(self, reporter: Reporter, total_bytes: int, label: str):
        import threading

        self.reporter = reporter
        self._lock = threading.Lock()
        self._progress = None
        if reporter._console is not None and total_bytes:
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            self._progress = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), console=reporter._console, transient=True)
            self._task = self._progress.add_task(label, total=total_bytes)
            self._progress.start()

    def advance(self, count: int) -> None:
        if self._progress is not None:
            with self._lock:
                self._progress.advance(self._task, count)

    def file_done(self, message: str) -> None:
        if self._progress is None:
            self.reporter.info(message)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
