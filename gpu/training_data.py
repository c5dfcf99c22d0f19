"""Training data for gpu/trainer.py: manifest, aspect buckets, and the latent/text-embedding cache.

The dataset folder holds ``manifest.json`` (a list of ``{file, caption, width, height, source_name}``)
and the images in ``images/``. Each image is resized to cover its aspect bucket and centre-cropped,
then encoded once by the VAE; each caption is encoded once by the text encoder. Both are cached in
``output_dir/cache.pt`` under a fingerprint of the manifest, the image files, the resolution and
the model, so a resumed run needs neither the VAE encoder nor the text encoder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from zimage_protocol import ErrorCode, UserError
from zimage_protocol.constants import MAX_SEQUENCE_LENGTH

log = logging.getLogger(__name__)

CACHE_VERSION = 1
MAX_ASPECT = 2.0  # widest bucket: 2:1 (and 1:2)


class DatasetError(UserError):
    """The dataset cannot be used; the message can be shown to the user."""

    code = ErrorCode.TRAINING


@dataclass(frozen=True)
class Sample:
    file: str
    caption: str
    width: int  # bucket size in pixels
    height: int
    latent: object  # torch.Tensor [16, height/8, width/8], normalised like the pipeline's latents
    embeds: object  # torch.Tensor [tokens, hidden], the caption's text-encoder states


def bucket_step(resolution: int) -> int:
    """Bucket sides are multiples of 32 (the DiT pads sequences to 32); 16 for toy resolutions."""
    return 32 if resolution >= 256 else 16


def make_buckets(resolution: int) -> list[tuple[int, int]]:
    """(width, height) pairs with at most resolution**2 pixels, aspect within 1:2 .. 2:1."""
    step = bucket_step(resolution)
    if resolution < step or resolution % 16:
        raise ValueError(f"resolution must be a multiple of 16 and at least {step}")
    area = resolution * resolution
    buckets = set()
    for width in range(step, int(resolution * math.sqrt(MAX_ASPECT)) + step, step):
        height = (area // width) // step * step
        if height >= step and max(width, height) / min(width, height) <= MAX_ASPECT:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets)


def pick_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket closest in log aspect ratio; ties go to the larger bucket."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def image_path(dataset_dir: Path, file: str) -> Path:
    """A manifest entry's image: relative to the dataset folder (the intake writes `images/0001.png`),
    or a bare name inside `images/`. Never outside the dataset folder."""
    root = dataset_dir.resolve()
    for candidate in (root / file, root / "images" / file):
        resolved = candidate.resolve()
        if not resolved.is_relative_to(root):
            raise DatasetError(f"manifest.json names {file!r}, outside the dataset")
        if resolved.is_file():
            return resolved
    raise DatasetError(f"manifest.json names {file!r}, which is missing")


def read_manifest(dataset_dir: Path) -> list[dict]:
    path = dataset_dir / "manifest.json"
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DatasetError("the dataset has no manifest.json") from exc
    except (OSError, ValueError) as exc:
        raise DatasetError(f"manifest.json is unreadable: {exc}") from exc
    if not isinstance(entries, list) or not entries:
        raise DatasetError("manifest.json lists no images")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise DatasetError(f"manifest.json entry {index} has no file name")
        entry["file"] = str(image_path(dataset_dir, entry["file"]).relative_to(dataset_dir.resolve()))
        if not (dataset_dir / entry["file"]).is_file():
            raise DatasetError(f"image {entry['file']!r} is missing from the dataset")
    return entries


def fingerprint(dataset_dir: Path, entries: list[dict], resolution: int, model_key: str) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_VERSION, resolution, model_key, entries], sort_keys=True).encode())
    for entry in entries:
        stat = (dataset_dir / entry["file"]).stat()
        digest.update(f"{entry['file']}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def model_key(pipe) -> str:
    """Identifies the VAE and text encoder whose outputs are cached."""
    vae = dict(pipe.vae.config)
    encoder = pipe.text_encoder.config
    parts = [getattr(pipe, "name_or_path", ""), vae.get("latent_channels"), vae.get("scaling_factor"), vae.get("shift_factor"),
             getattr(encoder, "hidden_size", ""), getattr(encoder, "num_hidden_layers", "")]
    return "|".join(str(part) for part in parts)


def load_image(path: Path, size: tuple[int, int]):
    """RGB, resized to cover `size` (width, height) and centre-cropped to it."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image = image.convert("RGB")
    except OSError as exc:
        raise DatasetError(f"image {path.name!r} cannot be read: {exc}") from exc
    return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            return ImageOps.exif_transpose(opened).size
    except OSError as exc:
        raise DatasetError(f"image {path.name!r} cannot be read: {exc}") from exc


def encode_image(pipe, image):
    """VAE latent (distribution mode), scaled and shifted the way the pipeline un-does it before decoding."""
    import numpy as np
    import torch

    vae = pipe.vae
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    pixels = pixels.to(vae.device, vae.dtype)
    with torch.no_grad():
        latent = vae.encode(pixels).latent_dist.mode()[0]
    return ((latent.float() - vae.config.shift_factor) * vae.config.scaling_factor).cpu()


def encode_caption(pipe, caption: str):
    """Text-encoder states of the caption, on the CPU, encoded wherever the text encoder lives."""
    import torch

    device = pipe.text_encoder.device
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(caption, device=device, do_classifier_free_guidance=False,
                                       max_sequence_length=MAX_SEQUENCE_LENGTH)
    return embeds[0].cpu()


def build_samples(pipe, dataset_dir: Path, entries: list[dict], resolution: int) -> list[Sample]:
    buckets = make_buckets(resolution)
    samples = []
    for entry in entries:
        path = dataset_dir / entry["file"]
        width, height = pick_bucket(*image_size(path), buckets)
        caption = str(entry.get("caption") or "")
        latent = encode_image(pipe, load_image(path, (width, height)))
        samples.append(Sample(entry["file"], caption, width, height, latent, encode_caption(pipe, caption)))
    return samples


def load_or_build(pipe, dataset_dir: Path, cache_path: Path, resolution: int) -> list[Sample]:
    """The cached samples when the cache matches the dataset and model; otherwise encode and cache them."""
    import torch

    entries = read_manifest(dataset_dir)
    key = fingerprint(dataset_dir, entries, resolution, model_key(pipe))
    if cache_path.is_file():
        try:
            cached = torch.load(cache_path, map_location="cpu", weights_only=True)
            if cached.get("fingerprint") == key:
                log.info("training data from cache %s", cache_path)
                return [Sample(**item) for item in cached["samples"]]
        except Exception as exc:  # a damaged cache is rebuilt
            log.warning("ignoring the training cache %s: %r", cache_path, exc)
    samples = build_samples(pipe, dataset_dir, entries, resolution)
    payload = {"fingerprint": key, "samples": [sample.__dict__ for sample in samples]}
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = cache_path.with_suffix(".tmp")
    torch.save(payload, scratch)
    os.replace(scratch, cache_path)
    log.info("encoded %d training images into %s", len(samples), cache_path)
    return samples
