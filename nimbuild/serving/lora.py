"""LoRA adapters beside a base decoder graph, several in one batch (the S-LoRA / Punica shape).

A LoRA-capable graph (nimbuild.export.lora) takes, beside the base weights it holds, each target
module's adapters stacked as inputs: `lora_A.<target> [layers, slots, rank, in]` and
`lora_B.<target> [layers, slots, out, rank]`, and `lora_slot [batch]`, the slot each row reads.
Slot 0 is all zeros: the base model. An adapter of a smaller rank is zero-padded to the profile's
rank (zero rows add nothing), and its scaling (alpha / r, or alpha / sqrt(r) for rsLoRA) is folded
into its B, so the graph computes `W x + B (A x)` per row.

Adapters are PEFT folders (`adapter_config.json` + `adapter_model.safetensors`, as NIM reads them
from NIM_PEFT_SOURCE). `read_adapter` checks one against the profile (rank, targets, shapes, the
options this form cannot express) and refuses it in one line; `AdapterBank` keeps up to `slots`
of them in the arrays the graph reads, loading a named adapter into a free slot, or into the
least recently used one no running sequence holds, between generation steps; a request for an
adapter when every slot is held waits in the generator until a running sequence ends.

This module imports numpy only; safetensors is imported when an adapter is read.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
SLOT_INPUT = "lora_slot"
_KEY = re.compile(r"layers\.(\d+)\.(?:.*\.)?(\w+)\.lora_([AB])(?:\.default)?\.weight$")


class AdapterError(ValueError):
    """An adapter this profile cannot serve, with the reason in one line."""


class SlotsBusy(AdapterError):
    """Every slot holds an adapter a running sequence reads (the generator parks the request until one frees)."""


def input_names(spec: dict) -> list[str]:
    """The graph's LoRA inputs, in the order the export declares them."""
    return [SLOT_INPUT, *(f"lora_{kind}.{t}" for t in spec["targets"] for kind in "AB")]


def read_adapter(folder: Path, spec: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{target: (A [layers, rank, in], B [layers, out, rank])} of one PEFT adapter folder, padded
    to the profile's rank with the scaling folded into B; AdapterError when the profile cannot
    serve it."""
    config = _config(folder)
    rank, targets = int(config.get("r") or 0), config.get("target_modules")
    if isinstance(targets, str):
        raise AdapterError(f"target_modules is a pattern ({targets!r}); name the modules (the profile takes "
                           f"{', '.join(spec['targets'])})")
    unknown = sorted(set(targets or []) - set(spec["targets"]))
    if not targets or unknown:
        raise AdapterError(f"targets {', '.join(unknown) or 'none'}: the profile takes adapters on "
                           f"{', '.join(spec['targets'])}")
    if not 1 <= rank <= spec["max_rank"]:
        raise AdapterError(f"rank {rank}: the profile takes ranks 1 to {spec['max_rank']}")
    for option, plain in (("use_dora", False), ("fan_in_fan_out", False), ("bias", "none"), ("rank_pattern", {}),
                          ("alpha_pattern", {}), ("modules_to_save", None)):
        if config.get(option, plain) not in (plain, None, [], {}):
            raise AdapterError(f"{option} is {config[option]!r}: this profile serves plain LoRA only")
    alpha = float(config.get("lora_alpha") or rank)
    scaling = alpha / (rank ** 0.5) if config.get("use_rslora") else alpha / rank
    weights = _weights(folder)
    layers, max_rank = spec["layers"], spec["max_rank"]
    out = {t: (np.zeros((layers, max_rank, spec["shapes"][t][0]), np.float32),
               np.zeros((layers, spec["shapes"][t][1], max_rank), np.float32)) for t in spec["targets"]}
    seen = 0
    for key, value in weights.items():
        match = _KEY.search(key)
        if not match:
            raise AdapterError(f"{WEIGHTS}: {key!r} is not a LoRA weight of a decoder layer")
        layer, target, kind = int(match.group(1)), match.group(2), match.group(3)
        if target not in out or layer >= layers:
            raise AdapterError(f"{WEIGHTS}: {key!r} is outside the profile (layers 0 to {layers - 1}, "
                               f"targets {', '.join(spec['targets'])})")
        a, b = out[target]
        expected = (rank, a.shape[2]) if kind == "A" else (b.shape[1], rank)
        if tuple(value.shape) != expected:
            raise AdapterError(f"{WEIGHTS}: {key!r} has shape {tuple(value.shape)}; this model's needs {expected}")
        if not np.isfinite(value).all():
            raise AdapterError(f"{WEIGHTS}: {key!r} holds values that are not finite")
        if kind == "A":
            a[layer, :rank] = value
        else:
            b[layer, :, :rank] = value * scaling
        seen += 1
    if not seen:
        raise AdapterError(f"{WEIGHTS} holds no LoRA weight")
    return out


def _config(folder: Path) -> dict:
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"no {CONFIG}") from None
    except (OSError, ValueError) as e:
        raise AdapterError(f"{CONFIG} is not JSON ({type(e).__name__})") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"{CONFIG} is not a LoRA adapter's (peft_type {config.get('peft_type')!r})"
                           if isinstance(config, dict) else f"{CONFIG} is not an object")
    return config


def _weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return {k: v.astype(np.float32) for k, v in load_file(str(folder / WEIGHTS)).items()}
    except FileNotFoundError:
        raise AdapterError(f"no {WEIGHTS}") from None
    except Exception as e:  # safetensors raises its own errors for a cut or corrupt file
        raise AdapterError(f"{WEIGHTS} cannot be read ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None


def adapter_folders(source: Path) -> dict[str, Path]:
    """The adapters a NIM_PEFT_SOURCE directory holds: {name: folder}, one folder each, named as
    the model requests use; a link that leaves the directory is not one."""
    found = {}
    root = source.resolve()
    for entry in sorted(source.iterdir()) if source.is_dir() else []:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if not entry.resolve().is_relative_to(root):
            continue
        found[entry.name] = entry
    return found


class AdapterBank:
    """The adapters in the graph's slots, and the arrays the graph reads. Only the generation
    thread uses it; an adapter is loaded between steps, never into a slot a running sequence holds."""

    def __init__(self, spec: dict, source: Path | None):
        self.spec, self.source = spec, source
        slots = spec["slots"] + 1  # slot 0: the base model, all zeros
        self.arrays = {}
        for target in spec["targets"]:
            d_in, d_out = spec["shapes"][target]
            self.arrays[f"lora_A.{target}"] = np.zeros((spec["layers"], slots, spec["max_rank"], d_in), np.float32)
            self.arrays[f"lora_B.{target}"] = np.zeros((spec["layers"], slots, d_out, spec["max_rank"]), np.float32)
        self.slots: OrderedDict[str, int] = OrderedDict()  # adapter -> slot, least recently used first
        self.holders: dict[int, int] = {}  # slot -> sequences holding it

    def acquire(self, name: str | None) -> int:
        """The slot of adapter `name` (0 for the base), loading it if it is not in one; held until
        `release`. AdapterError when it cannot be served, or every slot is held."""
        if not name:
            return 0
        if name in self.slots:
            self.slots.move_to_end(name)
            slot = self.slots[name]
        else:
            slot = self._load(name)
        self.holders[slot] = self.holders.get(slot, 0) + 1
        return slot

    def release(self, slot: int) -> None:
        if slot:
            self.holders[slot] -= 1

    def _load(self, name: str) -> int:
        folders = adapter_folders(self.source) if self.source else {}
        if name not in folders:
            raise AdapterError(f"no adapter {name!r} in NIM_PEFT_SOURCE")
        # the slot first: a request parked for one retries every step, and must not read the
        # adapter's files each time; a slot freed for an adapter that then fails to read stays free
        slot = self._free_slot()
        weights = read_adapter(folders[name], self.spec)
        for target, (a, b) in weights.items():
            self.arrays[f"lora_A.{target}"][:, slot] = a
            self.arrays[f"lora_B.{target}"][:, slot] = b
        self.slots[name] = slot
        return slot

    def _free_slot(self) -> int:
        used = set(self.slots.values())
        for slot in range(1, self.spec["slots"] + 1):
            if slot not in used:
                return slot
        for name, slot in self.slots.items():  # least recently used first
            if not self.holders.get(slot):
                del self.slots[name]
                return slot
        raise SlotsBusy(f"all {self.spec['slots']} adapter slots are in use by running sequences; retry")

    def feeds(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        return {SLOT_INPUT: slots.astype(np.int64, copy=False), **self.arrays}
