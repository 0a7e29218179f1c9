"""The LoRA adapter bank without a server: adapters read from PEFT's files (padded to the profile's
rank, scaling folded in), refused in one line for what the profile cannot serve, and swapped into
slots least recently used first, never out from under a running sequence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.lora import write_adapter
from helpers.paths import REPO
from nimbuild.serving.lora import AdapterBank, AdapterError, SlotsBusy, read_adapter

TINY_LLAMA = REPO / "examples" / "tiny-llama" / "model"
SPEC = {"max_rank": 8, "slots": 1, "targets": ["q_proj", "v_proj"], "layers": 2,
        "shapes": {"q_proj": [64, 64], "v_proj": [64, 32]}}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("peft")
    write_adapter(TINY_LLAMA, folder / "a", rank=4, targets=["q_proj"], seed=1)
    write_adapter(TINY_LLAMA, folder / "b", rank=8, targets=["q_proj", "v_proj"], seed=2)
    return folder


def test_an_adapter_is_padded_to_the_profiles_rank_with_its_scaling_in_b(source):
    from safetensors.numpy import load_file

    read = read_adapter(source / "a", SPEC)
    a, b = read["q_proj"]
    assert a.shape == (2, 8, 64) and b.shape == (2, 64, 8)
    assert not a[:, 4:].any() and not b[:, :, 4:].any(), "rank 4 padded with zeros"
    raw = load_file(str(source / "a" / "adapter_model.safetensors"))
    key = next(k for k in raw if "layers.1." in k and "q_proj.lora_B" in k)
    np.testing.assert_allclose(b[1, :, :4], raw[key] * 2.0)  # lora_alpha 2r: scaling alpha / r = 2
    assert not read["v_proj"][0].any(), "a target the adapter does not touch stays zero"


@pytest.mark.parametrize("change, reason", [
    ({"r": 16}, "rank 16"),
    ({"target_modules": ["gate_proj"]}, "gate_proj"),
    ({"use_dora": True}, "use_dora"),
    ({"target_modules": "q_proj|v_proj"}, "pattern"),
])
def test_what_the_profile_cannot_serve_is_refused_in_one_line(source, tmp_path, change, reason):
    folder = tmp_path / "bad"
    folder.mkdir()
    config = json.loads((source / "b" / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **change}))
    (folder / "adapter_model.safetensors").write_bytes((source / "b" / "adapter_model.safetensors").read_bytes())
    with pytest.raises(AdapterError, match=reason) as refused:
        read_adapter(folder, SPEC)
    assert "\n" not in str(refused.value)


def test_slots_are_reused_least_recently_used_first_and_never_while_held(source):
    bank = AdapterBank(SPEC, source)
    assert bank.acquire(None) == 0, "the base model is slot 0"
    slot = bank.acquire("a")
    assert slot == 1 and bank.arrays["lora_A.q_proj"][:, 1].any()
    with pytest.raises(SlotsBusy):
        bank.acquire("b")  # the only slot is held by a running sequence
    bank.release(slot)
    assert bank.acquire("b") == 1 and list(bank.slots) == ["b"], "a was swapped out for b"
    assert bank.arrays["lora_A.v_proj"][:, 1].any()
    with pytest.raises(AdapterError, match="no adapter 'c'"):
        bank.acquire("c")


def test_a_lora_section_belongs_to_text_generation_and_names_modules(write_recipe, tmp_path):
    from helpers.recipes import recipe_text
    from nimbuild.compile import plan_variants
    from nimbuild.errors import NimbuildError, RecipeError
    from nimbuild.recipe import load_recipe

    (tmp_path / "model").mkdir()
    lora = "{type: generic, backend: onnxruntime, precisions: [fp32], lora: {max_rank: 8, targets: [q_proj]}}"
    embedding = write_recipe(recipe_text("model", targets=(lora,)))
    with pytest.raises(NimbuildError, match=r"targets\[0\].lora: LoRA adapters are for text-generation models"):
        plan_variants(load_recipe(embedding))
    twice = lora.replace("[q_proj]", "[q_proj, q_proj]")
    with pytest.raises(RecipeError, match="each once"):
        load_recipe(write_recipe(recipe_text("model", "text-generation", targets=(twice,)), "twice.yaml"))


def test_a_parked_request_waits_without_reading_files_and_fails_alone_if_its_adapter_breaks(source, tmp_path):
    """A request for an adapter while every slot is held waits (the bank finds no slot before it
    reads any file); if its adapter is gone by the time a slot frees, that request alone fails."""
    import shutil

    from nimbuild.serving.generation import FINISH_ERROR, Generator, SamplingParams, Sequence

    folder = tmp_path / "peft"
    shutil.copytree(source, folder)
    (folder / "broken").mkdir()
    (folder / "broken" / "adapter_config.json").write_text("{not json")
    bank = AdapterBank(SPEC, folder)
    held = bank.acquire("a")
    with pytest.raises(SlotsBusy):
        bank.acquire("broken")  # no slot: refused as busy before its broken files are read
    bank.release(held)

    class Graph:  # logits only: the test is about admission, not about what is generated
        def empty_cache(self, batch):
            return []

        def run(self, ids, mask, positions, cache, extra=None):
            return np.zeros((ids.shape[0], 8), np.float32), []

    generator = Generator(Graph(), max_batch=4, max_context=64, adapters=AdapterBank(SPEC, folder))
    first = Sequence([1, 2], SamplingParams(max_tokens=3, adapter="a"))
    parked = Sequence([1, 2], SamplingParams(max_tokens=3, adapter="b"))
    generator.add(first)
    generator.add(parked)
    assert generator.parked == [parked], "one slot, held by the first request"
    shutil.rmtree(folder / "b")  # its adapter goes away while it waits
    events = []
    while generator.busy:
        events += generator.step()
    assert first.finish_reason == "length" and len(first.tokens) == 3
    (failed,) = [e for e in events if e.sequence is parked]
    assert failed.finish_reason == FINISH_ERROR and "no adapter 'b'" in failed.error
