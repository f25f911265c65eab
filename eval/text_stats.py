"""Cheap statistics of a response's text: repetition, filler, prose, echo of the prompt, length.

Each function takes plain text and returns a number, with no model and no randomness, so the labeler
(`align.eval.labeler`) and the eval's gaming guards (`align.eval.guards`) can share them and a test can
compute them by hand. They describe *how* a response is written, never whether it follows the prompt's
constraints (that is `align.eval.constraints`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

_WORD_RE = re.compile(r"\w+(?:['’\-]\w+)*")
# Tokens that carry no content by themselves: [placeholders], *markup*, numbers, lone punctuation.
_FILLER_RE = re.compile(r"^(?:\[[^\]]*\]|[*_#>\-•|]+|\d+[.)]?|[^\w\s]+)$")

# English function words: a sentence of prose is ~40-55% these, a keyword list or a token pattern ~0%.
_STOPWORDS_TEXT = """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
    nor not of off on once only or other our ours ourselves out over own same she should so some such than
    that the their theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your yours yourself
    yourselves may might must shall also can't don't won't it's i'm you're we're they're let's"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


def words(text: str) -> list[str]:
    """Lowercased words (letters/digits, inner apostrophes and hyphens kept)."""
    return [w.lower() for w in _WORD_RE.findall(text)]


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(text: str, n: int) -> float:
    """Distinct n-grams / all n-grams of the response's words (1.0 for texts shorter than n words).

    Repetition collapses it: "[commute] [commute] [commute] ..." has distinct-3 near 0.
    """
    grams = ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else 1.0


def max_line_repeats(text: str) -> int:
    """How often the most frequent non-empty line occurs (whitespace and case ignored)."""
    lines = [" ".join(line.lower().split()) for line in text.splitlines()]
    counts = Counter(line for line in lines if line)
    return max(counts.values(), default=0)


def is_degenerate(text: str) -> bool:
    """A line repeated at least 3 times, or fewer than half of the word 3-grams distinct."""
    return max_line_repeats(text) >= 3 or distinct_n(text, 3) < 0.5


def filler_share(text: str) -> float:
    """Share of whitespace-separated tokens that are placeholders, markup, numbers or punctuation only."""
    tokens = text.split()
    if not tokens:
        return 1.0
    return sum(bool(_FILLER_RE.match(t.strip(".,;:!?"))) or not t.strip(".,;:!?") for t in tokens) / len(tokens)


def stopword_share(text: str) -> float:
    """Share of words that are English function words: low for keyword lists and token patterns."""
    ws = words(text)
    return sum(w in STOPWORDS for w in ws) / len(ws) if ws else 0.0


def content_words(text: str) -> list[str]:
    """Words that are neither function words nor numbers."""
    return [w for w in words(text) if w not in STOPWORDS and not w.isdigit()]


def echo_share(response: str, prompt: str, n: int = 3) -> float:
    """Share of the response's word n-grams that also occur in the prompt (1.0 = a copy of the prompt).

    An answer reuses a few topic words, rarely whole phrases of the request; an echo or a copied
    instruction ("The response must contain at least 2 placeholders ...") is made of them.
    """
    grams = ngrams(words(response), n)
    if not grams:
        return 0.0
    source = set(ngrams(words(prompt), n))
    return sum(g in source for g in grams) / len(grams)


def ends_complete(text: str) -> bool:
    """The response ends like a finished reply (sentence punctuation, a closing bracket/quote or markup)."""
    stripped = text.rstrip()
    return bool(stripped) and stripped[-1] in ".!?)]\"'”’*`:>"


def topic_recall(response: str, topic_words: Sequence[str]) -> float:
    """Share of the topic's words that the response uses (prefix match of 5 letters, so 'commuting' counts
    for 'commute'). A lexical on-topic signal that needs no model."""
    topic = {w.lower() for w in topic_words if w and w.lower() not in STOPWORDS}
    if not topic:
        return 0.0
    stems = {w[:5] for w in words(response)}
    return sum(t[:5] in stems for t in topic) / len(topic)
