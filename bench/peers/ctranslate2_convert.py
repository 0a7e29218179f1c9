"""CTranslate2's converter on a Marian checkpoint, as the decoder transformers runs: from the
checkpoint's own decoder start token, not from a zero embedding.

    python ctranslate2_convert.py CHECKPOINT OUT

It runs in the project's environment (it needs transformers and torch to read the checkpoint),
with ctranslate2 alone put on sys.path by `make peers` (bench/.venv-peers/converter).

Why not the stock converter: it assumes OPUS-MT's checkpoints, whose <pad> row (the decoder's
start) is zero, so it drops <pad> and starts the decoder from zeros. A checkpoint whose output
projection is tied to its embeddings and was trained (nmt-en-de is one) has a non-zero <pad> row;
started from zeros, 14 of the bench's 96 translations came out different from transformers' and
the runtime's. Kept, the peer translates the checkpoint as it is, and the bench checks it does."""

from __future__ import annotations

import sys


def main() -> None:
    from ctranslate2.converters import TransformersConverter
    from ctranslate2.converters import transformers as loaders

    class MarianFromItsStartToken(loaders.MarianMTLoader):
        def get_model_spec(self, model):
            model.config.normalize_before = False
            model.config.normalize_embedding = False
            return loaders.BartLoader.get_model_spec(self, model)  # <pad> kept

        def set_config(self, config, model, tokenizer):
            super().set_config(config, model, tokenizer)
            config.decoder_start_token = tokenizer.convert_ids_to_tokens(model.config.decoder_start_token_id)

        def set_decoder(self, spec, decoder):
            loaders.BartLoader.set_decoder(self, spec, decoder)  # from the start token's embedding

        def get_vocabulary(self, model, tokenizer):
            return loaders.BartLoader.get_vocabulary(self, model, tokenizer)

    loaders._MODEL_LOADERS["MarianConfig"] = MarianFromItsStartToken()
    TransformersConverter(sys.argv[1]).convert(sys.argv[2], force=True)


if __name__ == "__main__":
    main()
