"""`captions.filter`: words or phrases masked or dropped from captions before any output sees them.

A rule is a plain word (masked), or `{"pattern": "...", "action": "mask" | "drop"}`. A pattern is
one or more words separated by spaces; in each word `*` stands for any run of letters and `?` for
one letter, matched case-insensitively against whole words (`gui*` matches "guitar" and "guitars",
never "beguile"). Regular expressions are deliberately not accepted: a caller's regex can take
exponential time on a caption (catastrophic backtracking), while these word globs are matched by a
two-pointer scan in time linear-by-pattern per word, and both the rule count and their length are
capped.

`mask` replaces each letter of a matched word with `*`; `drop` removes the matched words (and the
space before them). The caption stage applies the filter once, where caption events are created,
so SSE, WebVTT, burn-in, the data channel, trickle data and anything that reads the event bus
later only ever see the filtered text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_RULES = 100
MAX_PATTERN_CHARS = 64
MAX_PATTERN_WORDS = 4
MAX_WILDCARDS = 4  # per pattern: more adds nothing a filter list needs
MASK_CHAR = "*"

# a caption word: letters/digits with inner apostrophes or hyphens ("don't", "e-mail")
_WORD = re.compile(r"\w+(?:['’-]\w+)*")
_PATTERN_WORD = re.compile(r"^[\w'’*?-]+$")


class FilterRule(BaseModel):
    """One entry of `captions.filter`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str = Field(min_length=1, max_length=MAX_PATTERN_CHARS)
    action: Literal["mask", "drop"] = "mask"

    @field_validator("pattern")
    @classmethod
    def _words_and_wildcards_only(cls, value: str) -> str:
        words = value.split()
        if not words:
            raise ValueError("a filter pattern needs at least one word")
        if len(words) > MAX_PATTERN_WORDS:
            raise ValueError(f"a filter pattern has at most {MAX_PATTERN_WORDS} words")
        for word in words:
            if not _PATTERN_WORD.match(word):
                raise ValueError(
                    f"filter pattern word {word!r}: only letters, digits, ' - and the wildcards * and ? are allowed"
                )
            if word.strip("*?") == "":
                raise ValueError(f"filter pattern word {word!r} would match every word")
        if sum(value.count(c) for c in "*?") > MAX_WILDCARDS:
            raise ValueError(f"a filter pattern has at most {MAX_WILDCARDS} wildcards")
        return " ".join(words)


def parse_rules(value: Any) -> list[FilterRule]:
    """`captions.filter` as given (plain strings and rule objects) → rules. Raises ValueError."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("captions.filter must be a list of words or {pattern, action} objects")
    if len(value) > MAX_RULES:
        raise ValueError(f"captions.filter has at most {MAX_RULES} entries")
    return [FilterRule(pattern=v) if isinstance(v, str) else FilterRule.model_validate(v) for v in value]


def glob_match(pattern: str, word: str) -> bool:
    """`pattern` (casefolded, with `*` and `?`) matches the whole `word` (casefolded). The classic
    two-pointer wildcard match: it backtracks only to the last `*`, so it cannot blow up."""
    p = w = 0
    star, mark = -1, 0
    while w < len(word):
        if p < len(pattern) and (pattern[p] == "?" or pattern[p] == word[w]):
            p += 1
            w += 1
        elif p < len(pattern) and pattern[p] == "*":
            star, mark = p, w
            p += 1
        elif star >= 0:
            p = star + 1
            mark += 1
            w = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


@dataclass(frozen=True)
class _Compiled:
    words: tuple[str, ...]
    drop: bool


class CaptionFilter:
    """The compiled rules of one stream. `apply(text)` → (filtered text, words matched)."""

    def __init__(self, rules: list[FilterRule] | None = None) -> None:
        self.rules = list(rules or [])[:MAX_RULES]
        self._compiled = [
            _Compiled(tuple(w.casefold() for w in r.pattern.split()), r.action == "drop") for r in self.rules
        ]

    def __bool__(self) -> bool:
        return bool(self._compiled)

    def apply(self, text: str) -> tuple[str, int]:
        if not self._compiled or not text:
            return text, 0
        spans = [(m.start(), m.end(), m.group().casefold()) for m in _WORD.finditer(text)]
        # per word: None (kept), "mask" or "drop"; the first rule that matches a word decides
        actions: list[str | None] = [None] * len(spans)
        for i in range(len(spans)):
            if actions[i] is not None:
                continue
            for rule in self._compiled:
                n = len(rule.words)
                if i + n > len(spans) or any(actions[i + k] is not None for k in range(n)):
                    continue
                if all(glob_match(rule.words[k], spans[i + k][2]) for k in range(n)):
                    for k in range(n):
                        actions[i + k] = "drop" if rule.drop else "mask"
                    break
        matched = sum(a is not None for a in actions)
        if not matched:
            return text, 0
        out: list[str] = []
        cursor = 0
        for (start, end, _), action in zip(spans, actions):
            if action is None:
                continue
            between = text[cursor:start]
            if action == "drop":
                out.append(between.rstrip(" "))  # the space before a dropped word goes with it
            else:
                out.append(between + MASK_CHAR * (end - start))
            cursor = end
        out.append(text[cursor:])
        filtered = "".join(out)
        filtered = re.sub(r" {2,}", " ", filtered)
        filtered = re.sub(r"^[\s,;:]+", "", filtered)  # a sentence that began with a dropped word
        return filtered.strip(), matched
