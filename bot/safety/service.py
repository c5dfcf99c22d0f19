"""The safety check as the bot runs it: a classifier on one thread of its own, beside the event loop.

One thread bounds it: however many results arrive at once, one image is classified at a time (tens to
hundreds of ms of CPU each, bot/safety/classifiers.py), and the event loop never waits on it. Any failure of
the classifier becomes an unchecked Verdict, which bot/safety/policy.py treats as flagged (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from .classifiers import ContentCheckUnavailable, ContentClassifier, Verdict, make_classifier

log = logging.getLogger(__name__)


class ContentCheck:
    def __init__(self, classifier: ContentClassifier):
        self.classifier = classifier
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="content-check")

    @classmethod
    def named(cls, name: str) -> ContentCheck:
        return cls(make_classifier(name))

    def available(self) -> str | None:
        """None when the classifier can run; else why not (what to install)."""
        return self.classifier.available()

    async def screen(self, pngs: list[bytes]) -> Verdict:
        """One verdict for a job's images: flagged if any is, unchecked if any could not be checked."""
        loop = asyncio.get_running_loop()
        findings: list[str] = []
        for png in pngs:
            try:
                verdict = await loop.run_in_executor(self._thread, self.classifier.classify, png)
            except ContentCheckUnavailable as exc:
                return Verdict.unchecked(str(exc))
            except Exception as exc:  # a broken image or model: never post unchecked because of it
                log.warning("the content check failed: %r", exc)
                return Verdict.unchecked(f"the classifier failed: {exc.__class__.__name__}")
            if not verdict.checked:
                return verdict
            findings.extend(verdict.findings)
        return Verdict(checked=True, flagged=bool(findings), findings=tuple(findings))

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
