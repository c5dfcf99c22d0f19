"""The LoRA library's file work. Blocking: every function here runs in a thread (asyncio.to_thread)."""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

from .. import lora_import as lib
from ..db.models import Lora


def lora_folders(path: str | None, data_dir: Path, lora_id: int) -> list[Path]:
    """The LoRA's exports folder, and its own folder (an import's, or the whole /train job folder)."""
    library, training = (data_dir / "loras").resolve(), (data_dir / "training").resolve()
    folders = [library / "exports" / str(lora_id)]
    if path:
        file = Path(path).resolve()
        for root in (library, training):
            if file.is_relative_to(root) and len(file.relative_to(root).parts) > 1:
                folders.append(root / file.relative_to(root).parts[0])
    return folders


def remove_files(path: str | None, data_dir: Path, lora_id: int) -> None:
    """The LoRA's own folder (an import's, or the whole /train job folder) and its exports."""
    for folder in lora_folders(path, data_dir, lora_id):
        shutil.rmtree(folder, ignore_errors=True)


def revoke_links(path: str | None, data_dir: Path, lora_id: int) -> None:
    """Every file link made so far to the LoRA's files (exports, checkpoints) stops working.

    A link is bound to its file's version (inode, size, mtime: bot/files_server.py), so a new mtime on each LoRA file
    is a new version. Exports are hard links of the LoRA's file: exporting it again afterwards makes links of the new
    version only, and the old ones stay dead. (The worker reads a file with a new mtime again: once, and harmless.)"""
    for folder in lora_folders(path, data_dir, lora_id):
        if not folder.is_dir():
            continue
        for file in folder.rglob("*.safetensors"):
            try:
                info = file.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode):
                    os.utime(file, ns=(info.st_atime_ns, max(time.time_ns(), info.st_mtime_ns + 1)),
                             follow_symlinks=False)
            except OSError:  # removed meanwhile: its links are dead anyway
                continue


def export_files(lora: Lora, data_dir: Path, max_header: int) -> tuple[Path, Path]:
    """`<name>.safetensors` (ours, diffusers) and `<name>_comfyui.safetensors` in exports/<id>/."""
    if lora.path is None:  # usable LoRAs have one; a trained LoRA from its first checkpoint
        raise lib.LoraImportError(f"`{lora.name}` has no file yet.")
    folder = data_dir / "loras" / "exports" / str(lora.id)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ours, comfy = folder / f"{lora.name}.safetensors", folder / f"{lora.name}_comfyui.safetensors"
    try:
        os.link(lora.path, ours)  # no copy; survives the trainer pruning its checkpoint
    except OSError:
        shutil.copyfile(lora.path, ours)
    lib.export_comfyui(ours, comfy, max_header=max_header)
    return ours, comfy


def read_details(path: str | None, max_header: int) -> tuple[dict, bytes | None]:
    """Rank/alpha/layers/size from the file's header, and sample.png beside it (a /train checkpoint)."""
    if not path or not Path(path).is_file():
        return {}, None
    try:
        details = {**lib.describe(Path(path), max_header=max_header), "size": Path(path).stat().st_size}
    except (OSError, lib.LoraImportError):
        details = {}
    sample = Path(path).parent / "sample.png"
    return details, sample.read_bytes() if sample.is_file() else None
