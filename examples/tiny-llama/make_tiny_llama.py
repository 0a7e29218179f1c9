"""Write examples/tiny-llama/model: a 2-layer Llama with random weights and a real byte-level BPE
tokenizer with a ChatML chat template, saved by transformers. It is the text-generation example
(examples/tiny-llama/recipe.yaml) and a test fixture; nothing is downloaded.

The weights are random (seeded), so the text is gibberish; what matters is that every part of the
path (tokenizer, chat template, KV-cache graph, batching, sampling, streaming) is the real one.
Run from the repository root: python examples/tiny-llama/make_tiny_llama.py [DEST]
"""

import string
import sys
from pathlib import Path

# ChatML, with tools as Hermes and Qwen 2.5 render them (the tools in the system turn, calls in
# <tool_call> tags, results in <tool_response> tags), so the tool-calling path is the real one; its
# words are few, as the example's context is 256 tokens
CHAT_TEMPLATE = """\
{%- if tools %}<|im_start|>system
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}

{% endif %}Tools:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>
Call one as <tool_call>
{"name": <name>, "arguments": <arguments>}
</tool_call><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message['role'] == 'system' and tools and loop.first %}
{%- elif message['role'] == 'assistant' and message['tool_calls'] %}<|im_start|>assistant
{% if message['content'] %}{{ message['content'] }}
{% endif %}{% for call in message['tool_calls'] %}<tool_call>
{"name": "{{ call['function']['name'] }}", "arguments": {{ call['function']['arguments'] | tojson }}}
</tool_call>
{% endfor %}<|im_end|>
{% elif message['role'] == 'tool' %}<|im_start|>user
<tool_response>
{{ message['content'] }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
# JSON as tool calls and schemas write it, trained on so that a tool's signature takes tokens, not
# characters, in the example's short context
JSON_LINES = [
    '{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}',
    '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>',
    '{"type": "array", "items": {"type": "integer"}}',
] * 8
SPECIAL = ["<unk>", "<s>", "<|im_start|>", "<|im_end|>"]


def tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # the alphabet is printable ASCII, not all 256 bytes: every token is then whole characters, so
    # even random weights produce readable (if meaningless) text, and every character JSON, code and
    # tool calls need has a token (structured output can only choose among tokens that exist)
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL, show_progress=False)
    tok.train_from_iterator(corpus + [" ".join(string.printable[:95])] + JSON_LINES, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", chat_template=CHAT_TEMPLATE)


def main(dest: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    root = Path(__file__).resolve().parents[2]
    corpus = (root / "examples" / "minilm-embed" / "sentences.txt").read_text().splitlines()
    tok = tokenizer(corpus * 4)
    torch.manual_seed(0)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    # a wide initialiser spreads the logits, so greedy decoding is not a near-tie at every step
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.1, bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=eos,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=eos)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    print(f"wrote {dest} ({sum(p.numel() for p in model.parameters())} parameters, vocabulary {len(tok)})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("examples/tiny-llama/model"))
