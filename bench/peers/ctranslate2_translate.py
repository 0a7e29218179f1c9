"""CTranslate2 (a peer, run in bench/.venv-peers) translating greedily with a model its converter
made from the checkpoint a nimbuild profile serves: translations/s at each batch size, and the
translations, as JSON on stdout.

    python ctranslate2_translate.py CT2_MODEL SPM THREADS ROUNDS MAX_TOKENS SIZE [SIZE ...] < texts.json

The texts are cut into pieces by the checkpoint's own SentencePiece model and end with </s>, as
MarianTokenizer gives them; decoding is greedy (beam 1), up to MAX_TOKENS, with <pad> suppressed
as the runtime's decoder does; one translator thread of THREADS intra-op threads, so it uses the
cores the runtime's onnxruntime session does."""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import ctranslate2
    import sentencepiece

    model, spm, threads, rounds, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    sizes = [int(s) for s in sys.argv[6:]]
    texts = json.load(sys.stdin)
    pieces = sentencepiece.SentencePieceProcessor(model_file=spm)
    translator = ctranslate2.Translator(model, device="cpu", inter_threads=1, intra_threads=threads)

    def translate(batch: list[str]) -> list[str]:
        source = [pieces.encode(text, out_type=str) + ["</s>"] for text in batch]
        results = translator.translate_batch(source, beam_size=1, max_decoding_length=max_tokens,
                                             suppress_sequences=[["<pad>"]])
        return [pieces.decode(result.hypotheses[0]) for result in results]

    translate(texts[:8])  # warm
    rates, got = {size: [] for size in sizes}, {}
    for _ in range(rounds):
        for size in sizes:
            start, out = time.perf_counter(), []
            for i in range(0, len(texts), size):
                out += translate(texts[i:i + size])
            rates[size].append(len(texts) / (time.perf_counter() - start))
            got[size] = out
    print(json.dumps({"per_s": rates, "translations": got, "threads": threads, "beam_size": 1,
                      "max_decoding_length": max_tokens, "version": ctranslate2.__version__}))


if __name__ == "__main__":
    main()
