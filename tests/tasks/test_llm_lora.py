"""LoRA heads beside the base model, as NIM serves them: the tiny-llama example's LoRA profile
(compiled once: tests/tasks/conftest.py) served with NIM_PEFT_SOURCE holding adapters written by
PEFT; each request's greedy text equals PEFT's merged model in transformers, whatever else is in its
batch; /v1/models lists the adapters; one added to the folder appears after the refresh interval;
broken ones are refused in one line while the rest serve."""

from __future__ import annotations

import concurrent.futures
import json
import os
import time

import httpx
import pytest

from helpers.lora import merged_greedy, write_adapter
from helpers.paths import REPO

TINY_LLAMA = REPO / "examples" / "tiny-llama" / "model"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
PROMPTS = ["The quick brown fox", "Once upon a time", "Rain"]
NEW = 16


@pytest.fixture(scope="module")
def peft_source(tmp_path_factory):
    source = tmp_path_factory.mktemp("peft")
    write_adapter(TINY_LLAMA, source / "math", rank=8, targets=TARGETS, seed=1)
    write_adapter(TINY_LLAMA, source / "poems", rank=4, targets=["q_proj", "v_proj"], seed=2)
    # refused, each for its own reason; the others keep serving
    write_adapter(TINY_LLAMA, source / "too-wide", rank=16, targets=TARGETS, seed=3)
    write_adapter(TINY_LLAMA, source / "mlp", rank=4, targets=["gate_proj"], seed=4)
    (source / "corrupt").mkdir()
    (source / "corrupt" / "adapter_config.json").write_text((source / "poems" / "adapter_config.json").read_text())
    (source / "corrupt" / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    outside = tmp_path_factory.mktemp("outside")
    write_adapter(TINY_LLAMA, outside / "escaped", rank=4, targets=["q_proj"], seed=5)
    os.symlink(outside / "escaped", source / "escaped")  # a link that climbs out is not an adapter
    return source


@pytest.fixture(scope="module")
def lora_runtime(llm_compiled, peft_source, tmp_path_factory):
    from helpers.runtime import Runtime

    served = Runtime(llm_compiled / "profiles.yaml", tmp_path_factory.mktemp("lora-cache"),
                     env={"NIM_PEFT_SOURCE": str(peft_source), "NIM_PEFT_REFRESH_INTERVAL": "1"})
    served.wait_ready()
    yield served
    assert served.stop() == 0


@pytest.fixture(scope="module")
def expected(peft_source):
    return {name: [merged_greedy(TINY_LLAMA, peft_source / name if name else None, p, NEW) for p in PROMPTS]
            for name in (None, "math", "poems")}


def _complete(url: str, model: str, prompt: str) -> str:
    reply = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": NEW,
                                                      "temperature": 0}, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["text"]


def test_the_lora_profile_is_selected_and_lists_the_base_and_the_good_adapters(lora_runtime):
    assert "onnxruntime-fp32-throughput-lora" in lora_runtime.log.read_text()
    listed = httpx.get(f"{lora_runtime.url}/v1/models").json()["data"]
    assert [m["id"] for m in listed] == ["tiny-llama", "math", "poems"]
    assert all(m["parent"] == "tiny-llama" for m in listed[1:])
    log = lora_runtime.log.read_text()
    for name, reason in (("too-wide", "rank 16"), ("mlp", "gate_proj"), ("corrupt", "cannot be read")):
        assert f"LoRA adapter '{name}' refused" in log and reason in log, name
    assert "escaped" not in json.dumps(listed)


def test_each_adapter_answers_as_pefts_merged_model_alone_and_mixed_in_one_batch(lora_runtime, expected):
    assert expected["math"] != expected[None] and expected["poems"] != expected[None], "the adapters change nothing"
    for name in ("math", "poems"):
        assert [_complete(lora_runtime.url, name, p) for p in PROMPTS] == expected[name]
    assert [_complete(lora_runtime.url, "tiny-llama", p) for p in PROMPTS] == expected[None]
    jobs = [(model, i) for model in ("tiny-llama", "math", "poems") for i in range(len(PROMPTS))]
    jobs = jobs[:8]  # eight at once: both adapters and the base in the same batches
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda job: _complete(lora_runtime.url, job[0], PROMPTS[job[1]]), jobs))
    assert texts == [expected[None if m == "tiny-llama" else m][i] for m, i in jobs]
    metrics = httpx.get(f"{lora_runtime.url}/v1/metrics").text
    assert float(next(line.split()[-1] for line in metrics.splitlines()
                      if line.startswith("nimbuild_llm_step_rows_max"))) > 1, "the requests were not batched"


def test_an_unknown_or_refused_adapter_is_a_404_and_chat_takes_adapters_too(lora_runtime, expected):
    for name in ("nope", "too-wide", "corrupt", "escaped"):
        reply = httpx.post(f"{lora_runtime.url}/v1/completions", json={"model": name, "prompt": "x"}, timeout=30)
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found", reply.text
    chat = httpx.post(f"{lora_runtime.url}/v1/chat/completions", timeout=60, json={
        "model": "math", "messages": [{"role": "user", "content": "Rain"}], "max_tokens": 4, "temperature": 0})
    assert chat.status_code == 200 and chat.json()["model"] == "math", chat.text  # as vLLM names a LoRA's answers


def test_an_adapter_added_to_the_folder_is_served_after_the_refresh_interval(lora_runtime, peft_source):
    write_adapter(TINY_LLAMA, peft_source / "late", rank=2, targets=["o_proj"], seed=6)
    deadline = time.monotonic() + 20
    while "late" not in [m["id"] for m in httpx.get(f"{lora_runtime.url}/v1/models").json()["data"]]:
        assert time.monotonic() < deadline, "the new adapter was never listed"
        time.sleep(0.5)
    assert _complete(lora_runtime.url, "late", "Rain") == merged_greedy(TINY_LLAMA, peft_source / "late", "Rain", NEW)


def test_more_adapters_at_once_than_slots_wait_for_one_and_all_answer_exactly(lora_runtime, peft_source):
    """The example has 8 slots; 10 requests naming 10 distinct adapters at once: two wait in the
    generator for a slot to free (least recently used, never one a running sequence reads)."""
    names = [f"crowd-{i}" for i in range(10)]
    for i, name in enumerate(names):
        write_adapter(TINY_LLAMA, peft_source / name, rank=2, targets=["q_proj"], seed=100 + i)
    deadline = time.monotonic() + 20
    while not set(names) <= {m["id"] for m in httpx.get(f"{lora_runtime.url}/v1/models").json()["data"]}:
        assert time.monotonic() < deadline, "the new adapters were never listed"
        time.sleep(0.5)
    expected = [merged_greedy(TINY_LLAMA, peft_source / name, "Rain", NEW) for name in names]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        texts = list(pool.map(lambda name: _complete(lora_runtime.url, name, "Rain"), names))
    assert texts == expected
