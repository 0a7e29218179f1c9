"""The Whisper example's model: a tiny random-weight `WhisperForConditionalGeneration` written by
transformers, with a byte-level tokenizer of Whisper's layout (256 byte tokens, then
`<|endoftext|>`, `<|startoftranscript|>`, language and task tokens, `<|notimestamps|>`), its feature
extractor and a generation config as OpenAI's checkpoints carry it (languages, tasks, suppressed
tokens). Nothing is downloaded. The tests write fresh ones with it.

    python examples/tiny-whisper/make_tiny_whisper.py   # writes examples/tiny-whisper/model
"""

from __future__ import annotations

from pathlib import Path

LANGUAGES = ("en", "de", "fr")
SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", *(f"<|{code}|>" for code in LANGUAGES), "<|translate|>",
            "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-ins for the 256 bytes (byte-level BPE's alphabet)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in kept:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def write_tiny_whisper(path: Path, *, mels: int = 80, width: int = 64, layers: tuple[int, int] = (2, 2), heads: int = 4,
                       seed: int = 0, max_target: int = 64, multilingual: bool = True, std: float = 0.3) -> Path:
    """`std`: the matrices' spread; at transformers' 0.02 a random Whisper repeats one token, at 0.3 its
    greedy transcripts vary, so the cache and the rules are exercised."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    path.mkdir(parents=True, exist_ok=True)
    alphabet = _bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    specials = SPECIALS if multilingual else tuple(s for s in SPECIALS if s[2:-2] not in (*LANGUAGES, "translate", "transcribe"))
    ids = {token: 256 + i for i, token in enumerate(specials)}
    vocab.update(ids)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[], additional_special_tokens=list(specials[1:]))
    tokenizer.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=mels).save_pretrained(path)
    eot, space = ids["<|endoftext|>"], vocab[alphabet[ord(" ")]]
    config = WhisperConfig(vocab_size=len(vocab), num_mel_bins=mels, d_model=width, encoder_layers=layers[0],
                           decoder_layers=layers[1], encoder_attention_heads=heads, decoder_attention_heads=heads,
                           encoder_ffn_dim=2 * width, decoder_ffn_dim=2 * width, max_target_positions=max_target,
                           bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
                           decoder_start_token_id=ids["<|startoftranscript|>"])
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() >= 2:
                weight.normal_(0.0, std)
    generation = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=max_target, no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=multilingual,
        suppress_tokens=list(range(1, 256, 3)), begin_suppress_tokens=[space, eot],  # as many as OpenAI suppresses (~90)
        **({"lang_to_id": {f"<|{c}|>": ids[f"<|{c}|>"] for c in LANGUAGES},
            "task_to_id": {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}} if multilingual else {}))
    model.generation_config = generation
    model.save_pretrained(path)
    return path


if __name__ == "__main__":
    write_tiny_whisper(Path(__file__).with_name("model"))
