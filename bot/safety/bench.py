"""CPU time of the image safety check per result: `python -m bot.safety.bench [--images 20] [--size 1024] [--json OUT]`.

Runs NudeNetClassifier.classify (PNG decode, NudeNet's own resize to 320x320, the ONNX model on one CPU thread,
the flag rule) on PNGs made here: a gradient and noise with skin-toned blobs, the size of a 1:1 result. Prints the
one-time model load and, per image, the median and p95 of the process's CPU time (every thread's) and wall time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time

import numpy as np
from PIL import Image

from .classifiers import NudeNetClassifier


def pictures(size: int) -> dict[str, bytes]:
    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    gradient = np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)),
                         np.full((size, size), 90, np.uint8)], axis=-1)
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    noise[(xx - size // 3) ** 2 + (yy - size // 3) ** 2 < (size // 6) ** 2] = (224, 172, 140)
    out = {}
    for name, pixels in (("gradient", gradient), ("noise", noise)):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=4)  # the worker's level (gpu/png.py)
        out[name] = buffer.getvalue()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=20, help="classifications per picture")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    classifier = NudeNetClassifier()
    if problem := classifier.available():
        raise SystemExit(problem)
    cpu, wall = time.process_time(), time.perf_counter()
    classifier._load()
    record: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                    "size": args.size, "load_cpu_s": time.process_time() - cpu, "load_wall_s": time.perf_counter() - wall}
    for name, png in pictures(args.size).items():
        classifier.classify(png)  # the first run allocates onnxruntime's buffers
        cpus, walls = [], []
        for _ in range(args.images):
            cpu, wall = time.process_time(), time.perf_counter()
            verdict = classifier.classify(png)
            cpus.append(time.process_time() - cpu)
            walls.append(time.perf_counter() - wall)
        record[name] = {"cpu_ms_median": 1000 * statistics.median(cpus),
                        "cpu_ms_p95": 1000 * sorted(cpus)[int(0.95 * (len(cpus) - 1))],
                        "wall_ms_median": 1000 * statistics.median(walls), "flagged": verdict.flagged,
                        "png_bytes": len(png)}
    print(json.dumps(record, indent=2))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(record, out, indent=2)


if __name__ == "__main__":
    main()
