"""The benchmark's realistic photo set (issue #17): JPEGs in ten sizes with captions of 5-60 words, written in the
manifest format that gpu/training/data.py reads. Deterministic (seeded): the same set in every run."""

from __future__ import annotations

import json
import random
from pathlib import Path

# Ten photo sizes at a 512 px training resolution (scaled with it): phone 4:3 and 16:9, DSLR 3:2, 4:5, a 2:1
# panorama, each in both orientations, and two squares.
PHOTO_SIZES_AT_512 = ((1024, 768), (768, 1024), (1280, 720), (720, 1280), (1200, 800), (800, 1200), (864, 1080),
                      (1024, 1024), (640, 640), (1280, 640))
CAPTION_WORDS = (5, 60)
_SUBJECTS = ("sks dog", "a ceramic teapot", "an old lighthouse", "a red bicycle", "a bowl of ramen",
             "a knitted scarf", "a mountain cabin", "a vintage camera")
_DETAILS = ("on a wooden table", "in soft morning light", "photographed from a low angle with a wide lens",
            "surrounded by autumn leaves", "shallow depth of field", "warm colours",
            "in a minimalist studio with a grey backdrop", "a single softbox from the left",
            "at night under neon signs in the rain", "reflections on the wet street", "cinematic grade",
            "film grain", "seen through a window", "next to a sleeping cat", "on a snowy balcony",
            "with a blurred crowd behind", "golden hour backlight", "overcast sky", "close-up", "35mm lens")
CAPTION_TEXTS = (*_SUBJECTS, *_DETAILS)  # the words captions are made of (build.py's bench tokenizer learns them)


def photo_sizes(resolution: int) -> list[tuple[int, int]]:
    scale = resolution / 512
    return [(max(16, round(w * scale)), max(16, round(h * scale))) for w, h in PHOTO_SIZES_AT_512]


def caption(rng: random.Random, index: int) -> str:
    """A caption of CAPTION_WORDS[0]..[1] words: a subject, then details until the drawn length."""
    words = rng.randint(*CAPTION_WORDS)
    text = _SUBJECTS[index % len(_SUBJECTS)].split()
    while len(text) < words:
        text[-1] += ","
        text += rng.choice(_DETAILS).split()
    return " ".join(text[:words]).rstrip(",")


def write_dataset(root: Path, count: int, resolution: int, seed: int = 0) -> Path:
    """`count` JPEG photos in the ten ``photo_sizes(resolution)`` (in turn), captions of 5-60 words, and
    manifest.json ({file, caption, width, height, source_name}). Smooth colour fields with grain: they
    encode fast and look like photos to the VAE more than white noise does."""
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    rng, noise = random.Random(seed), np.random.default_rng(seed)
    sizes = photo_sizes(resolution)
    entries = []
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        corners = noise.uniform(0, 255, (2, 2, 3)).astype(np.float32)
        across, down = np.linspace(0, 1, width, dtype=np.float32), np.linspace(0, 1, height, dtype=np.float32)
        top = corners[0, 0] + across[:, None] * (corners[0, 1] - corners[0, 0])
        bottom = corners[1, 0] + across[:, None] * (corners[1, 1] - corners[1, 0])
        pixels = top[None] + down[:, None, None] * (bottom - top)[None]
        pixels = np.clip(pixels + noise.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
        name = f"images/{index + 1:04d}.jpg"
        Image.fromarray(pixels).save(root / name, quality=90)
        entries.append({"file": name, "caption": caption(rng, index), "width": width, "height": height,
                        "source_name": f"IMG_{index + 1:04d}.jpg"})
    (root / "manifest.json").write_text(json.dumps(entries, indent=1))
    return root


def describe_dataset(dataset_dir: Path) -> dict:
    """What the set holds: image count, sizes, orientations, caption words."""
    entries = json.loads((dataset_dir / "manifest.json").read_text())
    sizes = sorted({(entry["width"], entry["height"]) for entry in entries})
    words = [len(entry["caption"].split()) for entry in entries]
    return {"images": len(entries), "sizes": [list(size) for size in sizes],
            "landscape": sum(e["width"] > e["height"] for e in entries),
            "portrait": sum(e["width"] < e["height"] for e in entries),
            "square": sum(e["width"] == e["height"] for e in entries),
            "caption_words": [min(words), max(words)]}
