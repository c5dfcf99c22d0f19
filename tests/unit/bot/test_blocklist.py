"""The prompt blocklist against bypasses and slow regexes (issue #18)."""

from __future__ import annotations

import threading
import time

import pytest

from bot.db.jobs import JobStore
from bot.db.migrate import upgrade_to_head
from bot.db.moderation import ModerationStore, prompt_matches, valid_pattern


@pytest.mark.parametrize("prompt", [
    "a nude portrait",
    "a NUDE portrait",
    "a n\u200bude portrait",  # zero-width space
    "a nu\u200dd\u2060e portrait",  # zero-width joiner, word joiner
    "a nu\u00adde portrait",  # soft hyphen
    "a \ufeffnude portrait",  # byte-order mark
    "a \uff4e\uff55\uff44\uff45 portrait",  # full-width
    "a \U0001d427\U0001d42e\U0001d41d\U0001d41e portrait",  # mathematical bold
    "a nud\u0435 portrait",  # Cyrillic e
    "a nu\u0501e portrait",  # Cyrillic komi de (looks like d)
    "a NUD\u0395 portrait",  # Greek capital epsilon
    "a n\u03c5de portrait",  # Greek upsilon
    "a nu\u0301de portrait",  # a combining accent
    "a\u00a0nude\u3000portrait",  # no-break and ideographic spaces around it
])
def test_disguised_words_are_still_matched(prompt):
    assert prompt_matches("nude", prompt)


@pytest.mark.parametrize("prompt", ["a prude portrait", "denuded hills", "nudes", "n-ude", "a portrait"])
def test_whole_words_only_as_before(prompt):
    assert not prompt_matches("nude", prompt)


def test_phrases_and_patterns_see_the_normalised_prompt():
    assert prompt_matches("red fox", "a r\u0435d  \u200bfox")
    assert prompt_matches("re:n[u]de", "\uff4e\uff55\uff44\uff45")
    assert prompt_matches("re:^a\\s+nude", "a n\u200bude")
    assert prompt_matches("NUD\u0415", "nude")  # a pattern typed with a look-alike matches the plain word too


def run_with_bound(target, seconds: float) -> tuple[bool, object]:
    """Run target() in a thread; (finished within `seconds`, its result)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(target()), daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), (result[0] if result else None)


def test_a_catastrophic_regex_is_cut_off_and_counts_as_a_match():
    """`(a+)+$` against 'aaaa…b' backtracks without end; a pattern stored before this check must not hang the bot."""
    finished, matched = run_with_bound(lambda: prompt_matches("re:(a+)+$", "a" * 3000 + "b"), 2.0)
    assert finished, "the regex ran unbounded"
    assert matched is True  # fail closed: the prompt is refused


@pytest.mark.parametrize("pattern", ["re:(a+)+$", "re:(x+x+)+y", "re:(\\w+\\s?)*$", "re:(a|aa)+$", "re:(.*?,){11}P",
                                     "re:a{4294967294}", "re:(a{1000}){1000}"])
def test_a_catastrophic_regex_is_refused_when_added(pattern):
    start = time.perf_counter()
    problem = valid_pattern(pattern)
    assert problem is not None and ("too slow" in problem or "multiply" in problem)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("pattern", ["re:n[u]de", "re:\\bgore\\b", "re:(red|blue) fox", "nude", "red fox"])
def test_ordinary_patterns_are_accepted(pattern):
    assert valid_pattern(pattern) is None


async def test_the_store_matches_off_the_event_loop(tmp_path, monkeypatch):
    """Matching runs in a worker thread: even within its time bounds, a slow regex never stalls the event loop."""
    from bot import blocklist

    threads, real = [], blocklist.first_match
    monkeypatch.setattr(blocklist, "first_match", lambda *args: threads.append(threading.get_ident()) or real(*args))
    upgrade_to_head(f"sqlite:///{tmp_path / 'mod.db'}")
    jobs = JobStore(f"sqlite+aiosqlite:///{tmp_path / 'mod.db'}")
    try:
        store = ModerationStore(jobs)
        await store.add_blocked(1, "re:(a+)+$", 99)
        await store.add_blocked(1, "gore", 99)
        start = time.perf_counter()
        match = await store.blocked_match(1, "a" * 3000 + "b")
        assert match is not None and match.pattern == "re:(a+)+$" and time.perf_counter() - start < 2.0
        assert (await store.blocked_match(1, "g\u200bore")).pattern == "gore"
        assert (await store.blocked_match(1, "a harmless prompt")) is None
        assert threads and threading.get_ident() not in threads
    finally:
        await jobs.close()
