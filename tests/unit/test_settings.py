"""NIM's environment as runtime_min reads it (runtime_min/settings.py), and the start-up checks that
need no server: ports and addresses, log level and JSON lines, the work root, /dev/shm."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nimbuild.errors import NimbuildError
from runtime_min.settings import JsonLines, from_env


def test_ports_follow_nims_variables_and_every_address_is_all_addresses_by_default(tmp_path):
    env = {"NIM_WORKSPACE": str(tmp_path)}
    plain = from_env(env)
    assert (plain.http_host, plain.http_port, plain.grpc_host, plain.grpc_port) == ("0.0.0.0", 8000, "0.0.0.0", 50051)
    # the NIM Operator and NIM's Helm chart set NIM_SERVER_PORT; NIM_HTTP_API_PORT wins where both are set
    assert from_env({**env, "NIM_SERVER_PORT": "9000"}).http_port == 9000
    assert from_env({**env, "NIM_SERVER_PORT": "9000", "NIM_HTTP_API_PORT": "9100"}).http_port == 9100
    assert from_env({**env, "NIM_HTTP_API_PORT": "9100"}, port=9200).http_port == 9200  # the command line wins
    # gRPC follows the HTTP address unless told otherwise
    assert from_env(env, host="127.0.0.1").grpc_host == "127.0.0.1"
    assert from_env({**env, "NIM_GRPC_API_HOST": "::"}, host="127.0.0.1").grpc_host == "::"
    assert from_env(env).work_root == tmp_path


@pytest.mark.parametrize("env, message", [
    ({"NIM_HTTP_API_PORT": "eighty"}, "NIM_HTTP_API_PORT='eighty': expected a port number"),
    ({"NIM_SERVER_PORT": "70000"}, "NIM_SERVER_PORT='70000': expected a port number"),
    ({"NIM_GRPC_API_PORT": "0"}, "NIM_GRPC_API_PORT='0': expected a port number"),
    ({"NIM_LOG_LEVEL": "LOUD"}, "NIM_LOG_LEVEL='LOUD': expected one of DEFAULT, TRACE, DEBUG"),
    ({"NIM_JSONL_LOGGING": "yes"}, "NIM_JSONL_LOGGING='yes': expected 1"),
])
def test_a_bad_value_is_one_line(env, message):
    with pytest.raises(NimbuildError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_env(env)


def test_nim_log_levels():
    assert from_env({"NIM_LOG_LEVEL": "trace"}).log_level == logging.DEBUG
    assert from_env({"NIM_LOG_LEVEL": "DEFAULT"}).log_level == logging.INFO
    assert from_env({"NIM_LOG_LEVEL": "ERROR"}).log_level == logging.ERROR


def test_json_lines_are_one_object_per_record_with_the_exception():
    formatter = JsonLines()
    try:
        raise ValueError("inner")
    except ValueError:
        record = logging.LogRecord("runtime_min", logging.ERROR, __file__, 1, "failed: %s", ("x",), sys.exc_info())
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == ("ERROR", "runtime_min", "failed: x")
    assert "ValueError: inner" in entry["exc_info"] and entry["time"].endswith("Z")


def test_a_bad_environment_ends_serve_in_one_line_and_in_json_when_asked(tmp_path):
    def serve(**env):
        return subprocess.run([sys.executable, "-m", "runtime_min", "serve", "-m", str(tmp_path / "none.yaml")],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "NIM_CACHE_PATH": str(tmp_path / "cache"), **env})

    plain = serve(NIM_GRPC_API_PORT="x")
    assert plain.returncode == 2 and plain.stderr == "error: NIM_GRPC_API_PORT='x': expected a port number (1-65535)\n"
    logged = serve(NIM_JSONL_LOGGING="1")  # the manifest is missing: the last line, a JSON record too
    assert logged.returncode == 2
    records = [json.loads(line) for line in logged.stderr.splitlines()]
    assert records[-1]["level"] == "ERROR" and "none.yaml: manifest not found" in records[-1]["message"]


def test_a_work_root_of_another_user_is_refused(tmp_path):
    from runtime_min.service import ensure_work_root

    assert ensure_work_root(tmp_path / "mine") == tmp_path / "mine"
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 1000, 1000)
    with pytest.raises(NimbuildError, match="belongs to user 1000"):
        ensure_work_root(theirs)


def test_too_little_shared_memory_is_one_line_before_triton_starts(tmp_path, monkeypatch):
    from runtime_min import triton

    store = tmp_path / "store"
    for name in ("a", "b"):
        (store / name).mkdir(parents=True)
        (store / name / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "python"\ninstance_group {{ count: 2 kind: KIND_CPU }}\n')
    (store / "plan").mkdir()
    (store / "plan" / "config.pbtxt").write_text('name: "plan"\nplatform: "tensorrt_plan"\n')

    class Small:
        f_bavail, f_frsize = 15, 1 << 20  # 15 MiB free; 4 Python instances need 16

    monkeypatch.setattr(os, "statvfs", lambda path: Small)
    with pytest.raises(NimbuildError, match=r"has 15 MiB free; the profile's Triton Python models need 16 MiB"):
        triton.check_shared_memory(store, Path("/dev/shm"))
    Small.f_bavail = 16
    triton.check_shared_memory(store, Path("/dev/shm"))
