"""/mod content's rule (bot/safety/policy.py): every mode × channel × rule × verdict, and what NULL columns mean."""

from __future__ import annotations

import itertools

import pytest

from bot.safety import Action, AgeRestrictedRule, ContentMode, Verdict, decide, needs_check

CLEAN = Verdict(checked=True)
FLAGGED = Verdict(checked=True, flagged=True, findings=("FEMALE_BREAST_EXPOSED 0.91",))
UNCHECKED = Verdict.unchecked("nudenet not installed")


def expected(mode: ContentMode, rule: AgeRestrictedRule, nsfw: bool, verdict: Verdict) -> Action:
    """The table the README states, written out case by case."""
    if mode is ContentMode.OFF:
        return Action.POST
    if nsfw and rule is AgeRestrictedRule.ALLOW:
        return Action.POST  # the server made that channel for adult content
    if verdict is CLEAN:
        return Action.POST
    # flagged, or not checked: fail closed
    return Action.BLOCK if mode is ContentMode.BLOCK else Action.SPOILER


@pytest.mark.parametrize(("mode", "rule", "nsfw", "verdict"),
                         list(itertools.product(ContentMode, AgeRestrictedRule, (False, True), (CLEAN, FLAGGED, UNCHECKED))))
def test_every_case(mode, rule, nsfw, verdict):
    assert decide(mode, rule, nsfw, verdict) is expected(mode, rule, nsfw, verdict)


def test_flagged_results_are_blocked_or_hidden_and_clean_ones_posted():
    assert decide(ContentMode.BLOCK, AgeRestrictedRule.SAME, False, FLAGGED) is Action.BLOCK
    assert decide(ContentMode.SPOILER, AgeRestrictedRule.SAME, False, FLAGGED) is Action.SPOILER
    assert decide(ContentMode.BLOCK, AgeRestrictedRule.SAME, False, CLEAN) is Action.POST
    assert decide(ContentMode.OFF, AgeRestrictedRule.SAME, False, FLAGGED) is Action.POST


def test_an_unchecked_result_is_never_posted_openly_fail_closed():
    assert decide(ContentMode.BLOCK, AgeRestrictedRule.ALLOW, False, UNCHECKED) is Action.BLOCK
    assert decide(ContentMode.SPOILER, AgeRestrictedRule.ALLOW, False, UNCHECKED) is Action.SPOILER
    assert decide(ContentMode.BLOCK, AgeRestrictedRule.SAME, True, None) is Action.BLOCK


def test_the_classifier_runs_only_where_the_rule_asks():
    assert not needs_check(ContentMode.OFF, AgeRestrictedRule.SAME, False)
    assert not needs_check(ContentMode.BLOCK, AgeRestrictedRule.ALLOW, True)
    assert needs_check(ContentMode.BLOCK, AgeRestrictedRule.ALLOW, False)
    assert needs_check(ContentMode.SPOILER, AgeRestrictedRule.SAME, True)


def test_stored_values_and_their_defaults():
    assert ContentMode.of(None) is ContentMode.OFF and AgeRestrictedRule.of(None) is AgeRestrictedRule.ALLOW
    assert ContentMode.of("block") is ContentMode.BLOCK and AgeRestrictedRule.of("same") is AgeRestrictedRule.SAME
    assert ContentMode.of("bogus") is ContentMode.OFF  # a value this version does not know: today's behaviour
