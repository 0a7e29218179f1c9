"""Peak resident memory per stage of a compile (docs/design.md §17).

A stage's peak is read two ways and the larger kept: the process's high-water mark (VmHWM), exact
whenever the stage sets a new record for the process, and a sampler thread reading the resident
set (VmRSS) every 50 ms while any stage runs, for stages that peak below an earlier one. The
high-water mark is never reset (`/proc/self/clear_refs` would do it, but it also lowers the peak
`wait4` and `time -v` report for the whole process).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

SAMPLE_SECONDS = 0.05
STATUS = Path("/proc/self/status")


def status_mib(field: str) -> float | None:
    """A field of /proc/self/status (VmRSS, VmHWM) in MiB; None where there is no /proc."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class StagePeaks:
    """Open stages (nested allowed) and the largest resident set seen while each was open."""

    def __init__(self) -> None:
        self._open: list[list[float]] = []  # per open stage: [high-water mark at its start, sampled max]
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        rss = status_mib("VmRSS") or 0.0
        with self._lock:
            self._open.append([status_mib("VmHWM") or 0.0, rss])
        self._wake.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._sample, name="nimbuild-memory", daemon=True)
            self._thread.start()

    def stop(self) -> float | None:
        """The stage's peak in MiB (None where /proc is not readable)."""
        with self._lock:
            hwm_before, sampled = self._open.pop()
        hwm = status_mib("VmHWM")
        peak = None if hwm is None else max(sampled, status_mib("VmRSS") or 0.0, hwm if hwm > hwm_before else 0.0)
        with self._lock:
            for stage in self._open if peak is not None else ():  # an enclosing stage saw at least this much
                stage[1] = max(stage[1], peak)
            if not self._open:  # the sampler sleeps until the next stage (a long-lived process, runtime_min's pull)
                self._wake.clear()
        return peak

    def _sample(self) -> None:
        while True:
            self._wake.wait()  # only while a stage is open
            time.sleep(SAMPLE_SECONDS)
            rss = status_mib("VmRSS")
            if rss is None:
                return
            with self._lock:
                for stage in self._open:
                    stage[1] = max(stage[1], rss)
