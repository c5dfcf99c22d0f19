"""Is the model on disk? Where, how big, and what is missing (for ``python -m bot check``).

Reads folders only: nothing is downloaded or built here. A diffusers pipeline folder is complete
when every component that model_index.json names has its folder, and every weight shard that a
``*.safetensors.index.json`` lists is there (a download cut short in the Hugging Face cache leaves
shards out).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DOWNLOAD_ESTIMATE = 20 * 10**9  # Tongyi-MAI/Z-Image-Turbo: 19.6 GB of pipeline files
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class FolderStatus:
    folder: Path
    size: int  # bytes of the files there (links followed, as in the Hugging Face cache)
    problem: str | None  # what is missing; None when complete


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _component_problem(folder: Path, component: str) -> str | None:
    path = folder / component
    if not path.is_dir() or not any(path.iterdir()):
        return f"{component}/ is missing"
    if not (path / "config.json").is_file():  # tokenizer, scheduler: files of their own kind
        return None
    for index in path.glob("*.safetensors.index.json"):
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(shard for shard in shards if not (path / shard).is_file())
        if missing:
            return f"{component}/ lacks {len(missing)} of {len(shards)} weight files ({missing[0]}, ...)"
        return None
    if not any(child.name.endswith(WEIGHT_SUFFIXES) and child.is_file() for child in path.iterdir()):
        return f"{component}/ has no weights"
    return None


def pipeline_status(folder: Path) -> FolderStatus:
    """Whether `folder` holds a complete diffusers pipeline."""
    index = folder / "model_index.json"
    if not index.is_file():
        return FolderStatus(folder, 0, "no model_index.json (not a diffusers pipeline folder)")
    components = [name for name, value in json.loads(index.read_text()).items()
                  if not name.startswith("_") and isinstance(value, list) and value[0] is not None]
    problems = [problem for name in components if (problem := _component_problem(folder, name))]
    return FolderStatus(folder, _size(folder), "; ".join(problems) or None)


def cached_snapshot(repo_id: str) -> Path | None:
    """The Hugging Face cache's folder for `repo_id` (main revision), or None when it was never downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def download_size(repo_id: str) -> int:
    """Bytes of the repository's files, asked from the hub (raises when it cannot be reached)."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, files_metadata=True, timeout=10)
    return sum(sibling.size or 0 for sibling in info.siblings or [])
