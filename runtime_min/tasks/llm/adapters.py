"""The LoRA adapters a LoRA profile serves, as the API process sees them: NIM_PEFT_SOURCE looked at
at start and every NIM_PEFT_REFRESH_INTERVAL seconds, each adapter checked against the profile
(nimbuild.serving.lora.read_adapter) once per change of its files. A broken adapter is one line in
the log and a 404 for its name; the others keep serving. The Triton model loads an adapter's
weights itself, by name, when a request asks for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from nimbuild.serving.lora import AdapterError, adapter_folders, read_adapter

log = logging.getLogger("runtime_min")


class Adapters:
    def __init__(self, spec: dict | None, source: Path | None, base: str):
        self.spec, self.source, self.base = spec, source, base
        self.valid: dict[str, float] = {}  # name -> when it was first seen (OpenAI's `created`)
        self._checked: dict[str, tuple] = {}  # name -> the files' (mtime, size) when last read, and the verdict

    def refresh(self) -> None:
        """Look at the directory again; only adapters whose files changed are read again."""
        if self.spec is None or self.source is None:
            return
        try:
            folders = adapter_folders(self.source)
        except OSError as e:
            log.warning("NIM_PEFT_SOURCE %s cannot be read: %s", self.source, e)
            return
        for name in set(self._checked) - set(folders):
            self._checked.pop(name)
            self.valid.pop(name, None)
        for name, folder in folders.items():
            stamp = _stamp(folder)
            if self._checked.get(name, (None,))[0] == stamp:
                continue
            try:
                read_adapter(folder, self.spec)
                self.valid.setdefault(name, time.time())
                self._checked[name] = (stamp, True)
            except AdapterError as e:
                self.valid.pop(name, None)
                self._checked[name] = (stamp, False)
                log.warning("LoRA adapter %r refused: %s", name, e)

    async def keep_refreshing(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.refresh)

    def entries(self) -> list[dict]:
        """/v1/models' entries for the adapters, as vLLM lists them (parent: the base model)."""
        return [{"id": name, "object": "model", "created": int(created), "owned_by": "nimbuild", "root": name,
                 "parent": self.base} for name, created in sorted(self.valid.items())]


def _stamp(folder: Path) -> tuple:
    """The adapter's files as they are now: a change of either means reading it again."""
    out = []
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        try:
            stat = (folder / name).stat()
            out.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            out.append(None)
    return tuple(out)
