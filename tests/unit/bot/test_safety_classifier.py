"""The image safety check's classifiers and service (bot/safety/), on images made here (nothing downloaded).

The real NudeNet detector (the `safety` extra, in the test extra too) must pass a plain picture and run on a
synthetic one; the marker classifier (the tests' CONTENT_CLASSIFIER=marker) flags exactly the PNGs whose prompt
holds its marker; the service classifies one image at a time off the event loop and fails closed.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from bot.safety import (
    FLAG_THRESHOLD,
    TEST_MARKER,
    ContentCheck,
    ContentCheckUnavailable,
    MarkerClassifier,
    NudeNetClassifier,
    Verdict,
)


def png(pixels: np.ndarray, prompt: str | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    if prompt is not None:
        info.add_itxt("prompt", prompt)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def gradient(size: int = 1024) -> np.ndarray:
    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    return np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 90, np.uint8)],
                    axis=-1)


def shapes(size: int = 768) -> np.ndarray:
    """Noise with skin-toned blobs: something for the detector to look at, drawn here."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for cx, cy, r in ((size // 3, size // 3, size // 6), (2 * size // 3, size // 2, size // 5)):
        pixels[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (224, 172, 140)
    return pixels


# -- the real detector -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nudenet() -> NudeNetClassifier:
    classifier = NudeNetClassifier()
    assert classifier.available() is None, "the test extra installs nudenet and onnxruntime"
    return classifier


def test_nudenet_passes_a_plain_picture(nudenet):
    verdict = nudenet.classify(png(gradient()))
    assert verdict == Verdict(checked=True, flagged=False)
    assert nudenet.classify(png(np.full((512, 640, 3), 200, np.uint8))).flagged is False  # solid, not square


def test_nudenet_runs_on_a_synthetic_picture(nudenet):
    picture = shapes()
    detections = nudenet._load().detect(np.ascontiguousarray(picture[:, :, ::-1]))
    assert isinstance(detections, list) and all({"class", "score", "box"} <= set(found) for found in detections)
    verdict = nudenet.classify(png(picture))
    assert verdict.checked and verdict == nudenet.verdict(detections)  # classify is detect + the rule below


def test_only_exposed_parts_over_the_threshold_flag():
    rule = NudeNetClassifier()
    assert rule.verdict([{"class": "FEMALE_BREAST_EXPOSED", "score": 0.81, "box": [0, 0, 9, 9]}]) == Verdict(
        checked=True, flagged=True, findings=("FEMALE_BREAST_EXPOSED 0.81",))
    for quiet in ({"class": "FEMALE_BREAST_EXPOSED", "score": FLAG_THRESHOLD - 0.01},
                  {"class": "FACE_FEMALE", "score": 0.99}, {"class": "BUTTOCKS_COVERED", "score": 0.99},
                  {"class": "MALE_BREAST_EXPOSED", "score": 0.99}):
        assert not rule.verdict([quiet]).flagged, quiet
    for label in ("MALE_GENITALIA_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "BUTTOCKS_EXPOSED", "ANUS_EXPOSED"):
        assert rule.verdict([{"class": label, "score": FLAG_THRESHOLD}]).flagged, label


def test_a_picture_too_big_to_decode_is_not_checked(nudenet):
    huge = io.BytesIO()
    Image.new("L", (4100, 4100)).save(huge, format="PNG")
    assert nudenet.classify(huge.getvalue()) == Verdict.unchecked("4100x4100 is over 16777216 pixels")


# -- the tests' marker classifier ----------------------------------------------------------------------------------

def test_the_marker_classifier_flags_its_marker_image_only():
    marker = MarkerClassifier()
    assert marker.classify(png(gradient(64), prompt=f"a cat {TEST_MARKER}")).flagged
    assert not marker.classify(png(gradient(64), prompt="a cat")).flagged
    assert not marker.classify(png(gradient(64))).flagged


# -- the service ---------------------------------------------------------------------------------------------------

class Slow:
    """Records how many classify calls overlap, and on which thread."""

    def __init__(self):
        self.running = self.most = 0
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def available(self) -> str | None:
        return None

    def classify(self, png: bytes) -> Verdict:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(threading.current_thread().name)
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
        return MarkerClassifier().classify(png)


async def test_one_image_at_a_time_off_the_event_loop():
    slow = Slow()
    check = ContentCheck(slow)
    try:
        plain, flagged = png(gradient(32)), png(gradient(32), prompt=TEST_MARKER)
        ticks = 0

        async def ticking():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        ticker = asyncio.create_task(ticking())
        verdicts = await asyncio.gather(*(check.screen([plain, plain, flagged]) for _ in range(4)),
                                        check.screen([plain]))
        ticker.cancel()
        assert slow.most == 1 and len(slow.threads) == 1 and ticks > 10  # the loop ran while the thread worked
        assert [v.flagged for v in verdicts] == [True, True, True, True, False]
        assert verdicts[0].findings == (f"{TEST_MARKER} 1.00",)
    finally:
        check.close()


class Missing:
    def available(self) -> str | None:
        return "nudenet not installed"

    def classify(self, png: bytes) -> Verdict:
        raise ContentCheckUnavailable("nudenet not installed")


class Broken(Missing):
    def classify(self, png: bytes) -> Verdict:
        raise ValueError("not a PNG")


async def test_a_classifier_that_cannot_run_gives_an_unchecked_verdict():
    for classifier, reason in ((Missing(), "nudenet not installed"), (Broken(), "the classifier failed: ValueError")):
        check = ContentCheck(classifier)
        try:
            assert await check.screen([png(gradient(16))]) == Verdict.unchecked(reason)
        finally:
            check.close()
