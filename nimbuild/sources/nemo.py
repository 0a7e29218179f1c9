""".nemo checkpoints: a tar of model_config.yaml, model_weights.ckpt and any artifacts (tokenizers).

Nothing here imports NeMo. The archive is unpacked by nimbuild itself (nimbuild.util.archive: no links,
no absolute or climbing paths, size limits), never by NeMo's own extractor, and only into a
private directory. Inspection reads model_config.yaml with a safe YAML loader. Restoring through
`nemo_toolkit` (nimbuild.export.asr) happens later, and only after `check_targets` has refused a
config naming anything but NeMo's own classes: NeMo instantiates every `_target_` it finds, so a
crafted config could otherwise name any Python callable.
"""

from __future__ import annotations

import atexit
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbuild.errors import SourceError
from nimbuild.tasks import TASKS, task_for_nemo_class
from nimbuild.util.archive import archive_reason, safe_extract, size_limit, vetted
from nimbuild.util.files import sha256_file, tree_digest
from nimbuild.util.yamlsafe import load_or_raise

CONFIG_NAME = "model_config.yaml"
MAX_MEMBERS = 1_000
MAX_BYTES = 16 << 30
MAX_CONFIG_BYTES = 16 << 20
# NeMo classes a config may name; anything else is refused before NeMo sees the config.
ALLOWED_TARGET_PREFIXES = ("nemo.collections.",
                           # a training optimiser, as NeMo's own HiFiGAN configs name theirs (optim._target_:
                           # torch.optim.AdamW); restoring never builds it, and building one runs no other code
                           "torch.optim.")
# The NeMo classes each task builds, from the task table
MODEL_CLASSES = {t.id: t.takes + t.builds_also for t in TASKS if t.source == "nemo"}
VOCODER_CLASSES = ("HifiGanModel",)  # mel spectrogram -> audio: a tts recipe's source.vocoder, not a task


@dataclass
class NemoCheckpoint:
    spec: str  # as written in the recipe
    source: Path  # the .nemo file, or a directory holding its unpacked contents
    config: dict[str, Any]
    _path: Path | None = field(default=None, repr=False)
    _digest: str | None = field(default=None, repr=False)

    @property
    def model_class(self) -> str:
        return str(self.config.get("target", "")).rsplit(".", 1)[-1] or "unknown"

    @property
    def model_type(self) -> str:
        return self.model_class

    @property
    def path(self) -> Path:
        """The unpacked contents (a private temporary directory for a .nemo file)."""
        if self._path is None:
            if self.source.is_dir():
                self._path = self.source
            else:
                self._path = Path(tempfile.mkdtemp(prefix="nimbuild-nemo-")) / "model"
                atexit.register(shutil.rmtree, self._path.parent, True)
                safe_extract(self.source, self._path, SourceError, ".nemo archive", MAX_MEMBERS, MAX_BYTES)
        return self._path

    def digest(self) -> str:
        """The archive's bytes; for a directory, every file's relative path and content."""
        if self._digest is None:
            self._digest = sha256_file(self.source) if self.source.is_file() else tree_digest(self.source)
        return self._digest

    def summary(self) -> dict[str, Any]:
        """What `nimbuild inspect` prints: enough to write a recipe, read without NeMo."""
        pre = self.config.get("preprocessor") or {}
        encoder = self.config.get("encoder") or {}
        return {
            "source": str(self.source),
            "format": "nemo",
            "model_class": self.model_class,
            "nemo_version": self.config.get("nemo_version"),
            "sample_rate": self.config.get("sample_rate") or pre.get("sample_rate"),
            "features": {k: pre.get(k) for k in ("features", "window_size", "window_stride", "n_fft", "window",
                                                "normalize", "dither", "pad_to", "log") if k in pre},
            "preprocessor": _short(pre.get("_target_")),
            "encoder": _short(encoder.get("_target_")),
            "encoder_layers": encoder.get("n_layers"),
            "d_model": encoder.get("d_model"),
            "subsampling_factor": encoder.get("subsampling_factor"),
            "vocabulary_size": len(vocabulary_labels(self.config) or []) or _tokenizer_size(self.config),
            "tokenizer": (self.config.get("tokenizer") or {}).get("type") or ("characters" if self.config.get("labels") else None),
            "decoder": decoder_kind(self.config),
            "task": row.id if (row := task_for_nemo_class(self.model_class)) else None,
        }


def resolve_nemo(spec: str, base_dir: Path) -> NemoCheckpoint:
    path = Path(spec).expanduser()
    path = (path if path.is_absolute() else base_dir / path).resolve()
    if not path.exists():
        raise SourceError(f"NeMo checkpoint not found: {path}")
    config = read_config(path)
    check_targets(config, path)
    return NemoCheckpoint(spec=spec, source=path, config=config)


def read_config(path: Path) -> dict[str, Any]:
    """model_config.yaml from a .nemo file (only that member is read) or an unpacked directory."""
    if path.is_dir():
        return _parse_config(_find_config(path).read_bytes(), path)
    try:
        with tarfile.open(path, "r:*") as tar:
            # every header judged, as extraction judges them: stopping at the config let links, climbing
            # paths, bombs and a truncated tail after it through `nimbuild inspect` (issue 31)
            members = list(vetted(tar, path, SourceError, ".nemo archive", MAX_MEMBERS, size_limit(path, MAX_BYTES)))
            member = next((m for m in members if m.isfile() and Path(m.name).name == CONFIG_NAME), None)
            if member is None:
                raise SourceError(f"{path}: no {CONFIG_NAME} in the archive; is it a .nemo checkpoint?")
            if member.size > MAX_CONFIG_BYTES:
                raise SourceError(f"{path}: {CONFIG_NAME} is {member.size} bytes; a model config is far smaller")
            handle = tar.extractfile(member)
            data = handle.read(member.size) if handle else b""
    except (tarfile.TarError, EOFError, OSError) as e:
        raise SourceError(f"{path}: not a readable .nemo archive: {archive_reason(e)}") from None
    return _parse_config(data, path)


def _find_config(root: Path) -> Path:
    found = sorted(root.rglob(CONFIG_NAME))
    if not found:
        raise SourceError(f"{root}: no {CONFIG_NAME}; is it a .nemo checkpoint?")
    return found[0]


def _parse_config(data: bytes, path: Path) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError(f"{path}: {CONFIG_NAME} is not UTF-8 text") from None
    config = load_or_raise(text, f"{path}: {CONFIG_NAME}", SourceError)
    if not isinstance(config, dict):
        raise SourceError(f"{path}: {CONFIG_NAME} is not a mapping")
    return config


def check_targets(config: Any, path: Path, where: str = "") -> None:
    """Refuse a config whose `_target_`/`target` names anything outside NeMo's collections (and
    torch's optimisers)."""
    if isinstance(config, dict):
        for key, value in config.items():
            here = f"{where}.{key}" if where else str(key)
            if key in ("_target_", "target") and isinstance(value, str) and not value.startswith(ALLOWED_TARGET_PREFIXES):
                allowed = " and ".join(prefix + "*" for prefix in ALLOWED_TARGET_PREFIXES)
                raise SourceError(f"{path}: {CONFIG_NAME} {here} names {value!r}; only {allowed} classes are "
                                  "restored (NeMo would instantiate whatever it names)")
            check_targets(value, path, here)
    elif isinstance(config, list):
        for i, value in enumerate(config):
            check_targets(value, path, f"{where}[{i}]")


def decoder_kind(config: dict[str, Any]) -> str:
    """ctc, rnnt or tdt, as the config names it (TDT is an RNNT model whose decoding predicts durations)."""
    if "joint" not in config:
        return "ctc"
    decoding = config.get("decoding") or {}
    return "tdt" if isinstance(decoding, dict) and decoding.get("model_type") == "tdt" else "rnnt"


def vocabulary_labels(config: dict[str, Any]) -> list[str] | None:
    """A character model's labels (top-level `labels`, or the decoder's `vocabulary`)."""
    labels = (config.get("labels") or (config.get("decoder") or {}).get("vocabulary")
              or (config.get("joint") or {}).get("vocabulary"))
    return [str(x) for x in labels] if isinstance(labels, list) and labels else None


def _tokenizer_size(config: dict[str, Any]) -> int | None:
    decoder = config.get("decoder") or {}
    classes = decoder.get("num_classes") or decoder.get("vocab_size")
    return int(classes) if isinstance(classes, int) and classes > 0 else None


def _short(target: Any) -> str | None:
    return str(target).rsplit(".", 1)[-1] if target else None
