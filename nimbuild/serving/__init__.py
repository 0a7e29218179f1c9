"""Code that runs on both sides: in the build's parity gates and, unchanged, where profiles are served.

The contract of this package, checked by tests/unit/test_serving_contract.py:
- Each module imports at its top only the standard library, numpy and this package. Anything else
  (scipy, soundfile, sentencepiece, text_unidecode) is imported inside the function that needs it,
  and must be something the serving side installs (the `serve` extra).
- Nothing here imports the rest of nimbuild (build code, the CLI, profiles), torch or onnx.

Why: runtime_min copies this folder whole into every Python model of a Triton repository
(runtime_min.tasks.serving_code), so the numbers a gate checked at build time are computed by the
same lines that answer requests; and the build key of each profile hashes this folder
(nimbuild.compile.SHAPING_CODE), so editing any of it rebuilds the profiles it may have shaped.

What lives here: pooling (embeddings), audio (speech features and CTC decoding), transducer
(RNNT/TDT search), generation (the decoder loop and KV cache), seq2seq (encoder-decoder search and
the generation-config rules), whisper_audio and whisper_asr (Whisper's front end and prompt),
griffin_lim (a vocoder without a network), and the text helpers the API front ends share with the
build: tts_text (sentences, normalisation, characters) and translation_text (SentencePiece pieces).
"""
