"""The training adapter of a run, resolved on the worker: which file, from where, its sha256, and a check of it.

``TRAINING_ADAPTER`` (zimage_protocol/training_adapter.py says why it exists and what a spec looks like) reaches
the worker as the job's ``config.training_adapter``. At the start of each training the session resolves it here,
in a thread (a first download takes minutes; hashing 340 MB takes a second): the published adapter or an
``hf:`` file comes through ``hf_hub_download`` into the Hugging Face cache (``HF_HOME``, like the model;
``HF_HUB_OFFLINE`` respected), a path is taken as it is. The trainer then checks the file against its transformer
on the GPU thread (:func:`check_adapter_file`, before minutes of encoding) and records ``source`` and ``sha256``
in every checkpoint (``checkpoint.json`` and the LoRA file's safetensors metadata).

Whatever goes wrong fails that training with ``TrainingAdapterError`` (its own error code, so the bot tells the
member what the admin can do: TRAINING_ADAPTER=none or a local file), never the worker.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from zimage_protocol.constants import TINY_MODEL
from zimage_protocol.settings import SettingsError
from zimage_protocol.training_adapter import DEFAULT_HUB, DEFAULT_SPEC, HUB_PREFIX, NONE_SPECS, HubFile, parse_hub

from ..file_cache import sha256_of
from ..lora.common import AdapterError, resolve_lora_file
from .config import TrainingAdapterError

log = logging.getLogger(__name__)

__all__ = ["NO_ADAPTER", "TrainingAdapter", "check_adapter_file", "checked_adapter", "resolve_training_adapter",
           "transformer_layers"]

# The real adapter holds ~1,300 tensors: a header of ~150 KB. Caps far above that keep a broken file cheap.
MAX_HEADER_BYTES = 16 << 20
MAX_TENSORS = 16_384
METADATA_SOURCE = "zimage_bot.training_adapter"  # keys of the trained LoRA's safetensors metadata
METADATA_SHA256 = "zimage_bot.training_adapter_sha256"
_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_down.weight", ".lora_up.weight", ".lora_A.default.weight",
             ".lora_B.default.weight", ".alpha")
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "base_model.model.")
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class TrainingAdapter:
    path: Path | None  # None: training without an adapter
    source: str  # "none", "owner/repo@commit/file" or the file's path
    sha256: str  # "none" without an adapter
    from_hub: bool = False

    def record(self) -> dict[str, str]:
        """What checkpoint.json keeps under "training_adapter"."""
        return {"source": self.source, "sha256": self.sha256}

    def safetensors_metadata(self) -> dict[str, str]:
        return {METADATA_SOURCE: self.source, METADATA_SHA256: self.sha256}

    def describe(self) -> str:
        """A short line for the checkpoint message: no directories of the worker's disk."""
        if self.path is None:
            return "none"
        shown = self.source if self.from_hub else Path(self.source).name
        return f"{shown} (sha256 {self.sha256[:12]})"


NO_ADAPTER = TrainingAdapter(None, "none", "none")


def resolve_training_adapter(spec: str | None, model: str, download: bool = True) -> TrainingAdapter:
    """The adapter a run with `spec` trains with on `model` (ZIMAGE_MODEL). Blocking (download, hashing): call it
    in a thread. `download=False` looks in the Hugging Face cache only. Raises TrainingAdapterError."""
    if spec is None or spec.strip().lower() in (*NONE_SPECS, ""):
        return NO_ADAPTER
    if spec == DEFAULT_SPEC:
        if model == TINY_MODEL:
            log.info("training adapter: none (ZIMAGE_MODEL=tiny: the published adapter %s does not fit the tiny "
                     "model's shapes; TRAINING_ADAPTER=<file> gives it one)", DEFAULT_HUB)
            return NO_ADAPTER
        return _from_hub(DEFAULT_HUB, download)
    if spec.startswith(HUB_PREFIX):
        try:
            return _from_hub(parse_hub(spec), download)
        except SettingsError as exc:
            raise TrainingAdapterError(str(exc)) from None
    try:
        path = resolve_lora_file(spec)
    except AdapterError as exc:
        raise TrainingAdapterError(f"the training adapter file {Path(spec).name!r} is not usable: {exc}") from None
    adapter = TrainingAdapter(path, str(path), sha256_of(path))
    log.info("training adapter: %s (sha256 %s)", path, adapter.sha256)
    return adapter


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _from_hub(hub: HubFile, download: bool) -> TrainingAdapter:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = _offline() or not download
    try:
        path = Path(hf_hub_download(hub.repo, hub.filename, revision=hub.revision, local_files_only=offline))
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if _offline() else "the worker looked in its cache only"
        raise TrainingAdapterError(f"the training adapter {hub} is not in the Hugging Face cache and {why}") from None
    except Exception as exc:  # noqa: BLE001 - network, 404, gated, disk full: any of them fails this training only
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise TrainingAdapterError(f"the training adapter {hub} could not be downloaded from the Hugging Face hub "
                                   f"({type(exc).__name__}: {first})") from None
    # The cache keeps files under snapshots/<commit>/: the commit this revision resolved to is what was used.
    parts = path.parts
    commit = parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else hub.revision
    adapter = TrainingAdapter(path, f"{hub.repo}@{commit}/{hub.filename}", sha256_of(path), from_hub=True)
    log.info("training adapter: %s (sha256 %s)", adapter.source, adapter.sha256)
    return adapter


# -- the check against the transformer ------------------------------------------------------------------------

def checked_adapter(adapter: TrainingAdapter | None, spec: str | None, transformer) -> TrainingAdapter:
    """The run's adapter, checked against `transformer` (the trainer's prepare(), on the GPU thread: before minutes
    of encoding). Without one resolved by the session, `spec` is read from the disk or the hub cache only: never
    a download on the GPU thread."""
    adapter = adapter or resolve_training_adapter(spec, "", download=False)
    if adapter.path is not None:
        check_adapter_file(adapter.path, transformer_layers(transformer))
    return adapter


def transformer_layers(transformer) -> dict[str, tuple[int, int]]:
    """Every linear layer of the transformer: name -> (out_features, in_features); LoRA wrappers seen through."""
    layers: dict[str, tuple[int, int]] = {}
    for name, module in transformer.named_modules():
        if any(part.startswith("lora_") for part in name.split(".")):
            continue  # the adapters' own linears (user LoRAs, hot-swap slots)
        out, inputs = getattr(module, "out_features", None), getattr(module, "in_features", None)
        if isinstance(out, int) and isinstance(inputs, int):
            layers[name.removesuffix(".base_layer")] = (out, inputs)
    return layers


def read_header(path: Path, max_header: int = MAX_HEADER_BYTES) -> dict:
    """The safetensors header (tensor entries only), its size capped before it is read; TrainingAdapterError."""
    name = path.name
    with open(path, "rb") as handle:
        size, first = os.fstat(handle.fileno()).st_size, handle.read(8)
        if first[:4] == b"PK\x03\x04" or first[:1] == b"\x80":
            raise TrainingAdapterError(f"the training adapter {name!r} is a PyTorch pickle, not a safetensors file")
        if len(first) < 8:
            raise TrainingAdapterError(f"the training adapter {name!r} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", first)
        if length > max_header or 8 + length > size:
            raise TrainingAdapterError(f"the training adapter {name!r} is not a safetensors file (its header "
                                       f"claims {length:,} bytes; at most {max_header:,} of a {size:,}-byte file)")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        header = None
    if not isinstance(header, dict):
        raise TrainingAdapterError(f"the training adapter {name!r} is not a safetensors file (bad header)")
    header.pop("__metadata__", None)
    if len(header) > MAX_TENSORS:
        raise TrainingAdapterError(f"the training adapter {name!r} holds {len(header):,} tensors; at most "
                                   f"{MAX_TENSORS:,}")
    return header


def _module(base: str, layers: Mapping[str, tuple[int, int]], kohya: Mapping[str, str]) -> str | None:
    for prefix in ("lora_unet_", "lora_transformer_"):
        if base.startswith(prefix):
            return kohya.get(base[len(prefix):])
    for prefix in _PREFIXES:
        if base.startswith(prefix):
            base = base[len(prefix):]
            break
    base = re.sub(r"\.attention\.out$", ".attention.to_out.0", base)
    if base in layers or (base.endswith(".attention.qkv") and base[: -len("qkv")] + "to_q" in layers):
        return base
    return None


def check_adapter_file(path: Path, layers: Mapping[str, tuple[int, int]]) -> None:
    """Every tensor of the adapter is a LoRA weight of one of `layers` (transformer_layers) with fitting shapes:
    diffusers/peft, ai-toolkit/ComfyUI (``diffusion_model.``, fused ``qkv``, ``out``) or kohya/musubi keys.
    Reads the header only. Raises TrainingAdapterError naming the first key that does not fit."""
    name = path.name
    kohya = {layer.replace(".", "_"): layer for layer in layers}
    kohya.update({layer.replace(".", "_")[: -len("to_q")] + "qkv": layer[: -len("to_q")] + "qkv"
                  for layer in layers if layer.endswith(".attention.to_q")})
    kohya.update({layer.replace(".", "_")[: -len("to_out_0")] + "out": layer for layer in layers
                  if layer.endswith(".attention.to_out.0")})
    weights = 0
    for key, entry in read_header(path).items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        module = _module(key[: -len(suffix)], layers, kohya) if suffix else None
        if module is None or suffix is None:
            raise TrainingAdapterError(f"the training adapter {name!r} does not fit this model: `{key[:120]}` is not a "
                                       "LoRA weight of one of its layers (made for another model?)")
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) for n in shape):
            raise TrainingAdapterError(f"the training adapter {name!r} has a malformed entry for `{key[:120]}`")
        if suffix == ".alpha":
            continue
        fused = module.endswith(".attention.qkv")
        out, inputs = layers[module[: -len("qkv")] + "to_q" if fused else module]
        down = suffix.startswith((".lora_A", ".lora_down"))
        fits = len(shape) == 2 and (shape[1] == inputs if down else shape[0] == (3 * out if fused else out))
        if not fits:
            needed = f"[rank, {inputs}]" if down else f"[{3 * out if fused else out}, rank]"
            raise TrainingAdapterError(f"the training adapter {name!r} does not fit this model: `{key[:120]}` has "
                                       f"shape {shape[:4]}, the layer `{module}` needs {needed}")
        weights += 1
    if not weights:
        raise TrainingAdapterError(f"the training adapter {name!r} holds no LoRA weights")
