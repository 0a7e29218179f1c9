"""Every environment variable the runtime reads, under NIM's names, checked once at start: a bad
value is one line before anything starts (docs/design.md §11, the container contract).

    NIM_HTTP_API_PORT / NIM_SERVER_PORT   HTTP port (8000); NIM's Helm chart and the NIM Operator set both
    NIM_HTTP_API_HOST                     HTTP address (0.0.0.0: reachable through a Kubernetes Service)
    NIM_GRPC_API_PORT                     gRPC port of the speech tasks (50051)
    NIM_GRPC_API_HOST                     gRPC address (default: the HTTP address)
    NIM_LOG_LEVEL                         DEFAULT, TRACE, DEBUG, INFO, WARNING, ERROR, CRITICAL
    NIM_JSONL_LOGGING                     1: one JSON object per log line (what the NIM Operator sets)
    NIM_WORKSPACE                         where a start writes (Triton's repository, its log, its copy
                                          of the bundled server); default: a folder under $TMPDIR, so
                                          NIM_CACHE_PATH may be mounted read-only
    NIM_PEFT_SOURCE                       a directory of LoRA adapters (one PEFT folder each), served
                                          beside the base model by LoRA profiles (feat_lora)
    NIM_PEFT_REFRESH_INTERVAL             seconds between looks for adapters added or removed there;
                                          unset: looked at once, at start

Triton itself listens on loopback on free ports whatever is set: the NIM Operator's
NIM_TRITON_GRPC_PORT / NIM_TRITON_METRICS_PORT name ports of NIMs that expose Triton, and runtime_min
serves Triton's metrics through /v1/metrics instead.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from nimbuild.errors import NimbuildError

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 50051
ALL_ADDRESSES = "0.0.0.0"
# NIM's levels; TRACE and DEFAULT have no Python twin
LOG_LEVELS = {"DEFAULT": logging.INFO, "TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO,
              "WARNING": logging.WARNING, "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}


@dataclass(frozen=True)
class Settings:
    http_host: str
    http_port: int
    grpc_host: str
    grpc_port: int
    log_level: int
    jsonl: bool
    work_root: Path


def _port(name: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise NimbuildError(f"{name}={value!r}: expected a port number (1-65535)")
    return int(value)


def _first(env: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """(name, value) of the first variable set to something."""
    return next(((n, env[n]) for n in names if env.get(n)), None)


def from_env(env: Mapping[str, str] | None = None, host: str | None = None, port: int | None = None) -> Settings:
    """`host`/`port`: the command line's, which win over the environment."""
    env = os.environ if env is None else env
    http_host = host or env.get("NIM_HTTP_API_HOST") or ALL_ADDRESSES
    if port is None:
        named = _first(env, "NIM_HTTP_API_PORT", "NIM_SERVER_PORT")
        port = _port(*named) if named else DEFAULT_HTTP_PORT
    grpc = _first(env, "NIM_GRPC_API_PORT")
    level_name = (env.get("NIM_LOG_LEVEL") or "DEFAULT").upper()
    if level_name not in LOG_LEVELS:
        raise NimbuildError(f"NIM_LOG_LEVEL={env['NIM_LOG_LEVEL']!r}: expected one of {', '.join(LOG_LEVELS)}")
    jsonl = env.get("NIM_JSONL_LOGGING", "0")
    if jsonl not in ("0", "1", ""):
        raise NimbuildError(f"NIM_JSONL_LOGGING={jsonl!r}: expected 1 (JSON lines) or 0")
    peft(env)  # checked here, so a bad value is one line before anything starts
    return Settings(http_host=http_host, http_port=port, grpc_host=env.get("NIM_GRPC_API_HOST") or http_host,
                    grpc_port=_port(*grpc) if grpc else DEFAULT_GRPC_PORT, log_level=LOG_LEVELS[level_name],
                    jsonl=jsonl == "1", work_root=work_root(env))


def peft(env: Mapping[str, str] | None = None) -> tuple[Path | None, float | None]:
    """NIM_PEFT_SOURCE and NIM_PEFT_REFRESH_INTERVAL: (the adapters' directory, seconds between looks)."""
    env = os.environ if env is None else env
    source = Path(env["NIM_PEFT_SOURCE"]) if env.get("NIM_PEFT_SOURCE", "").strip() else None
    interval = env.get("NIM_PEFT_REFRESH_INTERVAL", "").strip()
    if interval:
        try:
            seconds = float(interval)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= 86400:
            raise NimbuildError(f"NIM_PEFT_REFRESH_INTERVAL={interval!r}: expected seconds (a number above 0, "
                                "at most a day)")
        return source, seconds
    return source, None


def work_root(env: Mapping[str, str] | None = None) -> Path:
    """$NIM_WORKSPACE, else runtime_min-<uid> under the temporary directory: one per user, so that
    processes of one user share the copy of the bundled Triton, and no start writes into the cache."""
    env = os.environ if env is None else env
    return Path(env.get("NIM_WORKSPACE") or Path(tempfile.gettempdir()) / f"runtime_min-{os.getuid()}")


class JsonLines(logging.Formatter):
    """One JSON object per record, the shape log collectors parse (NIM_JSONL_LOGGING=1)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    """The root logger for the runtime and every library under it (uvicorn logs through it too)."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if settings.jsonl else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    logging.captureWarnings(True)  # a library's warnings.warn in the same shape, not a bare stderr line
    logging.getLogger("httpx").setLevel(max(settings.log_level, logging.WARNING))  # a line per health probe is noise


def report_error(text: str) -> None:
    """The one line a failed command ends with: a JSON record when the logs are JSON lines (a log
    collector parses every line), else `error: ...`."""
    if any(isinstance(h.formatter, JsonLines) for h in logging.getLogger().handlers):
        logging.getLogger("runtime_min").error("error: %s", text)
    else:
        import sys

        print(f"error: {text}", file=sys.stderr)
