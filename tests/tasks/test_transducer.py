"""Transducers (RNNT and TDT): NeMo EncDecRNNTModel and EncDecRNNTBPEModel checkpoints (made here by
nemo_toolkit, and the committed asr-digits-rnnt model trained on espeak-ng speech) exported to the
encoder and NeMo's decoder-joint graph, the greedy search checked token for token against NeMo's;
then served through a real tritonserver over HTTP and Riva's gRPC API, offline and streaming."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import riva.client

from helpers.examples import asr_trainer, script_module
from helpers.paths import REPO
from helpers.recipes import compiled
from helpers.runtime import serving
from helpers.speech import riva_asr as _riva  # the CTC tests' clients
from helpers.speech import transcribe as transcribe_as
from nimbuild.errors import NimbuildError, ParityError
from nimbuild.util.progress import Reporter
from nimbuild.util.yamlsafe import load_yaml

pytest.importorskip("nemo", reason="the nemo extra is not installed")
QUIET = Reporter(quiet=True)
RNNT_RECIPE = REPO / "examples" / "asr-digits-rnnt" / "recipe.yaml"
RNNT_NEMO = REPO / "examples" / "asr-digits-rnnt" / "asr-digits-rnnt.nemo"
MODEL = "asr-digits-rnnt"
SPEECH = [REPO / "examples" / "asr-digits" / "speech" / n for n in ("call-five-five-one-two.wav", "stop-cancel.wav")]


@pytest.fixture(scope="session")
def tiny_transducers(tmp_path_factory):
    """Random-weight transducers saved by NeMo itself: {kind: path.nemo}. "rnnt" and "tdt" (durations
    0-4) are character EncDecRNNTModels, "bpe" an EncDecRNNTBPEModel with a sentencepiece tokenizer,
    "hybrid" an EncDecHybridRNNTCTCBPEModel (TDT and a CTC head, as parakeet-tdt_ctc).
    Untrained, they emit many labels per frame (RNNT up to max_symbols), which is what tests the
    search's rules hardest."""
    import torch
    from nemo.collections.asr.models import EncDecHybridRNNTCTCBPEModel, EncDecRNNTBPEModel, EncDecRNNTModel
    from omegaconf import OmegaConf

    from helpers.nemo_models import LABELS
    from helpers.nemo_models import sentencepiece_dir as _sentencepiece_dir
    from nimbuild.export.asr import quiet

    trainer = script_module("make_asr_digits_rnnt")  # its config() is the transducer every tiny model here uses
    out = {}
    for kind in ("rnnt", "tdt", "bpe", "hybrid"):
        torch.manual_seed(0)
        config = trainer.config(LABELS, durations=[0, 1, 2, 3, 4] if kind in ("tdt", "hybrid") else None)
        config["encoder"]["n_layers"] = 1
        with quiet():
            if kind in ("bpe", "hybrid"):
                del config["labels"]
                config["tokenizer"] = {"dir": str(_sentencepiece_dir(tmp_path_factory.mktemp("spm"))), "type": "bpe"}
                config["decoder"]["vocab_size"], config["joint"]["num_classes"], config["joint"]["vocabulary"] = -1, -1, []
            if kind == "hybrid":  # parakeet-tdt_ctc's shape: a TDT transducer and a CTC head on one encoder
                config["aux_ctc"] = {"ctc_loss_weight": 0.3, "decoding": {"strategy": "greedy_batch"}, "decoder": {
                    "_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": None, "num_classes": -1,
                    "vocabulary": []}}
                model = EncDecHybridRNNTCTCBPEModel(cfg=OmegaConf.create(config))
                with torch.no_grad():  # the CTC head sharper too, for the same reason as the joint below
                    model.ctc_decoder.decoder_layers[0].weight.mul_(20.0)
            elif kind == "bpe":
                model = EncDecRNNTBPEModel(cfg=OmegaConf.create(config))
            else:
                model = EncDecRNNTModel(cfg=OmegaConf.create(config))
            with torch.no_grad():  # sharper logits: an untrained joint's near ties would flip on float noise
                model.joint.joint_net[-1].weight.mul_(20.0)
            path = tmp_path_factory.mktemp(f"nemo-{kind}") / f"tiny-{kind}.nemo"
            model.save_to(str(path))
        out[kind] = path
    return out


def _recipe(source: Path, modes: str = "[ofl]", targets: str = "[{type: generic, backend: onnxruntime, precisions: [fp32]}]") -> str:
    return (f"name: tiny-rnnt\nrelease: 0.1.0\nsource: {{nemo: {source}}}\ntask: asr-rnnt\n"
            f"export:\n  inputs:\n    audio_signal: {{batch: [1, 2, 4], frames: [1, 200, 800]}}\n"
            f"  audio: [{', '.join(str(p) for p in SPEECH)}]\n"
            f"precisions: {{fp32: {{}}}}\ntargets: {targets}\nserving: {{max_batch_size: 4, modes: {modes}}}\n")


# --- the search itself ----------------------------------------------------------------------------

class _Joint:
    """A decoder-joint stand-in for unit tests of the search's rules: logits from a seeded table
    indexed by (frame value, last label), states counting the labels fed."""

    def __init__(self, vocab: int, durations: int, seed: int = 0):
        self.table = np.random.default_rng(seed).standard_normal((64, vocab + 1, vocab + 1 + durations)).astype(np.float32)

    def run(self, names, feeds):
        frame = feeds["encoder_outputs"][:, 0, 0].astype(int) % 64
        label = feeds["targets"][:, 0]
        logits = self.table[frame, label][:, None, None, :]
        return [logits, feeds["input_states_1"] + 1, feeds["input_states_2"]]


@pytest.mark.parametrize("durations", [None, [0, 1, 2, 3, 4]])
def test_a_search_split_into_chunks_equals_the_search_in_one_go(durations):
    """A stream searches its frames chunk after chunk, carrying the hypothesis: the tokens, frames
    and durations equal one search over all frames, wherever the cuts fall (a TDT jump may land
    past a chunk's end and must be taken up in the next)."""
    from nimbuild.serving.transducer import TransducerDecoder

    search = TransducerDecoder(_Joint(6, len(durations or [])), blank=6, durations=durations, max_symbols=3,
                               state_shapes=[(1, 2), (1, 2)])
    frames = np.random.default_rng(1).integers(0, 64, size=(97, 1)).astype(np.float32)
    whole = search.start()
    search.decode([whole], [frames], [0])
    assert len(whole.tokens) > 10
    for cuts in ([5, 40, 41, 90], [1, 2, 3], list(range(0, 97, 7))):
        pieced = search.start()
        for start, end in zip([0] + cuts, cuts + [97]):
            search.decode([pieced], [frames[start:end]], [start])
        assert (pieced.tokens, pieced.frames, pieced.durations) == (whole.tokens, whole.frames, whole.durations)
    # rows of one batch advance independently: batched equals one by one
    rows = [frames[:97], frames[10:50], frames[3:4]]
    batched = [search.start() for _ in rows]
    search.decode(batched, rows, [0, 0, 0])
    for row, hypothesis in zip(rows, batched):
        alone = search.start()
        search.decode([alone], [row], [0])
        assert hypothesis.tokens == alone.tokens and hypothesis.frames == alone.frames


def test_max_symbols_bounds_the_labels_on_one_frame():
    from nimbuild.serving.transducer import TransducerDecoder

    joint = _Joint(6, 0)
    joint.table[..., :6] += 100.0  # never blank: only max_symbols moves the search on
    search = TransducerDecoder(joint, blank=6, durations=None, max_symbols=4, state_shapes=[(1, 2), (1, 2)])
    h = search.start()
    search.decode([h], [np.zeros((5, 1), np.float32)], [0])
    assert h.frames == [f for f in range(5) for _ in range(4)]


# --- export and parity ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rnnt", "tdt", "bpe"])
def test_tiny_transducers_export_with_the_search_equal_to_nemo(tiny_transducers, write_recipe, tmp_path, kind):
    import onnx

    from nimbuild.export import export_reference
    from nimbuild.recipe import load_recipe
    from nimbuild.sources import resolve_source

    recipe = load_recipe(write_recipe(_recipe(tiny_transducers[kind])))
    ref = export_reference(resolve_source(recipe), recipe, tmp_path / "ref", QUIET)
    encoder = onnx.load(str(ref.files[0]))
    assert [i.name for i in encoder.graph.input] == ["audio_signal", "length"]
    assert [o.name for o in encoder.graph.output] == ["outputs", "encoded_lengths"]
    assert set(ref.assets) == {"asr/filterbank.npy", "asr/vocabulary.json", "asr/decoder_joint.onnx"}
    joint = onnx.load(str(ref.assets["asr/decoder_joint.onnx"]))
    assert [i.name for i in joint.graph.input][:3] == ["encoder_outputs", "targets", "target_length"]
    decoder = ref.runtime_info["decoder"]
    assert decoder["kind"] == ("tdt" if kind == "tdt" else "rnnt") and decoder["max_symbols"] == 10
    assert decoder["durations"] == ([0, 1, 2, 3, 4] if kind == "tdt" else [])
    vocabulary = json.loads(ref.assets["asr/vocabulary.json"].read_text())
    assert decoder["blank"] == len(vocabulary["tokens"]) == (48 if kind == "bpe" else 28)
    summary = ref.parity.summary()
    # the parity batches' rows (mixed lengths, padded) and the recipe's two clips, every token equal
    assert summary["transcripts_checked"] == summary["lengths_checked"] + 2
    assert float(summary["outputs"]["outputs"]["max_abs"]) < 1e-4


def test_a_search_that_differs_from_nemo_is_refused(tiny_transducers, write_recipe, tmp_path, monkeypatch):
    """max_symbols read wrong (5, where NeMo's decoder allows 10): the random model emits the
    most it may on every frame, so the transcripts differ and the build is refused, naming where."""
    from nimbuild.compile import compile_recipe
    from nimbuild.export import asr
    from nimbuild.recipe import load_recipe

    real = asr.transducer_info
    monkeypatch.setattr(asr, "transducer_info", lambda model, vocabulary: {**real(model, vocabulary), "max_symbols": 5})
    recipe = load_recipe(write_recipe(_recipe(tiny_transducers["rnnt"])))
    differs = r"differs from NeMo's greedy decoding \(features \d+x\d+, row \d+\).*first difference at token \d+"
    with pytest.raises(ParityError, match=differs):
        compile_recipe(recipe, tmp_path / "out", QUIET)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_built_as_the_other_speech_task_is_refused_with_the_task_to_use(tiny_transducers, write_recipe, tmp_path):
    from nimbuild.export import export_reference
    from nimbuild.recipe import load_recipe
    from nimbuild.sources import resolve_source

    ctc = load_recipe(write_recipe(_recipe(REPO / "examples" / "asr-digits" / "asr-digits.nemo")))
    with pytest.raises(NimbuildError, match=r"task asr-rnnt takes EncDecRNNTModel or EncDecRNNTBPEModel .* this one "
                                            r"is EncDecCTCModel \(build it with task: asr-ctc\)"):
        export_reference(resolve_source(ctc), ctc, tmp_path / "a", QUIET)
    rnnt = load_recipe(write_recipe(_recipe(tiny_transducers["rnnt"]).replace("task: asr-rnnt", "task: asr-ctc")))
    with pytest.raises(NimbuildError, match=r"this one is EncDecRNNTModel \(build it with task: asr-rnnt\)"):
        export_reference(resolve_source(rnnt), rnnt, tmp_path / "b", QUIET)


def test_inspect_names_the_decoder_and_the_task(tiny_transducers):
    from nimbuild.sources.nemo import resolve_nemo

    assert resolve_nemo(str(tiny_transducers["tdt"]), REPO).summary()["decoder"] == "tdt"
    summary = resolve_nemo(str(RNNT_NEMO), REPO).summary()
    assert (summary["decoder"], summary["task"], summary["vocabulary_size"]) == ("rnnt", "asr-rnnt", 28)


# --- the committed example: compile, serve, compare with NeMo -------------------------------------

@pytest.fixture(scope="session")
def rnnt_compiled(tmp_path_factory):
    return compiled(tmp_path_factory, RNNT_RECIPE)


def test_the_example_compiles_to_generic_engine_and_rmir_profiles_with_the_decoder_joint(rnnt_compiled, tmp_path):
    from nimbuild.profiles.manifest import load_manifest
    from nimbuild.targets.rmir import deploy

    manifest = load_manifest(rnnt_compiled / "profiles.yaml")
    assert sorted(p.description for p in manifest.profiles) == [
        f"{b}-fp32-throughput-{m}" for b in ("onnxruntime", "rmir", "tensorrt_rtx-sm89") for m in ("ofl", "str")]
    for profile in manifest.profiles:
        assert profile.tags["name"] == MODEL and profile.build["parity"]["transcripts_checked"] >= 2
        if profile.tags["type"] != "rmir":
            assert "asr/decoder_joint.onnx" in profile.files
    engine = next(p for p in manifest.profiles if p.tags["backend"] == "tensorrt_rtx")
    info = json.loads((rnnt_compiled / engine.files["model_info.json"].uri).read_text())
    assert info["engine"] == "model.plan" and info["outputs"][0]["name"] == "outputs"
    rmir = next(p for p in manifest.profiles if p.tags["type"] == "rmir")
    plan, hit = deploy(rnnt_compiled / rmir.files["model.rmir"].uri, tmp_path / "cache", target="8.6")
    assert not hit and plan.stat().st_size > 0
    assert {p.name for p in (plan.parent / "asr").iterdir()} == {"filterbank.npy", "vocabulary.json", "decoder_joint.onnx"}


@pytest.fixture(scope="module")
def served_rnnt(rnnt_compiled, tmp_path_factory):
    yield from serving(rnnt_compiled / "profiles.yaml", tmp_path_factory.mktemp("rnnt-cache"), NIM_TAGS_SELECTOR="mode=str")


def _transcribe(url: str, path: Path, model: str = MODEL, **fields) -> httpx.Response:
    return transcribe_as(url, path, model, **fields)


def _nemo_transcripts(source: Path, paths: list[Path], batch_size: int = 8) -> list[str]:
    from nimbuild.export.asr import quiet, restore
    from nimbuild.sources.nemo import resolve_nemo

    model = restore(resolve_nemo(str(source), REPO), "asr-rnnt")
    with quiet():
        hypotheses = model.transcribe([str(p) for p in paths], batch_size=batch_size, verbose=False)
    return [h.text if hasattr(h, "text") else h for h in hypotheses]


def test_served_transcripts_equal_nemo_transcribe_and_meet_the_word_error_rate(served_rnnt, held_out):
    paths = [path for _, path, _ in held_out]
    served = [_transcribe(served_rnnt.url, path).json()["text"] for path in paths]
    assert served == _nemo_transcripts(RNNT_NEMO, paths)
    wer = asr_trainer().word_error_rate([text for text, _, _ in held_out], served)
    assert wer < 0.10, f"held-out word error rate {wer:.3f}"


def test_word_timestamps_lie_inside_the_audio_and_follow_the_transcript(served_rnnt, held_out):
    import soundfile
    import tritonclient.http as triton_http

    config = triton_http.InferenceServerClient(served_rnnt.triton_url).get_model_config(f"{MODEL}-decoder")
    recipe = load_yaml((REPO / "examples" / "asr-digits-rnnt" / "recipe.yaml").read_text())[0]
    delay = recipe["serving"]["dynamic_batching"]["max_queue_delay_us"]
    assert int(config["dynamic_batching"].get("max_queue_delay_microseconds", 0)) == delay  # the recipe's, deployed

    for _, path, _ in held_out[:4]:
        body = _transcribe(served_rnnt.url, path, response_format="verbose_json",
                           **{"timestamp_granularities[]": "word"}).json()
        words = body["words"]
        assert [w["word"] for w in words] == body["text"].split()
        ends = [w["end"] for w in words]
        assert all(0 <= w["start"] < w["end"] for w in words) and ends == sorted(ends)
        assert ends[-1] <= soundfile.info(str(path)).duration + 0.05


def test_riva_client_recognizes_and_streams_with_interim_results(served_rnnt, held_out, tmp_path):
    import soundfile

    service = _riva(served_rnnt)
    _, path, native = held_out[5]
    expected = _transcribe(served_rnnt.url, path).json()["text"]
    config = riva.client.RecognitionConfig(language_code="en-US", enable_word_time_offsets=True)
    (result,) = service.offline_recognize(path.read_bytes(), config).results
    assert result.alternatives[0].transcript == expected
    assert [w.word for w in result.alternatives[0].words] == expected.split()
    assert all(0 < w.confidence <= 1 for w in result.alternatives[0].words)
    wav = tmp_path / "clip.wav"
    audio, rate = soundfile.read(str(native), dtype="int16")
    soundfile.write(str(wav), audio, rate, subtype="PCM_16")
    streaming = riva.client.StreamingRecognitionConfig(config=config, interim_results=True)
    with riva.client.AudioChunkFileIterator(str(wav), 1600) as chunks:
        results = [r for response in service.streaming_response_generator(chunks, streaming) for r in response.results]
    assert len(results) >= 3 and [r.is_final for r in results] == [False] * (len(results) - 1) + [True]
    assert results[-1].alternatives[0].transcript == _transcribe(served_rnnt.url, native).json()["text"]


def test_concurrent_streams_end_near_the_offline_transcript(served_rnnt, held_out):
    """All 40 held-out clips streamed by 8 clients at once, decoded buffered (bounded left context,
    800 ms right context) with the search carried from chunk to chunk."""
    import concurrent.futures

    import soundfile

    def stream(native):
        audio, rate = soundfile.read(str(native), dtype="int16")
        config = riva.client.StreamingRecognitionConfig(config=riva.client.RecognitionConfig(
            encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=rate, language_code="en-US"),
            interim_results=True)
        pieces = [audio[i:i + 1600].tobytes() for i in range(0, len(audio), 1600)]
        results = [r for resp in _riva(served_rnnt).streaming_response_generator(pieces, config) for r in resp.results]
        return results[-1].alternatives[0].transcript

    trainer = asr_trainer()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        finals = list(pool.map(stream, [native for _, _, native in held_out]))
    offline = [_transcribe(served_rnnt.url, native).json()["text"] for _, _, native in held_out]
    truth = [text for text, _, _ in held_out]
    assert sum(f == o for f, o in zip(finals, offline)) >= 36, list(zip(finals, offline))
    assert trainer.word_error_rate(truth, finals) <= trainer.word_error_rate(truth, offline) + 0.03


def _served_speech(manifest: Path, cache: Path) -> list[str]:
    """The recipe's speech clips transcribed by runtime_min serving `manifest` (started and stopped here)."""
    from helpers.runtime import Runtime

    runtime = Runtime(manifest, cache)
    try:
        runtime.wait_ready(120)
        return [_transcribe(runtime.url, path, model="tiny-rnnt").json()["text"] for path in SPEECH]
    finally:
        assert runtime.stop() == 0


def test_a_tdt_model_is_served_as_nemo_transcribes_it(tiny_transducers, write_recipe, tmp_path):
    """TDT through the whole runtime: the served search advances by the predicted durations as NeMo's
    greedy decoding does on NeMo's own preprocessor and encoder (the path its transcribe() takes), fed
    the audio the server decodes: transcribe() would resample the 22.05 kHz clips with another
    resampler, and an untrained model's transcript is not robust to that."""
    import torch
    from click.testing import CliRunner

    from nimbuild.cli import main
    from nimbuild.export.asr import quiet, restore
    from nimbuild.serving.audio import Vocabulary, read_audio
    from nimbuild.sources.nemo import resolve_nemo

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["-q", "compile", str(write_recipe(_recipe(tiny_transducers["tdt"]))), "--out", str(out)])
    assert result.exit_code == 0, result.output
    served = _served_speech(out / "profiles.yaml", tmp_path / "cache")
    model = restore(resolve_nemo(str(tiny_transducers["tdt"]), REPO), "asr-rnnt")
    # NeMo's tokens, joined by nimbuild: NeMo 3.0's own text for a character TDT model leaves out some
    # of its tokens' characters (every 'y' of this model's output), which no transcript should
    vocabulary = Vocabulary([str(t) for t in model.joint.vocabulary], "characters")
    expected = []
    for path in SPEECH:
        audio = torch.from_numpy(read_audio(path.read_bytes(), 16000))[None]
        with torch.inference_mode(), quiet():
            encoded, lengths = model(input_signal=audio, input_signal_length=torch.tensor([audio.shape[1]]))
            hypotheses = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=encoded, encoded_lengths=lengths)
        tokens = (hypotheses[0] if isinstance(hypotheses, tuple) else hypotheses)[0].y_sequence
        expected.append(vocabulary.text([int(t) for t in tokens]))
    assert served == expected and all(served)


def test_a_hybrid_tdt_ctc_model_is_built_as_its_transducer_or_its_ctc_head(tiny_transducers, write_recipe, tmp_path):
    """parakeet-tdt_ctc's class: `recipe init` takes it as a transducer (NeMo decodes it so), and
    `task: asr-ctc` builds its CTC head instead; each is checked against NeMo, and the CTC head's
    profile is served as NeMo's own CTC greedy decoding transcribes (on the audio the server reads)."""
    import torch
    from click.testing import CliRunner

    from nimbuild.cli import main
    from nimbuild.export import export_reference
    from nimbuild.export.asr import quiet, restore
    from nimbuild.profiles.manifest import load_manifest
    from nimbuild.recipe import load_recipe
    from nimbuild.serving.audio import read_audio
    from nimbuild.sources import resolve_source
    from nimbuild.sources.nemo import resolve_nemo

    hybrid = tiny_transducers["hybrid"]
    result = CliRunner().invoke(main, ["recipe", "init", str(hybrid), "--out", str(tmp_path / "init.yaml")])
    assert result.exit_code == 0 and "task asr-rnnt" in result.output, result.output
    recipe = load_recipe(write_recipe(_recipe(hybrid)))
    transducer = export_reference(resolve_source(recipe), recipe, tmp_path / "rnnt", QUIET)
    assert (transducer.runtime_info["head"], transducer.runtime_info["decoder"]["kind"]) == ("transducer", "tdt")
    assert transducer.parity.summary()["transcripts_checked"] > 2

    out = tmp_path / "ctc"
    ctc_recipe = write_recipe(_recipe(hybrid).replace("task: asr-rnnt", "task: asr-ctc"), "ctc.yaml")
    result = CliRunner().invoke(main, ["-q", "compile", str(ctc_recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    (profile,) = load_manifest(out / "profiles.yaml").profiles
    info = json.loads((out / profile.files["model_info.json"].uri).read_text())
    assert info["runtime"]["head"] == "ctc" and [o["name"] for o in info["outputs"]] == ["logprobs"]
    served = _served_speech(out / "profiles.yaml", tmp_path / "cache")
    model = restore(resolve_nemo(str(hybrid), REPO), "asr-ctc")
    expected = []
    with torch.inference_mode(), quiet():
        model.change_decoding_strategy(decoder_type="ctc", verbose=False)
        for path in SPEECH:
            audio = torch.from_numpy(read_audio(path.read_bytes(), 16000))[None]
            features, length = model.preprocessor(input_signal=audio, length=torch.tensor([audio.shape[1]]))
            encoded, encoded_length = model.encoder(audio_signal=features, length=length)
            hypotheses = model.ctc_decoding.ctc_decoder_predictions_tensor(model.ctc_decoder(encoder_output=encoded),
                                                                           decoder_lengths=encoded_length)
            expected.append((hypotheses[0] if isinstance(hypotheses, tuple) else hypotheses)[0].text)
    assert served == expected and all(served)
