"""Matching prompts against a server's blocklist, robust to disguised words and slow regexes.

A blocklist entry is a word or phrase (matched as whole words, any case) or `re:<regex>`. Members
disguise words: zero-width and other invisible characters inside them, full-width or mathematical
letters, Cyrillic and Greek letters that look like Latin ones, combining accents. `normalise` undoes
these on both the pattern and the prompt before a word is matched; a regex is tried on the prompt as
typed and on its normalised form.

Moderators' regexes run on members' prompts, so one with catastrophic backtracking (`(a+)+$` against
"aaaa…b") could stall the bot. They run with the `regex` module's timeout, in the thread that
`first_match` is called from (the store calls it through asyncio.to_thread); one that runs out of
time counts as a match (fail closed: the prompt is refused, and the moderators see which pattern
did it). `valid_pattern` refuses, when a pattern is added, one whose counted repeats would make
compiling it slow and one that is already too slow on simple probe strings.
"""

from __future__ import annotations

import logging
import re
import unicodedata

import regex

log = logging.getLogger(__name__)

MAX_PATTERN = 200
MATCH_TIMEOUT = 0.05  # seconds per regex and prompt: real patterns take microseconds on a 512-token prompt
PROBE_LENGTH = 2000  # about the longest prompt that fits the model's 512 tokens
# The regex module expands counted repeats when it compiles: (a{1000}){1000} takes 0.6 s, a{4294967294}
# never finishes. The product of all {n,m} bounds in a pattern is capped, which keeps compiling in
# milliseconds.
MAX_REPEAT_PRODUCT = 10_000
_COUNTED = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")

# Look-alikes of Latin letters, mapped to them. Capitals first (Greek capital Nu looks like N while
# its small form looks like v), then the small forms after casefolding.
_CAPITALS = str.maketrans({
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P",
    "Τ": "T", "Υ": "Y", "Χ": "X",  # Greek
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "У": "Y",
    "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԛ": "Q", "Ԝ": "W", "Ү": "Y", "Ӏ": "I",  # Cyrillic
})
_SMALL = str.maketrans({
    "α": "a", "β": "b", "γ": "y", "ε": "e", "ζ": "z", "η": "n", "ι": "i", "κ": "k", "μ": "u", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w",  # Greek
    "а": "a", "в": "b", "г": "r", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "п": "n", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ь": "b", "ѕ": "s", "і": "i", "ј": "j", "һ": "h", "ԁ": "d", "ԛ": "q", "ԝ": "w",
    "ү": "y", "ӏ": "l",  # Cyrillic
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɡ": "g", "ɩ": "i",  # Latin variants
})
# Combining accents and variation selectors; other scripts' vowel signs (also marks) are kept.
_DIACRITICS = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE00, 0xFE0F),
               (0xFE20, 0xFE2F), (0xE0100, 0xE01EF))


# Chinese, Japanese, Thai and a few others are written without spaces between words: a blocklisted word
# of theirs is found anywhere in a prompt (一个裸体的女人 contains 裸体), and their characters do not
# join a Latin word next to them (一个nude女人 contains "nude"). Only letters and digits of scripts that
# do space their words make a word boundary ("nudes" does not contain "nude").
_UNSPACED_SCRIPTS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
_SPACED_WORD_CHARACTER = rf"[^\W{_UNSPACED_SCRIPTS}]"


def _word_pattern(word: str) -> str:
    """`word` (normalised) as a regex that matches it as a whole word, in spaced and unspaced scripts alike."""
    joins = regex.compile(_SPACED_WORD_CHARACTER)
    before = rf"(?<!{_SPACED_WORD_CHARACTER})" if joins.match(word[0]) else ""
    after = rf"(?!{_SPACED_WORD_CHARACTER})" if joins.match(word[-1]) else ""
    return before + regex.escape(word) + after


def _invisible(ch: str) -> bool:
    if unicodedata.category(ch) == "Cf":  # zero-width space/joiners, soft hyphen, BOM, bidi controls, tags
        return True
    code = ord(ch)
    return any(low <= code <= high for low, high in _DIACRITICS)


def normalise(text: str) -> str:
    """The text as it reads: compatibility forms folded (full-width, math letters, ligatures), invisible
    characters and accents removed, case folded, look-alike letters made Latin, runs of spaces made one."""
    text = unicodedata.normalize("NFKC", text).translate(_CAPITALS).casefold()
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not _invisible(ch))
    text = unicodedata.normalize("NFC", text.translate(_SMALL))
    return " ".join(text.split())


def _repeat_product(body: str) -> float:
    product = 1.0
    for low, high in _COUNTED.findall(body):
        product *= max(int(low or 0), int(high or 0), 1)
    return product


def _compiled(body: str) -> regex.Pattern:
    """Raises regex.error (does not compile) or ValueError (its counted repeats are too large)."""
    if _repeat_product(body) > MAX_REPEAT_PRODUCT:
        raise ValueError("counted repeats too large")
    return regex.compile(body, regex.IGNORECASE)


def prompt_matches(pattern: str, prompt: str) -> bool:
    """`re:<regex>` is a regular expression; anything else is a whole word or phrase, any case and disguise
    (in Chinese and other unspaced scripts, anywhere: `_word_pattern`)."""
    if not pattern.startswith("re:"):
        word = normalise(pattern)
        return bool(word) and regex.search(_word_pattern(word), normalise(prompt)) is not None
    try:
        compiled = _compiled(pattern[3:])
    except regex.error:
        return False  # stored before it was checked and does not compile: it never matched
    except ValueError:
        log.warning("blocklist pattern %r is too costly to compile: refusing the prompt", pattern)
        return True
    try:
        return any(compiled.search(text, timeout=MATCH_TIMEOUT, concurrent=True) is not None
                   for text in (prompt, normalise(prompt)))
    except TimeoutError:
        log.warning("blocklist pattern %r ran out of time on a prompt: refusing the prompt", pattern)
        return True


def first_match(patterns: list[str], prompt: str) -> str | None:
    """The first pattern that matches `prompt`, or None. Blocking (regexes run up to MATCH_TIMEOUT each)."""
    return next((pattern for pattern in patterns if prompt_matches(pattern, prompt)), None)


def valid_pattern(pattern: str) -> str | None:
    """An error message for a pattern that can't be used, or None."""
    if not pattern.strip():
        return "The pattern is empty."
    if len(pattern) > MAX_PATTERN:
        return f"Patterns are at most {MAX_PATTERN} characters."
    if not pattern.startswith("re:"):
        return None if normalise(pattern) else "The pattern has no visible characters."
    body = pattern[3:]
    try:
        compiled = _compiled(body)
    except regex.error as exc:
        return f"That regular expression does not compile: {exc}"
    except ValueError:
        return f"That regular expression's counted repeats ({{n}}, {{n,m}}) multiply to more than {MAX_REPEAT_PRODUCT:,}."
    # Backtracking blows up on a long run of what the pattern repeats followed by a character that fails
    # it: probe prompt-length runs of each letter, digit, space or comma in the pattern (and a few common
    # ones), with the time a prompt gets. A pattern that fails this would refuse such prompts anyway.
    characters = {ch for ch in body if ch.isalnum() or ch in " ,"} | {"a", "0", " "}
    probes = [ch * PROBE_LENGTH + end for ch in sorted(characters)[:12] for end in ("!", "\n")]
    try:
        for probe in probes:
            compiled.search(probe, timeout=MATCH_TIMEOUT, concurrent=True)
    except TimeoutError:
        return "That regular expression is too slow (it backtracks catastrophically, e.g. `(a+)+`): rewrite it."
    return None

