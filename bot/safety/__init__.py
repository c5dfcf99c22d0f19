"""The optional image safety check (/mod content mode): a classifier, the policy, and the service that runs them."""

from .classifiers import (
    CONTENT_CLASSIFIERS,
    FLAG_LABELS,
    FLAG_THRESHOLD,
    TEST_MARKER,
    ContentCheckUnavailable,
    ContentClassifier,
    MarkerClassifier,
    NudeNetClassifier,
    Verdict,
    make_classifier,
)
from .policy import Action, AgeRestrictedRule, ContentMode, decide, needs_check
from .service import ContentCheck

__all__ = ["CONTENT_CLASSIFIERS", "FLAG_LABELS", "FLAG_THRESHOLD", "TEST_MARKER", "Action", "AgeRestrictedRule",
           "ContentCheck", "ContentCheckUnavailable", "ContentClassifier", "ContentMode", "MarkerClassifier",
           "NudeNetClassifier", "Verdict", "decide", "make_classifier", "needs_check"]
