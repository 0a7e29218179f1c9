"""runtime_min end to end: the MiniLM example published, fetched, served through a real tritonserver,
and called with clients nobody here wrote (the openai SDK, tritonclient)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from helpers.runtime import SENTENCES, Runtime
from helpers.servers import free_port

MODEL = "minilm-embed"


@pytest.fixture(scope="module")
def published(minilm_compiled, tmp_path_factory):
    from nimbuild.registry import publish
    from nimbuild.util.progress import Reporter

    out, _ = minilm_compiled
    registry = tmp_path_factory.mktemp("runtime-registry") / "layout"
    publish(out, str(registry), Reporter(quiet=True))
    return out, registry


FP32 = {"NIM_MODEL_PROFILE": "onnxruntime-fp32-throughput"}  # on a CPU selection prefers int8; parity is fp32's


@pytest.fixture(scope="module")
def runtime(published, tmp_path_factory):
    out, registry = published
    served = Runtime(out / "profiles.yaml", tmp_path_factory.mktemp("runtime-cache"), registry=str(registry), env=FP32)
    served.wait_ready()
    yield served
    assert served.stop() == 0


def test_openai_sdk_embeddings_match_sentence_transformers(runtime, minilm_dir):
    import openai
    from sentence_transformers import SentenceTransformer

    client = openai.OpenAI(base_url=f"{runtime.url}/v1", api_key="not-needed")
    result = client.embeddings.create(model=MODEL, input=SENTENCES)  # the SDK asks for base64 by default
    served = np.array([d.embedding for d in result.data])
    as_floats = client.embeddings.create(model=MODEL, input=SENTENCES, encoding_format="float")
    assert np.allclose(served, np.array([d.embedding for d in as_floats.data]), atol=0)
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(SENTENCES)
    cosine = (served * expected).sum(1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() >= 0.9999, cosine
    assert result.usage.prompt_tokens == result.usage.total_tokens > len(SENTENCES)
    assert [d.index for d in result.data] == list(range(len(SENTENCES))) and result.model == MODEL
    single = client.embeddings.create(model=MODEL, input=SENTENCES[0])
    assert np.allclose(single.data[0].embedding, served[0], atol=1e-5), "batching does not change a result"
    # longer than the model's 256 tokens: truncated as sentence-transformers truncates, [SEP] kept
    long_text = " ".join(f"word{i} is here" for i in range(200))
    served_long = np.array(client.embeddings.create(model=MODEL, input=long_text).data[0].embedding)
    expected_long = SentenceTransformer(str(minilm_dir), device="cpu").encode([long_text])[0]
    assert served_long @ expected_long / np.linalg.norm(expected_long) >= 0.9999


def test_tritonclient_straight_to_triton(runtime, published):
    import tritonclient.http as triton_http
    from tokenizers import Tokenizer

    out, _ = published
    tokenizer = Tokenizer.from_file(str(out / "profiles/onnxruntime-fp32-throughput/tokenizer/tokenizer.json"))
    tokenizer.enable_padding()
    encoded = tokenizer.encode_batch(SENTENCES[:2])
    client = triton_http.InferenceServerClient(runtime.triton_url)
    assert client.is_model_ready(MODEL)
    inputs = []
    for name, rows in (("input_ids", [e.ids for e in encoded]), ("attention_mask", [e.attention_mask for e in encoded]),
                       ("token_type_ids", [e.type_ids for e in encoded])):
        tensor = triton_http.InferInput(name, [2, len(rows[0])], "INT64")
        tensor.set_data_from_numpy(np.array(rows, dtype=np.int64))
        inputs.append(tensor)
    direct = client.infer(MODEL, inputs).as_numpy("embeddings")
    via_api = httpx.post(f"{runtime.url}/v1/embeddings", json={"model": MODEL, "input": SENTENCES[:2]}).json()
    assert np.allclose(direct, np.array([d["embedding"] for d in via_api["data"]]), atol=1e-5)
    config = client.get_model_config(MODEL)
    # the example asks for no batching delay: a request is sent as soon as the model is free, and
    # under load the requests that queued meanwhile form the batch (the speech test checks a delay)
    assert config["max_batch_size"] == 64 and int(config["dynamic_batching"].get("max_queue_delay_microseconds", 0)) == 0


def test_health_models_and_metrics(runtime):
    assert httpx.get(f"{runtime.url}/v1/health/live").json()["message"] == "Service is live."
    models = httpx.get(f"{runtime.url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    httpx.post(f"{runtime.url}/v1/embeddings", json={"model": MODEL, "input": "count me"})
    metrics = httpx.get(f"{runtime.url}/v1/metrics").text
    assert re.search(r'nimbuild_http_requests_total\{endpoint="/v1/embeddings",status="200"\} [1-9]', metrics)
    assert "nimbuild_http_request_seconds_bucket" in metrics
    assert re.search(r'nv_inference_request_success\{model="minilm-embed",version="1"\} [1-9]', metrics), \
        "Triton's own metrics are included"


@pytest.mark.parametrize("body,status,fragment", [
    ({"model": "gpt-4", "input": "x"}, 404, "does not exist"),
    ({"model": MODEL, "input": ""}, 400, "input[0] is empty"),
    ({"model": MODEL, "input": []}, 400, "must not be empty"),
    ({"model": MODEL, "input": 5}, 400, "input"),
    ({"model": MODEL, "input": [1, 2, 3]}, 400, "input"),
    ({"model": MODEL}, 400, "input"),
    ({"model": MODEL, "input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
    ({"model": MODEL, "input": "x", "dimensions": 64}, 400, "dimensions is not supported"),
    ({"model": MODEL, "input": "word " * 400, "truncate": "NONE"}, 400, "the model takes at most 256"),
    ({"model": MODEL, "input": ["x"] * 2049}, 400, "at most 2048 inputs"),
    ({"model": MODEL, "input": "caf\ud800e"}, 400, "lone surrogate"),  # valid JSON, no text a tokenizer takes
    ({"model": MODEL, "input": ["ok", "\udfff"]}, 400, "lone surrogate"),
    # a field this runtime does not implement is refused naming it, never dropped
    ({"model": MODEL, "input": "x", "instruction": "query"}, 400, "Unrecognized request argument supplied: instruction"),
    ({"model": MODEL, "input": "x", "input_type": "document"}, 400, "input_type"),
])
def test_bad_requests_get_4xx_with_an_openai_error(runtime, body, status, fragment):
    # json.dumps escapes a lone surrogate as JSON allows (httpx's json= would fail to encode it)
    r = httpx.post(f"{runtime.url}/v1/embeddings", content=json.dumps(body), timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert fragment in error["message"] and error["type"]


def test_malformed_http_gets_4xx(runtime):
    r = httpx.post(f"{runtime.url}/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    assert httpx.get(f"{runtime.url}/v1/embeddings").status_code == 405
    assert httpx.get(f"{runtime.url}/v1/nothing").status_code == 404
    big = httpx.post(f"{runtime.url}/v1/embeddings", content=b"x" * (17 << 20), headers={"content-type": "application/json"})
    assert big.status_code == 413
    long_text = httpx.post(f"{runtime.url}/v1/embeddings", json={"model": MODEL, "input": "word " * 2000})
    assert long_text.status_code == 200, "long inputs are truncated to the model's 256 tokens by default"
    start = httpx.post(f"{runtime.url}/v1/embeddings", json={"model": MODEL, "input": "word " * 2000, "truncate": "START"})
    assert start.status_code == 200 and start.json()["usage"]["total_tokens"] == 256


@pytest.mark.parametrize("body,fragment", [
    (b"\xff\xfe{}", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "body"),  # nested past the parser's recursion limit
    (b'{"model": "m", "input": "x", "dimensions": ' + b"9" * 5000 + b"}", "body"),  # past Python's int digits
    (b'{"model": "m", "input": "x"', "not valid JSON"),
])
def test_bodies_that_cannot_be_parsed_get_a_400_in_the_openai_shape(runtime, body, fragment):
    r = httpx.post(f"{runtime.url}/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and fragment in r.json()["error"]["message"], r.text


def test_a_chunked_body_is_held_to_the_same_limit_and_health_answers_meanwhile(runtime):
    chunk = b'{"model": "minilm-embed", "input": "' + b"a" * (1 << 20)

    def pieces():  # no Content-Length: sent with chunked transfer encoding, 20 MiB in all
        yield chunk
        for _ in range(19):
            yield b"a" * (1 << 20)
        yield b'"}'

    health: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            health.append(httpx.get(f"{runtime.url}/v1/health/live", timeout=2).status_code)
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    started = time.monotonic()
    try:
        r = httpx.post(f"{runtime.url}/v1/embeddings", content=pieces(), headers={"content-type": "application/json"},
                       timeout=30)
    except httpx.TransportError:  # the server may close the connection after its 413, mid-upload
        r = None
    stop.set()
    prober.join()
    assert time.monotonic() - started < 5
    if r is not None:
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text
    assert health and set(health) == {200}
    # a long text under the limit is tokenised off the event loop: health keeps answering
    assert httpx.post(f"{runtime.url}/v1/embeddings", json={"model": MODEL, "input": ["word " * 200_000] * 3},
                      timeout=60).status_code == 200


def test_schemathesis_finds_the_embedding_api_as_its_openapi_document_says(runtime):
    """Issue 31: generated requests against the runtime's own OpenAPI document (FastAPI's, made
    true in runtime_min.http): no 500, and every status, content type and body as documented."""
    from helpers.servers import assert_api_as_documented

    assert_api_as_documented(runtime.url, {"/v1/embeddings", "/v1/health/ready", "/v1/models"})


def test_load_2000_requests_from_16_clients_without_error(runtime):
    errors, done = [], []
    deadline = time.monotonic() + 300
    alone = {s: np.array(httpx.post(f"{runtime.url}/v1/embeddings", json={"model": MODEL, "input": s}).json()
                         ["data"][0]["embedding"]) for s in SENTENCES}

    def right(r: httpx.Response, sentence: str) -> bool:
        # concurrent requests share Triton calls: each must still get its own sentence's row
        return r.status_code == 200 and np.allclose(r.json()["data"][0]["embedding"], alone[sentence], atol=1e-5)

    def client(worker: int) -> None:
        with httpx.Client(timeout=30) as c:
            for i in range(125):
                if time.monotonic() > deadline:
                    errors.append("deadline")
                    return
                sentence = SENTENCES[(worker + i) % 4]
                r = c.post(f"{runtime.url}/v1/embeddings", json={"model": MODEL, "input": sentence})
                (done if right(r, sentence) else errors).append(r.status_code)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(done) == 2000


def test_killing_triton_under_load_drops_readiness_and_recovers(runtime):
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                statuses.append(c.post(f"{runtime.url}/v1/embeddings", json={"model": MODEL, "input": "load"}).status_code)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    (pid,) = runtime.triton_pids()
    os.kill(pid, signal.SIGKILL)
    saw_unready = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        code = httpx.get(f"{runtime.url}/v1/health/ready", timeout=5).status_code
        saw_unready |= code == 503
        if saw_unready and code == 200:
            break
        time.sleep(0.05)
    stop.set()
    for w in workers:
        w.join()
    assert saw_unready, "readiness dropped while Triton was down"
    assert httpx.get(f"{runtime.url}/v1/health/ready").status_code == 200, "and came back"
    assert set(statuses) <= {200, 503}, f"never a 500: {sorted(set(statuses))}"
    assert 503 in statuses, "requests during the outage were told so"
    after = httpx.post(f"{runtime.url}/v1/embeddings", json={"model": MODEL, "input": "after"}, timeout=30)
    assert after.status_code == 200
    assert runtime.triton_pids() != [pid]
    assert re.search(r"nimbuild_triton_restarts 1\.0", httpx.get(f"{runtime.url}/v1/metrics").text)


def test_sigterm_during_requests_ends_cleanly(published, tmp_path):
    out, registry = published
    served = Runtime(out / "profiles.yaml", tmp_path / "cache", registry=str(registry))
    served.wait_ready()
    results: list = []

    def load() -> None:
        with httpx.Client(timeout=30) as c:
            for _ in range(200):
                try:
                    results.append(c.post(f"{served.url}/v1/embeddings", json={"model": MODEL, "input": "bye"}).status_code)
                except httpx.TransportError:
                    results.append("closed")
                    return

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    assert served.stop() == 0
    for w in workers:
        w.join()
    assert 200 in results and all(r in (200, 503, "closed") for r in results), sorted(set(map(str, results)))
    log = served.log.read_text()
    assert "shutting down" in log and "Triton stopped" in log and "Traceback" not in log


def test_serving_straight_from_a_compile_output_selects_int8_on_a_cpu(minilm_compiled, minilm_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    out, _ = minilm_compiled
    served = Runtime(out / "profiles.yaml", tmp_path / "cache")
    try:
        served.wait_ready()
        assert "(onnxruntime-int8-throughput)" in served.log.read_text(), "on a CPU, int8 is preferred"
        r = httpx.post(f"{served.url}/v1/embeddings", json={"model": MODEL, "input": SENTENCES})
        assert r.status_code == 200
        int8 = np.array([d["embedding"] for d in r.json()["data"]])
        fp32 = SentenceTransformer(str(minilm_dir), device="cpu").encode(SENTENCES)
        cosine = (int8 * fp32).sum(1) / (np.linalg.norm(int8, axis=1) * np.linalg.norm(fp32, axis=1))
        assert cosine.min() >= 0.98, f"within the int8 gate of the example recipe: {cosine}"
    finally:
        assert served.stop() == 0


def test_no_compatible_profile_exits_non_zero_with_the_reasons(published, tmp_path):
    out, _ = published
    cpu = tmp_path / "cpu.json"
    cpu.write_text(json.dumps({"gpus": []}))
    result = subprocess.run([sys.executable, "-m", "runtime_min", "serve", "--manifest", str(out / "profiles.yaml"),
                             "--port", str(free_port())], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "NIMBUILD_SYSTEM": str(cpu), "NIM_TAGS_SELECTOR": "precision=fp8",
                                 "NIM_CACHE_PATH": str(tmp_path / "cache")})
    assert result.returncode == 1
    assert "no profile is compatible with this system" in result.stderr
    assert "does not match NIM_TAGS_SELECTOR (precision=fp32)" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_http_port_in_use_is_one_line_before_triton_starts(minilm_compiled, tmp_path):
    import socket

    out, _ = minilm_compiled
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "runtime_min", "serve", "--manifest", str(out / "profiles.yaml"),
                                 "--host", "127.0.0.1", "--port", str(port)], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "NIM_CACHE_PATH": str(tmp_path / "cache")})
    assert result.returncode == 2 and f"cannot listen for HTTP on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr and "Starting" not in result.stderr, "refused before Triton starts"


def test_a_triton_that_keeps_dying_ends_the_runtime_with_exit_1(published, tmp_path):
    out, registry = published
    served = Runtime(out / "profiles.yaml", tmp_path / "cache", registry=str(registry))
    served.wait_ready()
    killed, deadline = set(), time.monotonic() + 120
    while served.process.poll() is None and time.monotonic() < deadline:
        for pid in served.triton_pids():
            if pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.1)
    assert served.process.wait(timeout=60) == 1
    assert len(killed) == 4, "the first start and three restarts"
    assert "gave up after 3 restarts" in served.log.read_text()
    assert not served.triton_pids()
    for pid in killed:  # each killed Triton's Python backend stubs (its process group) were reaped too
        left = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
        assert [p for p in left if _alive(p)] == [], f"processes of the killed tritonserver {pid} outlived it: {left}"


def _alive(pid: str) -> bool:
    """Running, not a zombie waiting for PID 1 to reap it (a zombie holds no memory)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_triton_does_not_outlive_a_killed_runtime(published, tmp_path):
    out, registry = published
    served = Runtime(out / "profiles.yaml", tmp_path / "cache", registry=str(registry))
    served.wait_ready()
    (triton,) = served.triton_pids()
    served.process.kill()  # SIGKILL: no chance to clean up; the parent-death signal must do it
    served.process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{triton}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{triton}").exists(), "tritonserver outlived its runtime"


def test_the_api_socket_turns_nagle_off():
    """asyncio disables Nagle's algorithm only on sockets whose proto says TCP; a socket made with
    proto 0 made every small response wait ~40 ms for the client's delayed ACK."""
    import socket

    from runtime_min.service import _listen

    sock = _listen("127.0.0.1", free_port())
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        sock.close()
