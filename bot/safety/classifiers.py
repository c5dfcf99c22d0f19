"""Image classifiers for the safety check: one PNG in, a Verdict out. Blocking: bot/safety/service.py runs them
on its one thread.

NudeNetClassifier is the real one: NudeNet v3's detector, whose ONNX model (320n, 12 MB) ships inside the
`nudenet` wheel, run on the CPU by onnxruntime: nothing is downloaded at run time. It is an optional
dependency (the `safety` extra); without it, ``available()`` says so and ``classify`` raises
ContentCheckUnavailable, which the service turns into "not checked" (the policy then fails closed).

MarkerClassifier is a test hook (CONTENT_CLASSIFIER=marker): it flags a PNG whose `prompt` text chunk holds
TEST_MARKER, so the tests can make a flagged result from a prompt (the tiny model draws noise, and no test
may download a real picture that NudeNet would flag).
"""

from __future__ import annotations

import importlib.util
import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

# NudeNet's labels that make a result "flagged": exposed genitalia, breasts, buttocks or anus (not faces,
# bellies, feet, armpits, male chests, nor anything covered), each detected with at least FLAG_THRESHOLD.
FLAG_LABELS = frozenset({"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
                         "BUTTOCKS_EXPOSED", "ANUS_EXPOSED"})
# NudeNet reports boxes from 0.2 up; 0.5 keeps its confident detections (its own examples use 0.5 too).
FLAG_THRESHOLD = 0.5
# A result bigger than this is not decoded (the worker's largest, Upscale 2x, is 2048x2048): "not checked".
MAX_PIXELS = 4096 * 4096
TEST_MARKER = "zimage-safety-test-flag"
CONTENT_CLASSIFIERS = ("nudenet", "marker")


class ContentCheckUnavailable(Exception):
    """The classifier cannot run here (its package is not installed)."""


@dataclass(frozen=True)
class Verdict:
    """What the check found. ``checked`` False: it could not look (the policy treats that as flagged)."""

    checked: bool
    flagged: bool = False
    findings: tuple[str, ...] = ()  # "LABEL 0.83" of each detection that flagged it
    reason: str = ""  # why it was not checked

    @classmethod
    def unchecked(cls, reason: str) -> Verdict:
        return cls(checked=False, reason=reason)

    def describe(self) -> str:
        """For the job record and the logs: why a result was withheld or hidden."""
        if not self.checked:
            return f"not checked ({self.reason})"
        return ", ".join(self.findings) if self.flagged else "nothing flagged"


class ContentClassifier(Protocol):
    """One PNG in, a Verdict out; blocking (CPU work), called from one thread at a time."""

    def available(self) -> str | None:
        """None when it can run; otherwise why not, for the moderator."""
        ...

    def classify(self, png: bytes) -> Verdict: ...


class NudeNetClassifier:
    def __init__(self, threshold: float = FLAG_THRESHOLD):
        self.threshold = threshold
        self._detector: Any = None
        self._loading = threading.Lock()

    def available(self) -> str | None:
        missing = [name for name in ("nudenet", "onnxruntime", "cv2") if importlib.util.find_spec(name) is None]
        if missing:
            return f"{', '.join(missing)} not installed: pip install -e \".[safety]\""
        return None

    def _load(self) -> Any:
        """The detector, loaded once (about 0.2 s of CPU) on first use, not at start: most servers never use it."""
        with self._loading:
            if self._detector is None:
                if problem := self.available():
                    raise ContentCheckUnavailable(problem)
                import nudenet
                import onnxruntime
                from nudenet import NudeDetector

                detector = NudeDetector()  # the model in the wheel: nudenet/320n.onnx
                # One thread: the check shares a small CPU with the bot's event loop, and a 320x320 model gains
                # little from more (NudeDetector builds its session with onnxruntime's defaults: every core).
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                detector.onnx_session = onnxruntime.InferenceSession(
                    str(Path(nudenet.__file__).with_name("320n.onnx")), sess_options=options,
                    providers=["CPUExecutionProvider"])
                self._detector = detector
        return self._detector

    def classify(self, png: bytes) -> Verdict:
        detector = self._load()
        with Image.open(io.BytesIO(png)) as image:
            if image.width * image.height > MAX_PIXELS:
                return Verdict.unchecked(f"{image.width}x{image.height} is over {MAX_PIXELS} pixels")
            import numpy as np

            # NudeNet reads files with cv2.imread, which gives BGR: the same array, decoded by Pillow.
            pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        return self.verdict(detector.detect(pixels))

    def verdict(self, detections: list[dict]) -> Verdict:
        findings = tuple(f"{found['class']} {found['score']:.2f}" for found in detections
                         if found["class"] in FLAG_LABELS and found["score"] >= self.threshold)
        return Verdict(checked=True, flagged=bool(findings), findings=findings)


class MarkerClassifier:
    """The tests' classifier (CONTENT_CLASSIFIER=marker): deterministic, no model."""

    def available(self) -> str | None:
        return None

    def classify(self, png: bytes) -> Verdict:
        with Image.open(io.BytesIO(png)) as image:
            image.load()  # text chunks after the pixels are read too
            prompt = str(getattr(image, "text", {}).get("prompt", ""))
        if TEST_MARKER in prompt:
            return Verdict(checked=True, flagged=True, findings=(f"{TEST_MARKER} 1.00",))
        return Verdict(checked=True)


def make_classifier(name: str) -> ContentClassifier:
    """CONTENT_CLASSIFIER's value to a classifier (bot/settings.py checks the name)."""
    if name == "marker":
        return MarkerClassifier()
    return NudeNetClassifier()
