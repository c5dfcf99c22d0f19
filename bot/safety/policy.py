"""What /mod content's mode does with a result: the one rule, a pure function (tests/unit/bot/test_safety_policy.py).

A guild's row stores the choice names; NULL means the default (mode off: today's behaviour; age-restricted
channels allowed: results there are not checked, since the server made those channels for adult content).
"""

from __future__ import annotations

from enum import StrEnum

from .classifiers import Verdict


class ContentMode(StrEnum):
    OFF = "off"  # no check: results are posted as before (the spoilers setting still applies)
    SPOILER = "spoiler"  # a flagged result is posted behind a spoiler
    BLOCK = "block"  # a flagged result is not posted; its member is told privately

    @classmethod
    def of(cls, stored: str | None) -> ContentMode:
        return cls(stored) if stored is not None and stored in cls._value2member_map_ else cls.OFF


class AgeRestrictedRule(StrEnum):
    ALLOW = "allow"  # results in age-restricted (nsfw) channels are not checked
    SAME = "same"  # the same rule in every channel

    @classmethod
    def of(cls, stored: str | None) -> AgeRestrictedRule:
        return cls(stored) if stored is not None and stored in cls._value2member_map_ else cls.ALLOW


class Action(StrEnum):
    POST = "post"
    SPOILER = "spoiler"
    BLOCK = "block"


def needs_check(mode: ContentMode, rule: AgeRestrictedRule, age_restricted_channel: bool) -> bool:
    """Whether the classifier runs at all: not when off, nor in an age-restricted channel the server allows."""
    return mode is not ContentMode.OFF and not (rule is AgeRestrictedRule.ALLOW and age_restricted_channel)


def decide(mode: ContentMode, rule: AgeRestrictedRule, age_restricted_channel: bool, verdict: Verdict | None) -> Action:
    """The action for one result. Fails closed: a result the check could not look at (no classifier installed,
    an error) is treated as flagged, so `block` never posts an unchecked image and `spoiler` hides it."""
    if not needs_check(mode, rule, age_restricted_channel):
        return Action.POST
    if verdict is not None and verdict.checked and not verdict.flagged:
        return Action.POST
    return Action.BLOCK if mode is ContentMode.BLOCK else Action.SPOILER
