"""Translation: the committed MarianMT example (examples/nmt-en-de/model, trained by
examples/nmt-en-de/make_nmt_en_de.py on num2words' English and German) to an encoder graph and a KV-cache
decoder graph checked against transformers.generate, as generic, TRT-RTX and RMIR profiles; then
served through a real tritonserver to the official nvidia-riva-client and Riva's own nmt.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import riva.client  # the official Speech NIM client (nvidia-riva-client)

from helpers.examples import script_module
from helpers.paths import REPO
from helpers.recipes import compiled
from helpers.runtime import serving
from nimbuild.errors import NimbuildError, ParityError, RecipeError
from nimbuild.serving.translation_text import TranslationTextError, parse_dnt_phrases, protect, restore
from runtime_min.tasks import language_matches

RECIPE = REPO / "examples" / "nmt-en-de" / "recipe.yaml"
CHECKPOINT = REPO / "examples" / "nmt-en-de" / "model"
MODEL = "nmt-en-de"
PLACEHOLDERS = ["<dnt0>", "<dnt1>", "<dnt2>"]
# Riva's python-clients checkout (its scripts are not in the pip package), where the environment names
# one: a test depends on no path outside the repository by default
RIVA_CLIENTS = Path(os.environ["RIVA_PYTHON_CLIENTS"]) if os.environ.get("RIVA_PYTHON_CLIENTS") else None


# -- text: dnt phrases, placeholders, language codes (no model) --

def test_dnt_phrases_are_read_as_riva_client_joins_a_dictionary():
    # riva.client's add_dnt_phrases_dict sends {"Anna": "", "Bob": "Robert"} as one "Anna##,Bob##Robert"
    assert parse_dnt_phrases(["Anna##,Bob##Robert"]) == {"Anna": "Anna", "Bob": "Robert"}
    assert parse_dnt_phrases(["NVIDIA NIM", " x ## y ", ",,##z"]) == {"NVIDIA NIM": "NVIDIA NIM", "x": "y"}


def test_protected_phrases_become_placeholders_and_come_back():
    protected = protect("call Anna and <dnt>NVIDIA NIM</dnt>, call Anna", {"Anna": "Anna", "Ann": "Ann"}, PLACEHOLDERS)
    assert protected.text == "call <dnt1> and <dnt0> , call <dnt1>"  # the same phrase, one placeholder
    assert restore("rufe <dnt1> und <dnt0> an", protected) == "rufe Anna und NVIDIA NIM an"
    assert protect("call Annabel", {"Ann": "Ann"}, PLACEHOLDERS).text == "call Annabel", "whole words only"
    assert restore("rufe <dnt0> an", protect("call Bob", {"Bob": "Robert"}, PLACEHOLDERS)) == "rufe Robert an"
    with pytest.raises(TranslationTextError, match="at most 3 distinct phrases"):
        protect("a b c d", {k: k for k in "abcd"}, PLACEHOLDERS)
    with pytest.raises(TranslationTextError, match="not closed"):
        protect("call <dnt>Anna", {}, PLACEHOLDERS)
    with pytest.raises(TranslationTextError, match="no placeholder pieces"):
        protect("call Anna", {"Anna": "Anna"}, [])
    with pytest.raises(TranslationTextError, match="dropped the placeholder for 'Anna'"):
        restore("rufe an", protect("call Anna", {"Anna": "Anna"}, PLACEHOLDERS))
    assert protect("stop", {}, []).text == "stop", "no phrases: any model translates"


def test_language_codes_match_on_the_primary_subtag_and_a_region_given_on_both_sides():
    assert language_matches("en-US", "en") and language_matches("de", "de-DE") and language_matches("", "de")
    assert language_matches("EN_us", "en-US")
    assert not language_matches("en-GB", "en-US") and not language_matches("fr", "de")


# -- recipes and planning --

def _recipe(text: str):
    from nimbuild.recipe import parse_recipe

    return parse_recipe(text, base_dir=REPO / "examples" / "nmt-en-de")


def test_a_translation_recipe_needs_its_language_pair_and_parity_texts_and_plans_tagged_fp32_profiles():
    from nimbuild.compile import plan_variants

    text = RECIPE.read_text()
    with pytest.raises(RecipeError, match="needs serving.languages"):
        _recipe(text.replace("  languages: {source: en, target: de}\n", ""))
    embed = (REPO / "examples" / "minilm-embed" / "recipe.yaml").read_text().replace(
        "profile: throughput}", "profile: throughput, languages: {source: en, target: de}}")
    with pytest.raises(RecipeError, match="serving.languages apply to translation recipes"):
        _recipe(embed)
    tags = [dict(v.tags) for v in plan_variants(_recipe(text))]
    assert [t.get("backend") for t in tags] == ["onnxruntime", "tensorrt_rtx", "rmir"]
    assert all((t["name"], t["src_lang"], t["tgt_lang"], t["precision"]) == (MODEL, "en", "de", "fp32") for t in tags)
    fp16 = text.replace("  fp32: {}", "  fp32: {}\n  fp16: {}").replace(
        "{type: generic, backend: onnxruntime, precisions: [fp32]}", "{type: generic, backend: onnxruntime, precisions: [fp16]}")
    with pytest.raises(NimbuildError, match="precision fp16 is not supported"):
        plan_variants(_recipe(fp16))


# -- compile: two graphs, checked against transformers.generate --

@pytest.fixture(scope="module")
def nmt_compiled(tmp_path_factory):
    return compiled(tmp_path_factory, RECIPE)


def test_the_example_compiles_to_generic_engine_and_rmir_profiles_with_the_decoder_beside(nmt_compiled):
    import json
    import tarfile

    from nimbuild.profiles.manifest import load_manifest

    manifest = load_manifest(nmt_compiled / "profiles.yaml")
    assert sorted(p.tags["backend"] for p in manifest.profiles) == ["onnxruntime", "rmir", "tensorrt_rtx"]
    generic = next(p for p in manifest.profiles if p.tags["backend"] == "onnxruntime")
    parity = generic.build["parity"]
    assert int(parity["greedy_tokens_compared"]) >= 40 and float(parity["outputs"]["logits"]["max_abs"]) < 1e-4
    for profile in manifest.profiles:
        files = set(profile.files)
        if profile.tags["backend"] == "rmir":
            with tarfile.open(nmt_compiled / profile.files["model.rmir"].uri) as archive:
                files = set(archive.getnames())
        assert {"translation/decoder.onnx", "tokenizer/source.spm", "tokenizer/vocab.json"} <= files, profile.description
    info = json.loads((nmt_compiled / generic.files["model_info.json"].uri).read_text())
    runtime = info["runtime"]
    assert (runtime["source_language"], runtime["target_language"]) == ("en", "de")
    assert runtime["dnt_placeholders"] == PLACEHOLDERS and runtime["max_output_tokens"] == 48
    assert [o["name"] for o in info["outputs"]][:2] == ["cross.0.key", "cross.0.value"]


def test_a_decoder_that_goes_astray_is_refused_naming_the_text_and_the_first_differing_step(tmp_path, monkeypatch):
    """From its third step on, the exported decoder favours token 7: parity must refuse the build
    and say where the translations part."""
    import torch

    from nimbuild.export import export_reference, translation
    from nimbuild.sources.hf import resolve_hf
    from nimbuild.util.progress import Reporter

    original = translation.decoder_module

    def astray(adapter):
        inner = original(adapter)

        class Astray(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, mask, *kv):
                logits, *present = self.inner(input_ids, mask, *kv)
                past = kv[0].new_ones(kv[0].shape[2]).sum()  # the past's length, as a tensor
                bias = torch.zeros(logits.shape[-1]).index_fill(0, torch.tensor([7]), 100.0)
                return (logits + bias * (past >= 2).float(), *present)

        return Astray()

    monkeypatch.setattr(translation, "decoder_module", astray)
    recipe = _recipe(RECIPE.read_text().replace("hf: model\n", f"hf: {CHECKPOINT}\n"))
    with pytest.raises(ParityError, match=r"'call three four five': greedy tokens differ at step 2"):
        export_reference(resolve_hf(str(CHECKPOINT), REPO), recipe, tmp_path, Reporter(quiet=True))



def test_checkpoints_that_are_not_served_marian_models_are_refused_with_one_message(tmp_path, tiny_bert_dir):
    import json
    import shutil

    from click.testing import CliRunner

    from nimbuild.cli import main

    def compile_from(source: Path) -> str:
        recipe = tmp_path / "r.yaml"
        recipe.write_text(RECIPE.read_text().replace("hf: model\n", f"hf: {source}\n"))
        result = CliRunner().invoke(main, ["-q", "compile", str(recipe), "--out", str(tmp_path / "out")])
        assert result.exit_code != 0 and "Traceback" not in result.output
        return result.output

    assert "no source.spm; nimbuild serves MarianMT-class checkpoints" in compile_from(tiny_bert_dir)
    separate = shutil.copytree(CHECKPOINT, tmp_path / "separate")
    config = json.loads((separate / "tokenizer_config.json").read_text())
    (separate / "tokenizer_config.json").write_text(json.dumps({**config, "separate_vocabs": True}))
    assert "separate source and target vocabularies is not served yet" in compile_from(separate)
    (separate / "tokenizer_config.json").write_text(json.dumps({**config, "target_lang": "fr"}))
    assert "serving.languages en -> de disagrees with the tokenizer's en -> fr" in compile_from(separate)

def test_a_fresh_marian_of_other_shapes_ends_at_its_length_limit_as_transformers_ends_it(tmp_path):
    """Random weights, 96 wide, 3 + 1 layers: every greedy translation runs to the length limit,
    where transformers forces `</s>` (the checkpoint's forced_eos_token_id); the build's gate passes
    only if the served loop does the same, and model_info.json records the rule for the runtime."""
    import json
    import shutil

    import torch
    from click.testing import CliRunner
    from transformers import MarianConfig, MarianMTModel

    from nimbuild.cli import main
    from nimbuild.profiles.manifest import load_manifest

    checkpoint = tmp_path / "marian"
    checkpoint.mkdir()
    for name in ("source.spm", "target.spm", "vocab.json", "tokenizer_config.json"):
        shutil.copy(CHECKPOINT / name, checkpoint / name)
    torch.manual_seed(0)
    config = MarianConfig(vocab_size=322, decoder_vocab_size=322, d_model=96, encoder_layers=3, decoder_layers=1,
                          encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=192, decoder_ffn_dim=192,
                          max_position_embeddings=128, pad_token_id=321, decoder_start_token_id=321, eos_token_id=0,
                          forced_eos_token_id=0)
    MarianMTModel(config).eval().save_pretrained(checkpoint)
    runner = CliRunner()
    result = runner.invoke(main, ["recipe", "init", str(checkpoint), "--out", str(tmp_path / "r.yaml")])
    assert result.exit_code == 0, result.output
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe.read_text().replace("sequence: [1, 16, 128]}", "sequence: [1, 16, 32]}"))  # a faster gate
    result = runner.invoke(main, ["-q", "compile", str(recipe), "--out", str(tmp_path / "out"), "--target", "0"])
    assert result.exit_code == 0, result.output
    generic = load_manifest(tmp_path / "out" / "profiles.yaml").profiles[0]
    assert int(generic.build["parity"]["greedy_tokens_compared"]) == 5 * 32, "every translation ran to the limit"
    runtime = json.loads((tmp_path / "out" / generic.files["model_info.json"].uri).read_text())["runtime"]
    assert runtime["generation"]["forced_eos"] == 0 and runtime["generation"]["eos"] == [0]


# -- served: Riva's RivaTranslation --

@pytest.fixture(scope="module")
def served_nmt(nmt_compiled, tmp_path_factory):
    yield from serving(nmt_compiled / "profiles.yaml", tmp_path_factory.mktemp("nmt-cache"))


def _client(runtime):
    return riva.client.NeuralMachineTranslationClient(riva.client.Auth(uri=f"127.0.0.1:{runtime.grpc_port}"))


def _reference_translations(texts: list[str], max_new_tokens: int = 48) -> list[str]:
    """transformers' own greedy translations, in-process, under the checkpoint's generation config
    (what the served ones must equal): a translation cut at its budget ends on the forced `</s>`."""
    import torch
    from transformers import MarianMTModel, MarianTokenizer

    tokenizer = MarianTokenizer.from_pretrained(CHECKPOINT)
    model = MarianMTModel.from_pretrained(CHECKPOINT).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=max_new_tokens)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def test_riva_client_translates_held_out_numbers_as_transformers_does(served_nmt):
    phrases = script_module("nmt_phrases")
    pairs = phrases.held_out_numbers(96)
    sources = [en for en, _ in pairs]
    client = _client(served_nmt)
    served = []
    for start in range(0, len(sources), 8):  # nmt.py's --batch-size
        response = client.translate(sources[start:start + 8], "", "en-US", "de-DE")
        served += [t.text for t in response.translations]
        assert {t.language for t in response.translations} == {"de-DE"}
    assert served == _reference_translations(sources)
    exact = np.mean([s == de for s, (_, de) in zip(served, pairs)])
    assert exact >= 0.95, f"held-out exact match {exact:.1%}"


def test_dnt_phrases_and_inline_tags_are_kept_or_given_their_translation(served_nmt):
    client = _client(served_nmt)
    response = client.translate(["call Anna and Bob", "stop <dnt>NVIDIA NIM</dnt>", "dial Anna"], MODEL, "en", "de",
                                dnt_phrases_dict={"Anna": "", "Bob": "Robert"})
    assert [t.text for t in response.translations] == ["rufe Anna und Robert an", "stopp NVIDIA NIM", "wähle Anna"]


def test_max_len_variation_bounds_a_translation_at_its_sources_tokens_plus_that(served_nmt):
    client = _client(served_nmt)
    text = "call three four five"  # 6 source tokens (with </s>); its translation takes 8

    def translated(variation: str) -> str:
        return client.translate([text], "", "en", "de", max_len_variation=variation).translations[0].text

    assert translated("0") == _reference_translations([text], max_new_tokens=6)[0] != translated("")
    assert translated("1") == _reference_translations([text], max_new_tokens=7)[0]
    # past the profile's output length is that length: no tighter bound than every translation has
    assert translated("100000") == translated("") == "rufe drei vier fünf an"
    with pytest.raises(grpc.RpcError) as caught:
        translated("-1")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_len_variation must be 0 or more tokens, got -1" in caught.value.details()


def test_concurrent_callers_texts_are_batched_together_in_triton(served_nmt):
    import tritonclient.http as triton_http

    stats = triton_http.InferenceServerClient(served_nmt.triton_url)
    before = stats.get_inference_statistics(MODEL)["model_stats"][0]
    errors = []

    def caller(k: int):
        try:
            for _ in range(4):
                _client(served_nmt).translate([f"call {w} five" for w in ("one", "two", "three", "four")], "", "en", "de")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    # Triton counts an execution after the Python model's execute() returns, which can be after
    # its responses reached the caller: wait (boundedly) for the counters to catch up.
    deadline = time.monotonic() + 10
    while True:
        after = stats.get_inference_statistics(MODEL)["model_stats"][0]
        inferences = after["inference_count"] - before["inference_count"]
        executions = after["execution_count"] - before["execution_count"]
        if inferences >= 8 * 4 * 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert inferences == 8 * 4 * 4 and executions < inferences / 2, (inferences, executions)


def test_bad_requests_are_invalid_argument_or_not_found_with_one_message(served_nmt):
    client = _client(served_nmt)
    cases = [
        (dict(texts=["stop"], source_language="fr", target_language="de"), "fr -> de is not served"),
        (dict(texts=[]), "texts is empty"),
        (dict(texts=["one " * 40]), "texts[0] is 41 tokens; this model takes at most 32"),
        (dict(texts=["stop"], max_len_variation="lots"), "max_len_variation must be a whole number"),
        (dict(texts=["a b c d"], dnt_phrases_dict={k: "" for k in "abcd"}), "at most 3 distinct phrases"),
        (dict(texts=["stop <dnt>x"]), "not closed"),
        (dict(texts=["x" * 10_001]), "at most 10000"),
        (dict(texts=["stop"] * 1025), "1025 texts in one request; at most 1024"),
        (dict(texts=["stop"], dnt_phrases_dict={f"w{i}": "" for i in range(257)}), "257 dnt_phrases in one request"),
    ]
    for given, message in cases:
        request = {"model": "", "source_language": "en", "target_language": "de", **given}
        with pytest.raises(grpc.RpcError) as caught:
            client.translate(**request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in caught.value.details(), given
    with pytest.raises(grpc.RpcError) as caught:
        client.translate(["stop"], "megatronnmt_any_any_1b", "en", "de")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "'nmt-en-de'" in caught.value.details()



@pytest.mark.gpu
def test_gpu_serves_the_encoder_engine_with_the_generic_profiles_translations(nmt_compiled, tmp_path):
    from helpers.gpu import needs as _needs

    gpu = _needs("tensorrt_rtx", "cuda")
    if gpu.compute_capability != "8.9":
        pytest.skip(f"the example builds its TensorRT-RTX engine for 8.9; this GPU is {gpu.compute_capability}")
    texts = ["call three four five", "nine thousand, nine hundred and ninety-nine", "stop"]
    got = {}
    for profile in ("onnxruntime-fp32-throughput", "tensorrt_rtx-sm89-fp32-throughput"):
        runtime = next(serving(nmt_compiled / "profiles.yaml", tmp_path / profile, NIM_MODEL_PROFILE=profile))
        try:
            got[profile] = [t.text for t in _client(runtime).translate(texts, "", "en", "de").translations]
        finally:
            assert runtime.stop() == 0
    generic, engine = got.values()
    assert engine == generic

def _nmt_py(tmp_path: Path) -> Path:
    """Riva's scripts/nmt/nmt.py, byte for byte from the python-clients repository."""
    if RIVA_CLIENTS is None or not ((RIVA_CLIENTS / "HEAD").exists() or (RIVA_CLIENTS / ".git").exists()):
        pytest.skip("needs a checkout of nvidia-riva/python-clients (its scripts are not in the pip package): "
                    "set RIVA_PYTHON_CLIENTS to one")
    script = tmp_path / "nmt.py"
    script.write_bytes(subprocess.run(["git", "--git-dir" if (RIVA_CLIENTS / "HEAD").exists() else "-C",
                                       str(RIVA_CLIENTS), "show", "HEAD:scripts/nmt/nmt.py"],
                                      check=True, capture_output=True).stdout)
    return script


def test_rivas_nmt_py_translates_lists_models_and_reads_a_dnt_file_unchanged(served_nmt, tmp_path):
    script = _nmt_py(tmp_path)
    server = ["--server", f"127.0.0.1:{served_nmt.grpc_port}"]

    def run(*args: str) -> str:
        result = subprocess.run([sys.executable, str(script), *server, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    pair = ["--source-language-code", "en-US", "--target-language-code", "de-DE"]
    assert run("--text", "call three four five", *pair).strip() == "rufe drei vier fünf an"
    texts = tmp_path / "texts.txt"
    texts.write_text("twenty-one\n\nstop\ncall Anna\n")
    dnt = tmp_path / "dnt.txt"
    dnt.write_text("Anna\n")
    assert run("--text-file", str(texts), "--dnt-phrases-file", str(dnt), "--batch-size", "2", *pair).split("\n")[:3] == [
        "einundzwanzig", "stopp", "rufe Anna an"]
    listed = run("--list-models")
    assert 'key: "nmt-en-de"' in listed and 'src_lang: "en"' in listed and 'tgt_lang: "de"' in listed
    # nmt.py's own defaults (en-US -> en-US) are a pair this model does not serve: it prints the error
    assert "invalid arg error : en-US -> en-US is not served" in run("--text", "stop")


# -- speech to speech: ASR -> NMT -> TTS, three runtime_min instances --

@pytest.fixture(scope="module")
def served_asr(digits_compiled, tmp_path_factory):
    yield from serving(digits_compiled / "profiles.yaml", tmp_path_factory.mktemp("asr-cache"))


@pytest.fixture(scope="module")
def served_german_voice(tmp_path_factory):
    pytest.importorskip("nemo", reason="the nemo extra is not installed")
    out = compiled(tmp_path_factory, REPO / "examples" / "tts-digits-de" / "recipe.yaml", "--target", "0")
    yield from serving(out / "profiles.yaml", tmp_path_factory.mktemp("tts-de-cache"))


@pytest.mark.slow
def test_speech_to_speech_english_audio_becomes_german_speech_through_three_services(served_asr, served_nmt,
                                                                                      served_german_voice):
    demo = script_module("demo_s2s")
    stages = demo.speech_to_speech(demo.spoken(demo.SAID), *(f"127.0.0.1:{r.grpc_port}"
                                                             for r in (served_asr, served_nmt, served_german_voice)))
    assert stages.heard == demo.SAID
    assert stages.translated == demo.GERMAN == "rufe fünf fünf eins zwei an"
    assert stages.read_as == "rufe funf funf eins zwei an"  # the voice's alphabet, as NeMo's parser reads it
    seconds = len(stages.audio) / demo.RATE
    assert 1.0 < seconds < 6.0 and float(np.sqrt(np.mean(stages.audio ** 2))) > 0.01, seconds


def test_generated_riva_requests_get_ok_or_a_status_the_client_can_act_on(served_nmt):
    """Issue 31: Riva request messages with any value in any field (tests/helpers/riva_messages.py): each
    is answered, or refused INVALID_ARGUMENT / NOT_FOUND / OUT_OF_RANGE with a message; never
    UNKNOWN or INTERNAL."""
    from riva.client.proto import riva_nmt_pb2 as rnmt
    from riva.client.proto import riva_nmt_pb2_grpc

    from helpers.riva_messages import answered_as_documented

    answered_as_documented(served_nmt.grpc_port, riva_nmt_pb2_grpc.RivaTranslationStub,
                           {"TranslateText": rnmt.TranslateTextRequest,
                            "ListSupportedLanguagePairs": rnmt.AvailableLanguageRequest})
