"""Canary: a fresh random-weight `EncDecMultiTaskModel` saved by NeMo (a FastConformer, a pre-LN
transformer decoder, Canary's aggregate tokenizer with English and German:
examples/tiny-canary/make_tiny_canary.py)
through `nimbuild recipe init`, compile (generic, TensorRT-RTX, RMIR) and `runtime_min serve`; the
served transcripts and translations into English, over OpenAI's SDK, Riva's ASR client and a
stream, equal NeMo's own `transcribe()` with greedy decoding on the same audio.

The untrained decoder repeats one token until its budget (NeMo's: the clip's encoder frames plus
the checkpoint's max_generation_delta, the prompt included), so what these transcripts test hardest
is that budget and the prompt; the build's gate compares every token (nimbuild.export.canary)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import riva.client
from click.testing import CliRunner

from helpers.examples import script_module
from helpers.runtime import serving
from helpers.speech import RATE, as_served, riva_asr, seeded_clip, transcribe, wav_bytes
from nimbuild.cli import main

pytest.importorskip("nemo", reason="the nemo extra is not installed")
write_tiny_canary = script_module("make_tiny_canary").write_tiny_canary



CLIPS = [seeded_clip(1, 2.0), seeded_clip(2, 4.5), seeded_clip(3, 0.7)]


def _compile(checkpoint, root, *extra: str):
    runner = CliRunner()
    result = runner.invoke(main, ["recipe", "init", str(checkpoint), "--out", str(root / "recipe.yaml")])
    assert result.exit_code == 0 and "task asr-canary" in result.output, result.output
    result = runner.invoke(main, ["-q", "compile", str(root / "recipe.yaml"), "--out", str(root / "out"), *extra])
    assert result.exit_code == 0, result.output
    return root / "out"


@pytest.fixture(scope="module")
def canary(tmp_path_factory):
    root = tmp_path_factory.mktemp("canary")
    checkpoint = write_tiny_canary(root / "checkpoint")
    return checkpoint, _compile(checkpoint, root)


@pytest.fixture(scope="module")
def reference(canary):
    """NeMo alone: `transcribe()` with greedy decoding (the checkpoint's generation delta), a clip at a time."""
    from nemo.collections.asr.models import EncDecMultiTaskModel
    from omegaconf import OmegaConf

    from nimbuild.export.asr import quiet

    checkpoint, _ = canary
    with quiet():
        model = EncDecMultiTaskModel.restore_from(str(checkpoint), map_location="cpu").eval()
        model.change_decoding_strategy(OmegaConf.create({"strategy": "greedy", "greedy": {"max_generation_delta": 50}}))
    cache = {}

    def nemo_text(audio: np.ndarray, source: str, target: str) -> str:
        key = (audio.tobytes(), source, target)
        if key not in cache:
            with quiet():
                (hypothesis,) = model.transcribe([as_served(audio)], batch_size=1, source_lang=source, target_lang=target,
                                                 task="asr" if source == target else "ast", pnc="yes", verbose=False)
            cache[key] = hypothesis.text.strip()  # served without the space NeMo's first piece leaves
        return cache[key]

    return nemo_text


@pytest.fixture(scope="module")
def served(canary, tmp_path_factory):
    _, out = canary  # the streaming profile: its offline model serves files as the ofl profile's does
    yield from serving(out / "profiles.yaml", tmp_path_factory.mktemp("canary-cache"), NIM_TAGS_SELECTOR="mode=str")


def test_recipe_init_takes_canary_and_compile_gates_every_profile_on_greedy_tokens(canary):
    from nimbuild.profiles.manifest import load_manifest

    _, out = canary
    profiles = load_manifest(out / "profiles.yaml").profiles
    assert sorted((p.tags["backend"], p.tags["mode"]) for p in profiles) == [
        (backend, mode) for backend in ("onnxruntime", "rmir", "tensorrt_rtx") for mode in ("ofl", "str")]
    parity = next(p for p in profiles if p.tags["backend"] == "onnxruntime").build["parity"]
    # the prompts: en, de, de->en and en->de, with and without punctuation
    assert parity["cases"] == ["en->en", "de->en", "en->de"] and int(parity["prompts_checked"]) == 8
    assert int(parity["greedy_tokens_compared"]) > 300 and float(parity["outputs"]["features"]["max_abs"]) < 1e-3


def test_openai_sdk_transcribes_and_translates_as_nemo_transcribes(served, reference):
    from openai import OpenAI

    client = OpenAI(base_url=f"{served.url}/v1", api_key="none")
    cases = [(i, language, task) for i in range(len(CLIPS)) for language, task in
             ((None, "transcribe"), ("en", "transcribe"), ("de", "transcribe"), ("de", "translate"))]

    def ask(case):
        i, language, task = case
        call = client.audio.translations.create if task == "translate" else client.audio.transcriptions.create
        # OpenAI's translations detect the language and take none; Canary must be told (the SDK's extra_body)
        extra = ({"extra_body": {"language": language}} if task == "translate" else {"language": language}) if language else {}
        return call(model="tiny-canary", file=("clip.wav", wav_bytes(CLIPS[i]), "audio/wav"), **extra).text

    with ThreadPoolExecutor(len(cases)) as pool:  # concurrent: the clips share Triton's batches
        served_texts = list(pool.map(ask, cases))
    expected = [reference(CLIPS[i], language or "en", "en" if task == "translate" else language or "en")
                for i, language, task in cases]
    assert served_texts == expected
    assert len({len(t) for t in expected}) >= 3, "transcripts' lengths follow the clips' (NeMo's budget)"


def test_riva_recognize_and_stream_answer_as_nemo(served, reference):
    service = riva_asr(served)
    config = riva.client.RecognitionConfig(language_code="de-DE", max_alternatives=1)
    response = service.offline_recognize(wav_bytes(CLIPS[0]), config)
    assert response.results[0].alternatives[0].transcript == reference(CLIPS[0], "de", "de")
    audio = CLIPS[1]
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    chunks = [pcm[i:i + 16000] for i in range(0, len(pcm), 16000)]  # 0.5 s each
    streaming = riva.client.StreamingRecognitionConfig(config=riva.client.RecognitionConfig(
        encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=RATE, language_code="en-US"), interim_results=True)
    results = [r for response in service.streaming_response_generator(chunks, streaming) for r in response.results]
    finals = [r.alternatives[0].transcript for r in results if r.is_final]
    assert finals == [reference(audio, "en", "en")] and any(not r.is_final for r in results)
    with pytest.raises(grpc.RpcError) as caught:
        service.offline_recognize(wav_bytes(CLIPS[0]), riva.client.RecognitionConfig(language_code="fr-FR"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "de, en" in caught.value.details()


def test_riva_custom_configuration_translates_both_ways_and_refuses_what_it_does_not_act_on(served, reference):
    """The ASR NIM's keys for Canary: `task`, `source_language`, `target_language` (out of English
    too, which OpenAI's translations cannot ask for); any other key, or a RecognitionConfig feature
    this server does not have, is INVALID_ARGUMENT naming it, not dropped."""
    service = riva_asr(served)

    def recognise(**fields):
        custom = fields.pop("custom", {})
        config = riva.client.RecognitionConfig(max_alternatives=1, **fields)
        config.custom_configuration.update(custom)
        return service.offline_recognize(wav_bytes(CLIPS[1]), config).results[0].alternatives[0].transcript

    assert recognise(language_code="en-US", custom={"target_language": "de-DE"}) == reference(CLIPS[1], "en", "de")
    assert recognise(language_code="de-DE", custom={"task": "translate"}) == reference(CLIPS[1], "de", "en")
    assert recognise(custom={"source_language": "de", "target_language": "en"}) == reference(CLIPS[1], "de", "en")
    for fields, needle in (({"custom": {"speaker": "1"}}, "custom_configuration: speaker not understood"),
                           ({"language_code": "en-US", "custom": {"task": "translate"}}, "translated into English"),
                           ({"profanity_filter": True}, "profanity_filter: not supported")):
        with pytest.raises(grpc.RpcError) as caught:
            recognise(**fields)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in caught.value.details(), fields


def test_requests_canary_cannot_answer_are_400s_naming_what_to_fix(served):
    import httpx

    def post(route: str, **data):
        return httpx.post(f"{served.url}/v1/audio/{route}", files={"file": ("a.wav", wav_bytes(CLIPS[0]), "audio/wav")},
                          data=data, timeout=60)

    checks = [(post("transcriptions", language="fr"), "this model takes de, en"),
              (post("translations"), "translated into English"),
              (post("translations", language="en"), "translated into English")]
    for response, needle in checks:
        assert response.status_code == 400 and needle in response.json()["error"]["message"], response.text


def test_a_canary2_checkpoint_builds_with_its_prompt_checked_against_nemo_and_reduced_precisions(tmp_path):
    """canary2's prompt (context, emotion, ITN, timestamp and diarization slots at their defaults), as
    canary-1b-flash writes it: the build checks nimbuild's prompts against NeMo's formatter and the
    tokens against transcribe(); its fp16 and int8 encoders are gated on the served tokens."""
    import yaml

    from nimbuild.profiles.manifest import load_manifest

    checkpoint = write_tiny_canary(tmp_path / "checkpoint", "canary2")
    runner = CliRunner()
    assert runner.invoke(main, ["recipe", "init", str(checkpoint), "--out", str(tmp_path / "recipe.yaml")]).exit_code == 0
    recipe = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    recipe["source"]["nemo"] = str(checkpoint)
    recipe["serving"]["modes"] = ["ofl"]
    recipe["precisions"] = {"fp32": {}, "fp16": {}, "int8": {}}  # gated on the served tokens, at the defaults
    recipe["targets"] = [{"type": "generic", "backend": "onnxruntime", "precisions": ["fp32", "fp16", "int8"]}]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = runner.invoke(main, ["-q", "compile", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    profiles = {p.tags["precision"]: p for p in load_manifest(tmp_path / "out" / "profiles.yaml").profiles}
    parity = profiles["fp32"].build["parity"]
    assert parity["cases"] == ["en->en", "de->en", "en->de"] and int(parity["prompts_checked"]) == 8
    for precision in ("fp16", "int8"):  # the parity audio's transcripts, 3 language pairs each
        gate = profiles[precision].build["gate"]
        assert gate["run"] and float(gate["token_agreement"]) >= float(gate["tokens_min"]) and gate["tokens_compared"] > 100


def test_a_canary_that_decodes_with_a_wider_beam_is_refused(tmp_path):
    """Greedy is what is served: a checkpoint whose transcribe() searches a beam of 4 would answer differently."""
    import tarfile

    import yaml

    checkpoint = write_tiny_canary(tmp_path / "checkpoint")
    with tarfile.open(checkpoint) as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    name = next(n for n in members if n.endswith("model_config.yaml"))
    config = yaml.safe_load(members[name])
    config["decoding"]["beam"]["beam_size"] = 4
    members[name] = yaml.safe_dump(config).encode()
    wider = tmp_path / "wider.nemo"
    with tarfile.open(wider, "w") as archive:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    runner = CliRunner()
    assert runner.invoke(main, ["recipe", "init", str(wider), "--out", str(tmp_path / "r.yaml")]).exit_code == 0
    result = runner.invoke(main, ["-q", "compile", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--target", "0"])
    assert result.exit_code != 0 and "beam of 4" in result.output and "Traceback" not in result.output, result.output


# --- the committed example: trained here on the digits speech -----------------------------------

WER_BOUND = 0.08  # measured: 0.039 on these 40 clips (examples/tiny-canary/README.md)


@pytest.fixture(scope="module")
def served_example(tmp_path_factory):
    from helpers.paths import REPO
    from helpers.recipes import compiled

    out = compiled(tmp_path_factory, REPO / "examples" / "tiny-canary" / "recipe.yaml", "--target", "0")
    yield from serving(out / "profiles.yaml", tmp_path_factory.mktemp("tiny-canary-cache"))


def test_the_example_transcribes_held_out_speech_as_nemo_does(served_example, held_out):
    """The 40 held-out clips the speech examples are scored on (voices, variants and speeds never
    trained on): served transcripts equal NeMo's own transcribe() on the same files, and the word
    error rate is the one the example's README reports."""
    from nemo.collections.asr.models import EncDecMultiTaskModel

    from helpers.examples import asr_trainer
    from helpers.paths import REPO
    from nimbuild.export.asr import quiet

    served = [transcribe(served_example.url, path, "tiny-canary", language="en").json()["text"] for _, path, _ in held_out]
    with quiet():
        model = EncDecMultiTaskModel.restore_from(str(REPO / "examples" / "tiny-canary" / "tiny-canary.nemo"),
                                                  map_location="cpu").eval()
        expected = [h.text.strip() for h in model.transcribe([str(path) for _, path, _ in held_out], batch_size=1, verbose=False,
                                                     num_workers=0, source_lang="en", target_lang="en", task="asr",
                                                     pnc="yes")]
    assert served == expected
    wer = asr_trainer().word_error_rate([text for text, _, _ in held_out], served)
    assert wer < WER_BOUND, f"held-out word error rate {wer:.3f}"
