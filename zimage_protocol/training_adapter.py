"""TRAINING_ADAPTER: which de-distillation LoRA a /train run merges in during its steps (no torch, no network).

Z-Image-Turbo is step-distilled: a LoRA trained straight on it drifts the distillation and comes out blurry at
8 steps. A de-distillation adapter, active during training steps only and absent at inference, keeps the trainee
from learning to undo the distillation (ai-toolkit, musubi-tuner and SimpleTuner use the same one). The bot
parses the setting at its start and sends the spec in the job's config; the worker resolves it at the first
training (gpu/training/adapter.py: the download, the checks, the sha256 recorded in every checkpoint).

The spec on the wire (``TrainConfig.training_adapter``) is one of:

* ``"default"``: the published adapter below (``DEFAULT_HUB``), or none on ``ZIMAGE_MODEL=tiny`` (the real
  adapter does not fit the tiny model's shapes);
* ``None`` (``TRAINING_ADAPTER=none``): no adapter;
* ``"hf:owner/repo/file.safetensors"`` or ``"hf:owner/repo/file.safetensors@revision"``: a file of a hub repo;
* anything else: a path to a .safetensors file (or a folder holding one) on the worker's disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .settings import SettingsError

__all__ = ["DEFAULT_HUB", "DEFAULT_SPEC", "HubFile", "NONE_SPECS", "parse_spec"]

DEFAULT_SPEC = "default"
NONE_SPECS = ("none",)
HUB_PREFIX = "hf:"
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_FILE_PART = re.compile(r"^[A-Za-z0-9_.-][A-Za-z0-9_./-]{0,199}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")


@dataclass(frozen=True)
class HubFile:
    repo: str
    filename: str
    revision: str

    def __str__(self) -> str:
        return f"{self.repo}@{self.revision}/{self.filename}"


# ostris' de-distillation adapter for Z-Image-Turbo (ai-toolkit; SimpleTuner's "turbo-ostris-v2" flavour), v2,
# about 340 MB. The revision is the branch, not a commit hash: no machine of this project could reach the hub to
# read the commit, and an unverified hash would only fail. What a run really used is recorded instead: the commit
# the hub resolved (the cache's snapshot folder) and the file's sha256 go into each checkpoint's metadata.
# Pin a commit with TRAINING_ADAPTER=hf:<repo>/<filename>@<commit> (README: Why a training adapter).
DEFAULT_HUB = HubFile(repo="ostris/zimage_turbo_training_adapter",
                      filename="zimage_turbo_training_adapter_v2.safetensors", revision="main")


def parse_hub(spec: str) -> HubFile:
    """``hf:owner/repo/path/file.safetensors[@revision]``; SettingsError when malformed."""
    body = spec[len(HUB_PREFIX):] if spec.startswith(HUB_PREFIX) else spec
    location, _, revision = body.partition("@")
    parts = location.split("/")
    problem = None
    if len(parts) < 3 or not all(_REPO_PART.match(part) for part in parts[:2]):
        problem = "expected hf:owner/repo/file.safetensors[@revision]"
    elif not _FILE_PART.match(filename := "/".join(parts[2:])) or ".." in filename.split("/"):
        problem = f"bad file name {filename[:60]!r}"
    elif not filename.endswith(".safetensors"):
        problem = "the file must be a .safetensors file (pickles can run code when loaded)"
    elif "@" in body and not _REVISION.match(revision):
        problem = f"bad revision {revision[:60]!r}"
    if problem:
        raise SettingsError(f"TRAINING_ADAPTER={spec[:120]!r}: {problem}")
    return HubFile(repo="/".join(parts[:2]), filename=filename, revision=revision or "main")


def parse_spec(raw: str | None) -> str | None:
    """The setting as written (empty = default) -> the spec sent to the worker: "default", None (none), a checked
    "hf:…@revision" (the revision made explicit) or the path as given (the caller checks the file)."""
    value = (raw or "").strip()
    if not value or value.lower() == DEFAULT_SPEC:
        return DEFAULT_SPEC
    if value.lower() in NONE_SPECS:
        return None
    if value.startswith(HUB_PREFIX):
        hub = parse_hub(value)
        return f"{HUB_PREFIX}{hub.repo}/{hub.filename}@{hub.revision}"
    if "\n" in value or "\0" in value:
        raise SettingsError("TRAINING_ADAPTER must be default, none, a path or hf:owner/repo/file.safetensors")
    return value
