"""Text to speech: the committed FastPitch voice (examples/tts-digits/tts-digits.nemo, trained on
espeak-ng speech by examples/tts-digits/make_tts_digits.py) to checked ONNX, TRT-RTX and RMIR profiles; then
served through a real tritonserver to the official nvidia-riva-client and over TTS NIM's HTTP API,
and heard back by the served asr-digits model."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import riva.client  # the official Speech NIM client (nvidia-riva-client)

from helpers.examples import asr_trainer, script_module
from helpers.paths import REPO
from helpers.recipes import compiled
from helpers.runtime import serving
from nimbuild.errors import NimbuildError, ParityError, RecipeError
from nimbuild.serving.tts_text import TextError, normalise, sentences, split_finished, tokens
from nimbuild.util.progress import Reporter

QUIET = Reporter(quiet=True)
RECIPE = REPO / "examples" / "tts-digits" / "recipe.yaml"
MODEL = "tts-digits"
VOICE = "English-US.Espeak-1"
ALPHABET = set(" abcdefghijklmnopqrstuvwxyz'")
LABELS = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]


# -- text: sentences, normalisation, tokens (no model) --

def test_text_is_split_on_sentence_ends_and_normalised_as_the_profile_says():
    assert sentences("Call 555-1234. Stop!  Then go;\nup, down", ALPHABET, 64) == [
        "call five five five one two three four", "stop", "then go", "up down"]
    assert tokens("dial", LABELS) == [4, 9, 1, 12]
    assert normalise("  Don't   STOP…  ", ALPHABET) == "don't stop"


def test_an_over_long_sentence_is_cut_between_words_and_a_word_too_long_is_refused():
    long = " ".join(["seven"] * 30)  # 179 characters, no sentence end
    pieces = sentences(long, ALPHABET, 64)
    assert all(len(p) <= 64 for p in pieces) and " ".join(pieces) == long
    assert all(set(p.split()) == {"seven"} for p in pieces), "never cut inside a word"
    with pytest.raises(TextError, match="has 80 characters; a sentence may have at most 64"):
        sentences("go " + "x" * 80, ALPHABET, 64)
    assert sentences("?!... ,,", ALPHABET, 64) == []


def test_text_arriving_in_pieces_is_spoken_up_to_its_last_sentence_end():
    assert split_finished("one two. three") == ("one two.", "three")
    assert split_finished("one two") == ("", "one two")
    assert split_finished("stop! go.\n") == ("stop! go.", "")


# -- recipes and planning --

def _recipe(text: str):
    from nimbuild.recipe import parse_recipe

    return parse_recipe(text, base_dir=REPO / "examples" / "tts-digits")


def _variant(precisions: str) -> str:
    return RECIPE.read_text().replace("precisions:\n  fp32: {}", "precisions:\n  fp32: {}\n  fp16: {}") \
        .replace("- {type: generic, backend: onnxruntime, precisions: [fp32]}",
                 f"- {{type: generic, backend: onnxruntime, precisions: {precisions}}}")


def test_a_tts_recipe_needs_its_vocoder_voice_and_parity_texts():
    from nimbuild.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    assert recipe.task == "tts" and recipe.source.vocoder == "griffin-lim"
    assert recipe.serving.voice.name == "English-US" and recipe.serving.voice.subvoice == "Espeak-1"
    with pytest.raises(RecipeError, match="needs serving.voice"):
        _recipe(RECIPE.read_text().replace("  voice: {name: English-US, subvoice: Espeak-1, language_code: en-US}\n", ""))
    with pytest.raises(RecipeError, match="source.vocoder"):
        _recipe(RECIPE.read_text().replace("  vocoder: griffin-lim\n", "  vocoder: wavenet\n"))
    embed = (REPO / "examples" / "minilm-embed" / "recipe.yaml").read_text().replace(
        "profile: throughput}", "profile: throughput, voice: {name: X, subvoice: Y}}")
    with pytest.raises(RecipeError, match="serving.voice apply to text-to-speech recipes"):
        _recipe(embed)


def test_fp16_tts_profiles_are_refused_at_planning_until_a_gate_on_the_audio_exists():
    from nimbuild.compile import plan_variants

    with pytest.raises(NimbuildError, match="precision fp16 is not built for tts profiles yet: it needs a gate on the "
                                            "served audio"):
        plan_variants(_recipe(_variant(precisions="[fp32, fp16]")))
    tags = [dict(v.tags) for v in plan_variants(_recipe(RECIPE.read_text()))]
    assert [t.get("backend") for t in tags] == ["onnxruntime", "tensorrt_rtx", "rmir"]
    assert all(t["name"] == MODEL and t["precision"] == "fp32" for t in tags)


# -- compile: export with NeMo's exporter, checked against NeMo --

@pytest.fixture(scope="module")
def tts_compiled(tmp_path_factory):
    pytest.importorskip("nemo", reason="the nemo extra is not installed")
    return compiled(tmp_path_factory, RECIPE)


@pytest.mark.slow
def test_the_voice_compiles_to_generic_engine_and_rmir_profiles_that_record_how_it_speaks(tts_compiled):
    from nimbuild.profiles.manifest import load_manifest

    manifest = load_manifest(tts_compiled / "profiles.yaml")
    kinds = sorted(p.tags.get("backend") for p in manifest.profiles)
    assert kinds == ["onnxruntime", "rmir", "tensorrt_rtx"]
    generic = next(p for p in manifest.profiles if p.tags["backend"] == "onnxruntime")
    parity = generic.build["parity"]
    assert parity["durations"] == "equal on 6 texts" and parity["tokens"] == "equal to NeMo's parser on 6 texts"
    assert float(parity["outputs"]["spect"]["max_abs"]) <= 1e-3
    info = json.loads((tts_compiled / generic.files["model_info.json"].uri).read_text())
    runtime = info["runtime"]
    assert runtime["voice"] == {"name": "English-US", "subvoice": "Espeak-1", "language_code": "en-US"}
    assert runtime["sample_rate"] == 22050 and runtime["vocoder"]["kind"] == "griffin-lim"
    assert "digits spoken one by one" in runtime["text_normalization"]
    assert set(generic.files) == {"model.onnx", "model_info.json", "tts/filterbank.npy"}
    engine = next(p for p in manifest.profiles if p.tags["backend"] == "tensorrt_rtx")
    assert engine.tags["compute_capability"] == "8.9" and "model.plan" in engine.files


@pytest.mark.slow
def test_a_graph_that_differs_from_nemo_is_refused_with_the_figures(tmp_path):
    from nimbuild.export import export_reference
    from nimbuild.sources import resolve_source

    strict = _recipe(RECIPE.read_text().replace("parity: {atol: 1.0e-3, rtol: 1.0e-3, cosine_min: 0.9999}",
                                                "parity: {atol: 0.0, rtol: 0.0, cosine_min: 1.0}"))
    with pytest.raises(ParityError) as refused:
        export_reference(resolve_source(strict), strict, tmp_path / "strict", QUIET)
    assert "does not match NeMo on export.texts" in str(refused.value)
    assert "spect: max abs err" in str(refused.value) and "FAILED" in str(refused.value)
    digits = _recipe(RECIPE.read_text().replace("    - stop\n", "    - stop 42\n"))
    with pytest.raises(ParityError, match="NeMo's parser as 'stop fortytwo'"):
        export_reference(resolve_source(digits), digits, tmp_path / "digits", QUIET)


# -- served: Riva's gRPC API and TTS NIM's HTTP API --

@pytest.fixture(scope="module")
def served_tts(tts_compiled, tmp_path_factory):
    yield from serving(tts_compiled / "profiles.yaml", tmp_path_factory.mktemp("tts-cache"))


def _riva(runtime):
    return riva.client.SpeechSynthesisService(riva.client.Auth(uri=f"127.0.0.1:{runtime.grpc_port}"))


def _pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def test_riva_client_synthesises_offline_and_online(served_tts):
    tts = _riva(served_tts)
    whole = tts.synthesize("Call five five one two. Stop.", voice_name=VOICE, sample_rate_hz=16000)
    audio = _pcm(whole.audio)
    assert 1.0 < len(audio) / 16000 < 6.0 and np.abs(audio).max() > 0.5
    assert whole.meta.processed_text == "call five five one two stop"
    online = list(tts.synthesize_online("Call five five one two. Stop.", voice_name=VOICE, sample_rate_hz=16000))
    assert len(online) == 2, "one chunk per sentence"
    assert b"".join(r.audio for r in online) == whole.audio, "the stream is the whole audio, in order"
    # text streamed in pieces, as an LLM writes it: each sentence is spoken when it is complete
    pieces = list(tts.synthesize_online(["call five", "five one two.", "stop."], sample_rate_hz=16000))
    assert b"".join(r.audio for r in pieces) == whole.audio


def test_a_riva_online_stream_past_its_text_bound_is_out_of_range_at_once(served_tts):
    """Issue 31: a SynthesizeOnline stream had no bound in all (only the text waiting for a sentence
    end had one), and was read only as fast as it was spoken. 57,600 characters sent at once: the
    stream ends OUT_OF_RANGE after the first request's sentences, not after an hour of speech."""
    import time

    import grpc

    from runtime_min.tasks.tts.synthesize import MAX_STREAM_CHARACTERS

    text = "Call five five one two. " * 40
    request = riva.client.proto.riva_tts_pb2.SynthesizeSpeechRequest(
        text=text, language_code="en-US", encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hz=16000)
    requests = [request] * (MAX_STREAM_CHARACTERS // len(text) + 10)
    started, spoken = time.monotonic(), []
    with pytest.raises(grpc.RpcError) as error:
        for response in _riva(served_tts).stub.SynthesizeOnline(iter(requests), timeout=120):
            spoken.append(response)
    seconds = time.monotonic() - started
    assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE, error.value.details()
    assert f"the stream passed {MAX_STREAM_CHARACTERS} characters" in error.value.details()
    assert seconds < 15 and len(spoken) <= 2 * 40, f"{seconds:.1f} s, {len(spoken)} sentences spoken first"


def test_riva_list_voices_reads_the_config_as_talk_py_does(served_tts):
    from riva.client.proto import riva_tts_pb2

    config = _riva(served_tts).stub.GetRivaSynthesisConfig(riva_tts_pb2.RivaSynthesisConfigRequest())
    voices = {}
    for model in config.model_config:  # scripts/tts/talk.py --list-voices, step for step
        subvoices = [v.split(":")[0] for v in model.parameters["subvoices"].split(",")]
        voices.setdefault(model.parameters["language_code"], []).extend(
            model.parameters["voice_name"] + "." + s for s in subvoices)
    assert voices == {"en-US": [VOICE]}
    assert config.model_config[0].model_name == MODEL and config.model_config[0].parameters["sample_rate"] == "22050"


def test_riva_requests_the_voice_cannot_honour_are_invalid_argument(served_tts):
    import grpc
    from riva.client.proto.riva_audio_pb2 import AudioEncoding

    tts = _riva(served_tts)
    cases = [
        (dict(text="stop", language_code="de-DE"), "language 'de-DE' is not served"),
        (dict(text="stop", voice_name="English-US.Female-1"), "voice 'English-US.Female-1' is not served"),
        (dict(text="stop", encoding=AudioEncoding.OGGOPUS), "encoding OGGOPUS is not supported"),
        (dict(text="stop", sample_rate_hz=4000), "sample rate 4000 Hz is outside"),
        (dict(text="...!"), "nothing this voice can say"),
        (dict(text="go " + "x" * 300), "has 300 characters; a sentence may have at most 256"),
    ]
    for kwargs, message in cases:
        with pytest.raises(grpc.RpcError) as refused:
            tts.synthesize(**kwargs)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in refused.value.details(), kwargs
        with pytest.raises(grpc.RpcError) as refused:
            list(tts.synthesize_online(**kwargs))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, kwargs
    with pytest.raises(grpc.RpcError) as refused:
        tts.stub.GetRivaSynthesisConfig(riva.client.proto.riva_tts_pb2.RivaSynthesisConfigRequest(model_name="other"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_http_synthesize_returns_a_wav_soundfile_reads_and_online_streams_the_same_pcm(served_tts):
    import soundfile

    url = served_tts.url
    assert httpx.get(f"{url}/v1/audio/list_voices").json() == {"en-US": {"voices": [VOICE]}}
    form = {"text": "Dial 911. Cancel!", "language": "en-US", "voice": VOICE, "sample_rate_hz": "16000"}
    whole = httpx.post(f"{url}/v1/audio/synthesize", files={k: (None, v) for k, v in form.items()}, timeout=60)
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/wav"
    audio, rate = soundfile.read(io.BytesIO(whole.content), dtype="float32")
    assert rate == 16000 and audio.ndim == 1 and len(audio) > 8000
    with httpx.stream("POST", f"{url}/v1/audio/synthesize_online", data=form, timeout=60) as online:
        assert online.status_code == 200 and online.headers["x-sample-rate"] == "16000"
        streamed = b"".join(online.iter_bytes())
    assert np.array_equal(_pcm(streamed), np.round(audio * 32768.0) / 32768.0)
    native = httpx.post(f"{url}/v1/audio/synthesize", data={"text": "stop"}, timeout=60)
    assert soundfile.info(io.BytesIO(native.content)).samplerate == 22050, "the voice's own rate by default"


def test_http_bad_requests_are_4xx_with_one_message(served_tts):
    url = served_tts.url
    cases = [
        ({"text": ""}, "text: the text to speak is required"),
        ({"text": "stop", "voice": "nobody"}, "voice 'nobody' is not served"),
        ({"text": "stop", "language": "fr-FR"}, "language 'fr-FR' is not served"),
        ({"text": "stop", "sample_rate_hz": "fast"}, "sample_rate_hz: expected an integer"),
        ({"text": "stop", "sample_rate_hz": "9" * 5000}, "sample_rate_hz: expected an integer"),
        ({"text": "stop", "encoding": "OGGOPUS"}, "encoding: this service returns LINEAR_PCM"),
        ({"text": "stop", "speed": "1.5"}, "Unrecognized request argument supplied: speed"),
        ({"text": "x" * 300}, "a sentence may have at most 256"),
        ({"text": "go. " * 2600}, "text has 10400 characters; at most 10000 per request"),
        ({"text": "\ud800"}, None),  # a lone surrogate cannot even be sent as UTF-8 form data: 400 from the parser
    ]
    for path in ("/v1/audio/synthesize", "/v1/audio/synthesize_online"):
        for form, message in cases:
            if form["text"] == "\ud800":
                reply = httpx.post(f"{url}{path}", content=b"text=%ED%A0%80",
                                   headers={"content-type": "application/x-www-form-urlencoded"}, timeout=30)
            else:
                reply = httpx.post(f"{url}{path}", data=form, timeout=30)
            assert 400 <= reply.status_code < 500, (path, form, reply.status_code, reply.text)
            if message:
                assert message in reply.json()["error"]["message"], (path, form)
        assert httpx.post(f"{url}{path}", json={"text": "stop"}, timeout=30).status_code == 400


def test_long_text_is_spoken_sentence_by_sentence_and_the_same_text_gives_the_same_audio(served_tts):
    tts = _riva(served_tts)
    text = " ".join(["Call five five one two. Stop. Dial nine oh one."] * 12)  # 576 characters, 36 sentences
    start = time.perf_counter()
    chunks = list(tts.synthesize_online(text, sample_rate_hz=16000))
    assert len(chunks) == 36 and time.perf_counter() - start < 120
    one = _riva(served_tts).synthesize("Dial nine oh one.", sample_rate_hz=16000).audio
    assert chunks[2].audio == one, "a sentence sounds the same alone and inside a long text (never padded)"


@pytest.fixture(scope="module")
def served_asr(digits_compiled, tmp_path_factory):
    yield from serving(digits_compiled / "profiles.yaml", tmp_path_factory.mktemp("asr-for-tts"))


@pytest.mark.slow
def test_round_trip_served_tts_then_served_asr_word_error_rate_at_most_20_percent(served_tts, served_asr):
    """Held-out sentences (none in the voice's training text) -> Riva TTS at 16 kHz -> Riva ASR."""
    trainer = script_module("make_tts_digits")
    texts = trainer.held_out_sentences()
    assert not set(texts) & set(trainer.training_sentences())
    tts = _riva(served_tts)
    asr = riva.client.ASRService(riva.client.Auth(uri=f"127.0.0.1:{served_asr.grpc_port}"))
    config = riva.client.RecognitionConfig(encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=16000,
                                           language_code="en-US", max_alternatives=1)
    heard = []
    for text in texts:
        audio = tts.synthesize(text, sample_rate_hz=16000).audio
        result = asr.offline_recognize(audio, config)
        heard.append(result.results[0].alternatives[0].transcript if result.results else "")
    wer = asr_trainer().word_error_rate(texts, heard)
    print(f"round trip over {len(texts)} held-out sentences: word error rate {wer:.3f}")
    assert wer <= 0.20, f"word error rate {wer:.3f}: " + "; ".join(f"{t!r} -> {h!r}" for t, h in zip(texts, heard))


@pytest.mark.gpu
def test_gpu_serves_the_voice_from_its_tensorrt_rtx_engine_with_the_generic_profiles_audio(tts_compiled, tmp_path):
    """The engine's mel frames are data-dependent (they follow the predicted durations): the
    engine runner takes them through TensorRT's output allocator."""
    from helpers.gpu import needs as _needs

    gpu = _needs("tensorrt_rtx", "cuda")
    if gpu.compute_capability != "8.9":
        pytest.skip(f"the example builds its TensorRT-RTX engine for 8.9; this GPU is {gpu.compute_capability}")
    audio = {}
    for profile in ("onnxruntime-fp32-throughput", "tensorrt_rtx-sm89-fp32-throughput"):
        runtime = next(serving(tts_compiled / "profiles.yaml", tmp_path / profile, NIM_MODEL_PROFILE=profile))
        try:
            audio[profile] = _pcm(_riva(runtime).synthesize("call five five one two", sample_rate_hz=16000).audio)
        finally:
            assert runtime.stop() == 0
    generic, engine = audio.values()
    assert abs(len(generic) - len(engine)) <= 256, "the same durations, within a frame"


# -- a neural vocoder: a NeMo HiFiGAN checkpoint as source.vocoder --

def _hifigan(path: Path, mels: int = 80) -> Path:
    """A tiny random-weight HifiGanModel saved by NeMo itself, hearing the voice's mel spectrograms
    (22.05 kHz, hop 256) or, with other `mels`, not."""
    import torch
    from nemo.collections.tts.models import HifiGanModel
    from omegaconf import OmegaConf

    from nimbuild.export.asr import quiet

    torch.manual_seed(0)
    pre = {"_target_": "nemo.collections.asr.parts.preprocessing.features.FilterbankFeatures", "nfilt": mels,
           "lowfreq": 0, "highfreq": 8000, "n_fft": 1024, "n_window_size": 1024, "n_window_stride": 256, "pad_to": 0,
           "pad_value": -11.52, "sample_rate": 22050, "window": "hann", "normalize": None, "preemph": None,
           "dither": 0.0, "frame_splicing": 1, "log": True, "log_zero_guard_type": "clamp",
           "log_zero_guard_value": 1e-05, "mag_power": 1.0, "use_grads": False, "exact_pad": True}
    generator = {"_target_": "nemo.collections.tts.modules.hifigan_modules.Generator", "resblock": 1,
                 "upsample_rates": [8, 8, 2, 2], "upsample_kernel_sizes": [16, 16, 4, 4],
                 "upsample_initial_channel": 32, "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3, 5]]}
    # the dataset is named (HifiGanModel reads its class) but never built: defer_setup
    config = {"preprocessor": pre, "generator": generator, "max_steps": 1,
              "train_ds": {"dataset": {"_target_": "nemo.collections.tts.data.dataset.VocoderDataset"}, "defer_setup": True},
              "optim": {"_target_": "torch.optim.AdamW", "lr": 2e-4}}
    with quiet():
        HifiGanModel(cfg=OmegaConf.create(config)).eval().save_to(str(path))
    return path


def _with_vocoder(vocoder: Path) -> str:
    generic_only = RECIPE.read_text().split("targets:\n")[0] + "targets:\n  - {type: generic, backend: onnxruntime, " \
        "precisions: [fp32]}\n" + "serving:" + RECIPE.read_text().split("serving:")[1]
    return generic_only.replace("  vocoder: griffin-lim\n", f"  vocoder: {{nemo: {vocoder}}}\n")


@pytest.mark.slow
def test_a_hifigan_vocoder_checkpoint_is_exported_checked_against_nemo_and_served(tmp_path):
    pytest.importorskip("nemo", reason="the nemo extra is not installed")
    from click.testing import CliRunner

    from nimbuild.cli import main
    from nimbuild.profiles.manifest import load_manifest

    recipe = tmp_path / "tts-hifigan.yaml"
    recipe.write_text(_with_vocoder(_hifigan(tmp_path / "hifigan.nemo")).replace(
        "nemo: tts-digits.nemo", f"nemo: {REPO / 'examples/tts-digits/tts-digits.nemo'}"))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["-q", "compile", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    (profile,) = load_manifest(out / "profiles.yaml").profiles
    assert "tts/vocoder.onnx" in profile.files
    audio = profile.build["parity"]["outputs"]["audio"]
    assert float(audio["max_abs"]) < 1e-3 and float(audio["cosine_min"]) > 0.9999
    info = json.loads((out / profile.files["model_info.json"].uri).read_text())
    assert info["runtime"]["vocoder"] == {"kind": "hifigan", "model_class": "HifiGanModel", "graph": "tts/vocoder.onnx"}
    runtime = next(serving(out / "profiles.yaml", tmp_path / "cache"))
    try:
        made = _pcm(_riva(runtime).synthesize("call five five one two").audio)
        assert len(made) > 0 and len(made) % 256 == 0, "the vocoder makes one hop of audio per mel frame"
    finally:
        assert runtime.stop() == 0
    mismatched = tmp_path / "mismatched.yaml"
    mismatched.write_text(recipe.read_text().replace(str(tmp_path / "hifigan.nemo"), str(_hifigan(tmp_path / "h64.nemo", 64))))
    refused = CliRunner().invoke(main, ["-q", "compile", str(mismatched), "--out", str(tmp_path / "out64")])
    assert refused.exit_code == 2
    assert "the vocoder does not hear this model's mel spectrograms: mel bands 64 (the spectrogram generator's: 80)" \
        in refused.output


def test_schemathesis_finds_tts_apis_as_their_openapi_document_says(served_tts):
    """Issue 31: generated requests against the speech synthesis APIs, from the runtime's own
    OpenAPI document: no 500, every status, content type and body as documented."""
    from helpers.servers import assert_api_as_documented

    assert_api_as_documented(served_tts.url, {"/v1/audio/synthesize_online", "/v1/audio/synthesize"}, precise=False)


def test_generated_riva_requests_get_ok_or_a_status_the_client_can_act_on(served_tts):
    """Issue 31: Riva request messages with any value in any field (tests/helpers/riva_messages.py): each
    is answered, or refused INVALID_ARGUMENT / NOT_FOUND / OUT_OF_RANGE with a message; never
    UNKNOWN or INTERNAL."""
    from riva.client.proto import riva_tts_pb2 as rtts
    from riva.client.proto import riva_tts_pb2_grpc

    from helpers.riva_messages import answered_as_documented

    answered_as_documented(served_tts.grpc_port, riva_tts_pb2_grpc.RivaSpeechSynthesisStub,
                           {"Synthesize": rtts.SynthesizeSpeechRequest,
                            "GetRivaSynthesisConfig": rtts.RivaSynthesisConfigRequest},
                           streaming={"SynthesizeOnline": rtts.SynthesizeSpeechRequest})
