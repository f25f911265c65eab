"""Verifiable constraints (IFEval-style, Zhou et al. 2023): a gold reward computable from the text alone.

Each constraint is a frozen dataclass with `describe()` (the instruction appended to a prompt) and
`check(response)`. `check` normalises the response first (unicode NFC, CRLF -> LF, outer whitespace
stripped), so every checker sees the same text.

Why not IFEval's own code: it is not on PyPI and needs nltk data and langdetect downloads; these checkers
are small, deterministic and have no dependencies.

`find_conflicts` decides which constraints may share a prompt. A set is rejected when it is contradictory
(all-lowercase + all-uppercase, "at least 200 words" + "fewer than 100 words") or ambiguous to count
(exactly 3 paragraphs + a title line: is the title a paragraph?), so the gold reward never asks for the
impossible.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from align.errors import AlignError

# ---------------------------------------------------------------------------------------------------------
# Text helpers shared by the checkers.
# ---------------------------------------------------------------------------------------------------------

# A word: unicode letters/digits, with inner apostrophes or hyphens ("don't", "well-known" are one word).
_WORD_RE = re.compile(r"\w+(?:['’\-]\w+)*")
# A sentence ends at . ! ? … (followed by whitespace or the end) or at CJK 。！？ (no space needed).
_SENTENCE_END_RE = re.compile(r"(?:[.!?…]+[\"'”’)\]]*(?=\s|$)|[。！？]+[\"'”’)\]]*)")
# Abbreviations whose final period does not end a sentence (compared lowercase, trailing '.' removed).
_ABBREVIATIONS = frozenset(
    {"e.g", "i.e", "etc", "vs", "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "no", "fig", "approx",
     "p.s", "p.p.s", "u.s", "u.k", "a.m", "p.m"}
)
# Leading list / heading markers removed before counting sentences on a line.
_LINE_MARKER_RE = re.compile(r"^[ \t]*(?:[*\-•][ \t]+|\d+[.)][ \t]+|#{1,6}[ \t]+|>[ \t]*)")
_WORD_CHAR_RE = re.compile(r"\w")
_PARAGRAPH_SPLIT_RE = re.compile(r"\n[ \t]*\n\s*")
_COMMAS = frozenset(",，、﹐")
_QUESTION_MARKS = frozenset("?？")
_EXCLAMATIONS = frozenset("!！¡")
_CLOSERS = "\"'”’)]*_ \t\n"


def normalize_response(response: str) -> str:
    """NFC-normalise, unify line endings and strip outer whitespace: what every checker sees."""
    if not isinstance(response, str):
        raise AlignError(f"response must be a string, got {type(response).__name__}")
    text = unicodedata.normalize("NFC", response).replace("\r\n", "\n").replace("\r", "\n")
    return text.strip()


def words(text: str) -> list[str]:
    """Word tokens (unicode-aware; contractions and hyphenated words count once)."""
    return _WORD_RE.findall(text)


def count_words(text: str) -> int:
    return len(words(text))


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`. Sentences never span lines, so list items and headings count one each.

    Leading list/heading markers are removed first ("1. Foo." is one sentence, not two); common
    abbreviations (e.g., Dr., P.S.) do not end a sentence; segments without a word character are dropped.
    """
    sentences: list[str] = []
    for raw_line in text.split("\n"):
        line = _LINE_MARKER_RE.sub("", raw_line).strip()
        if not line:
            continue
        pending, start = "", 0
        for match in _SENTENCE_END_RE.finditer(line):
            pending += line[start : match.end()]
            start = match.end()
            last_token = pending.split()[-1] if pending.split() else ""
            if match.group().startswith(".") and last_token.lower().rstrip(".") in _ABBREVIATIONS:
                continue
            sentences.append(pending.strip())
            pending = ""
        pending += line[start:]
        if pending.strip():
            sentences.append(pending.strip())
    return [s for s in sentences if re.search(r"\w", s)]


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def split_paragraphs(text: str) -> list[str]:
    """Non-empty chunks separated by one or more blank lines."""
    return [p.strip() for p in _PARAGRAPH_SPLIT_RE.split(text.strip()) if p.strip()]


def _first_word(text: str) -> str | None:
    """First word, skipping leading punctuation and markdown ("**Firstly**," -> "Firstly")."""
    match = _WORD_RE.search(text)
    if match is None or re.search(r"\w", text[: match.start()]):
        return None
    return match.group()


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    """Case-insensitive whole-word match of `phrase`; inner whitespace may be any whitespace."""
    body = r"\s+".join(re.escape(part) for part in phrase.split())
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def _has_upper(text: str) -> bool:
    return any(ch.isupper() or ch.istitle() for ch in text)


def _has_lower(text: str) -> bool:
    return any(ch.islower() for ch in text)


def _is_caps_word(word: str) -> bool:
    """An ALL-CAPS word: at least two letters and no lowercase ("I" and "A" do not count)."""
    return sum(ch.isalpha() for ch in word) >= 2 and word.isupper()


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AlignError(message)


# ---------------------------------------------------------------------------------------------------------
# Base class and registry.
# ---------------------------------------------------------------------------------------------------------


class RequiredText(NamedTuple):
    """Text a constraint forces into the response, used to detect clashes (e.g. a phrase with a comma)."""

    text: str
    case_sensitive: bool


class Constraint:
    """A verifiable instruction. Subclasses are frozen dataclasses whose fields are the params."""

    type_id: ClassVar[str]
    # Aspects of the response this constraint controls; two constraints sharing a slot never co-occur.
    slots: ClassVar[frozenset[str]] = frozenset()

    def describe(self) -> str:
        raise NotImplementedError

    def _check(self, text: str) -> bool:
        """Check normalised text (see `normalize_response`)."""
        raise NotImplementedError

    def check(self, response: str) -> bool:
        """True when `response` follows the instruction. A response without any word character (empty,
        only punctuation) satisfies nothing, so "fewer than N words" cannot be won by saying nothing."""
        text = normalize_response(response)
        return _WORD_CHAR_RE.search(text) is not None and bool(self._check(text))

    # --- compatibility hooks (see find_conflicts) ---
    def required_texts(self) -> tuple[RequiredText, ...]:
        return ()

    def forbids(self, required: Sequence[RequiredText]) -> bool:
        """True when containing all of `required` necessarily breaks this constraint."""
        return False

    def words_needed(self) -> int:
        """Rough lower bound on words a natural answer needs to satisfy this constraint."""
        return 0

    def sentences_needed(self) -> int:
        return 0

    def forced_first_word(self) -> str | None:
        """The word this constraint forces the response to start with, if any."""
        return None

    # --- serialisation ---
    def params(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_id, "params": self.params()}


CONSTRAINT_TYPES: dict[str, type[Constraint]] = {}


def _register(type_id: str, slots: Iterable[str] = ()):
    def wrap(cls: type[Constraint]) -> type[Constraint]:
        _require(type_id not in CONSTRAINT_TYPES, f"duplicate constraint type id {type_id!r}")
        cls.type_id = type_id
        cls.slots = frozenset(slots)
        CONSTRAINT_TYPES[type_id] = cls
        return cls

    return wrap


register = _register  # the public name, for constraints defined outside this module (examples/custom_constraint.py)


def _positive(name: str, value: int, type_id: str, minimum: int = 1) -> None:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        f"{type_id}: param '{name}' must be an integer >= {minimum}, got {value!r}",
    )


def _nonempty(name: str, value: str, type_id: str) -> None:
    _require(isinstance(value, str) and value.strip() != "", f"{type_id}: param '{name}' must be a non-empty string")


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


# ---------------------------------------------------------------------------------------------------------
# Length.
# ---------------------------------------------------------------------------------------------------------


@_register("length:max_words", slots=["max_words"])
@dataclass(frozen=True)
class MaxWords(Constraint):
    n: int

    def __post_init__(self) -> None:
        _positive("n", self.n, self.type_id, minimum=2)

    def describe(self) -> str:
        return f"Answer in fewer than {self.n} words."

    def _check(self, text: str) -> bool:
        return count_words(text) < self.n


@_register("length:min_words", slots=["min_words"])
@dataclass(frozen=True)
class MinWords(Constraint):
    n: int

    def __post_init__(self) -> None:
        _positive("n", self.n, self.type_id)

    def describe(self) -> str:
        return f"Answer with at least {self.n} words."

    def _check(self, text: str) -> bool:
        return count_words(text) >= self.n

    def words_needed(self) -> int:
        return self.n

    def sentences_needed(self) -> int:
        return math.ceil(self.n / 35)  # a long sentence holds ~35 words


@_register("length:max_sentences", slots=["max_sentences"])
@dataclass(frozen=True)
class MaxSentences(Constraint):
    n: int

    def __post_init__(self) -> None:
        _positive("n", self.n, self.type_id)

    def describe(self) -> str:
        return f"Your response should contain at most {_plural(self.n, 'sentence')}."

    def _check(self, text: str) -> bool:
        return 1 <= count_sentences(text) <= self.n


@_register("length:min_sentences", slots=["min_sentences"])
@dataclass(frozen=True)
class MinSentences(Constraint):
    n: int

    def __post_init__(self) -> None:
        _positive("n", self.n, self.type_id)

    def describe(self) -> str:
        return f"Your response should contain at least {_plural(self.n, 'sentence')}."

    def _check(self, text: str) -> bool:
        return count_sentences(text) >= self.n

    def words_needed(self) -> int:
        return 5 * self.n

    def sentences_needed(self) -> int:
        return self.n


@_register("length:paragraphs", slots=["layout"])
@dataclass(frozen=True)
class Paragraphs(Constraint):
    n: int

    def __post_init__(self) -> None:
        _positive("n", self.n, self.type_id, minimum=2)

    def describe(self) -> str:
        return f"There should be exactly {self.n} paragraphs, separated from each other by a blank line."

    def _check(self, text: str) -> bool:
        return len(split_paragraphs(text)) == self.n

    def words_needed(self) -> int:
        return 10 * self.n

    def sentences_needed(self) -> int:
        return self.n


@_register("length:nth_paragraph_first_word", slots=["layout"])
@dataclass(frozen=True)
class NthParagraphFirstWord(Constraint):
    n: int
    nth: int
    first_word: str

    def __post_init__(self) -> None:
        _positive("n", self.n, self.type_id, minimum=2)
        _positive("nth", self.nth, self.type_id)
        _require(self.nth <= self.n, f"{self.type_id}: param 'nth' ({self.nth}) must be <= 'n' ({self.n})")
        _require(
            isinstance(self.first_word, str) and _WORD_RE.fullmatch(self.first_word) is not None,
            f"{self.type_id}: param 'first_word' must be a single word, got {self.first_word!r}",
        )

    def describe(self) -> str:
        return (
            f"There should be exactly {self.n} paragraphs, separated from each other by a blank line. "
            f"Paragraph {self.nth} must start with the word '{self.first_word}'."
        )

    def _check(self, text: str) -> bool:
        paragraphs = split_paragraphs(text)
        if len(paragraphs) != self.n:
            return False
        first = _first_word(paragraphs[self.nth - 1])
        return first is not None and first.casefold() == self.first_word.casefold()

    def required_texts(self) -> tuple[RequiredText, ...]:
        return (RequiredText(self.first_word, False),)

    def forced_first_word(self) -> str | None:
        return self.first_word if self.nth == 1 else None

    def words_needed(self) -> int:
        return 10 * self.n

    def sentences_needed(self) -> int:
        return self.n


# ---------------------------------------------------------------------------------------------------------
# Format / structure.
# ---------------------------------------------------------------------------------------------------------


@_register("format:divider_paragraphs", slots=["layout"])
@dataclass(frozen=True)
class DividerParagraphs(Constraint):
    n: int

    def __post_init__(self) -> None:
        _positive("n", self.n, self.type_id, minimum=2)

    def describe(self) -> str:
        return (
            f"There should be exactly {self.n} paragraphs. Separate the paragraphs with a line containing "
            "only the markdown divider ***."
        )

    def _check(self, text: str) -> bool:
        parts = [p.strip() for p in re.split(r"(?m)^[ \t]*\*\*\*[ \t]*$", text)]
        return len(parts) == self.n and all(re.search(r"\w", p) for p in parts)

    def required_texts(self) -> tuple[RequiredText, ...]:
        return (RequiredText("***", True),)

    def words_needed(self) -> int:
        return 10 * self.n

    def sentences_needed(self) -> int:
        return self.n


_BULLET_RE = re.compile(r"(?m)^[ \t]*[*\-][ \t]+(?![*\- \t]*$)\S")
_NUMBERED_RE = re.compile(r"(?m)^[ \t]*\d+[.)][ \t]+\S")


@_register("format:bullets", slots=["list"])
@dataclass(frozen=True)
class Bullets(Constraint):
    n: int

    def __post_init__(self) -> None:
        _positive("n", self.n, self.type_id)

    def describe(self) -> str:
        return (
            f"Your answer must contain exactly {_plural(self.n, 'bullet point')}, each on its own line "
            "starting with \"* \" or \"- \"."
        )

    def _check(self, text: str) -> bool:
        return len(_BULLET_RE.findall(text)) == self.n

    def words_needed(self) -> int:
        return 3 * self.n


@_register("format:numbered_list", slots=["list"])
@dataclass(frozen=True)
class NumberedList(Constraint):
    n: int

    def __post_init__(self) -> None:
        _positive("n", self.n, self.type_id)

    def describe(self) -> str:
        return (
            f"Your answer must contain a numbered list with exactly {_plural(self.n, 'item')}, "
            "each on its own line starting with its number (1., 2., ...)."
        )

    def _check(self, text: str) -> bool:
        return len(_NUMBERED_RE.findall(text)) == self.n

    def required_texts(self) -> tuple[RequiredText, ...]:
        return (RequiredText("1.", True),)

    def words_needed(self) -> int:
        return 3 * self.n


_FENCE_RE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n(.*?)\n?[ \t]*```", re.DOTALL | re.IGNORECASE)


@_register("format:json", slots=["layout", "list", "start", "end"])
@dataclass(frozen=True)
class JsonFormat(Constraint):
    """The whole response is one JSON object or array (a bare `42` or `"x"` does not count: too easy)."""

    def describe(self) -> str:
        return (
            "Your entire output should be a JSON object or array; you may wrap it in a markdown ```json "
            "code block."
        )

    def _check(self, text: str) -> bool:
        if text.startswith("```"):
            match = _FENCE_RE.fullmatch(text)
            if match is None:
                return False
            text = match.group(1)
        try:
            value = json.loads(text)
        except ValueError:
            return False
        return isinstance(value, (dict, list))

    def words_needed(self) -> int:
        return 5


@_register("format:title", slots=["title"])
@dataclass(frozen=True)
class Title(Constraint):
    def describe(self) -> str:
        return "Your answer must contain a title, wrapped in double angular brackets, such as <<a day to remember>>."

    def _check(self, text: str) -> bool:
        return any(m.strip() for m in re.findall(r"<<([^<>\n]+)>>", text))

    def words_needed(self) -> int:
        return 2


@_register("format:highlights", slots=["highlights"])
@dataclass(frozen=True)
class Highlights(Constraint):
    n: int

    def __post_init__(self) -> None:
        _positive("n", self.n, self.type_id)

    def describe(self) -> str:
        return (
            f"Highlight at least {_plural(self.n, 'section')} of your answer with markdown, "
            "for example *highlighted section*."
        )

    def _check(self, text: str) -> bool:
        double = re.compile(r"\*\*(?![\s*])[^\n*]+(?<![\s*])\*\*")
        single = re.compile(r"\*(?![\s*])[^\n*]+(?<![\s*])\*")
        count = len(double.findall(text))
        count += len(single.findall(double.sub(" ", text)))
        return count >= self.n

    def words_needed(self) -> int:
        return 2 * self.n


@_register("format:sections", slots=["layout"])
@dataclass(frozen=True)
class Sections(Constraint):
    """Exactly n sections headed `MARKER 1` .. `MARKER n` in order at line starts (markdown heading or bold
    allowed, marker case-insensitive); each has content. Text before the first marker is allowed."""

    marker: str
    n: int

    def __post_init__(self) -> None:
        _require(
            isinstance(self.marker, str) and re.fullmatch(r"[A-Za-z]+", self.marker) is not None,
            f"{self.type_id}: param 'marker' must be one word of letters, got {self.marker!r}",
        )
        _positive("n", self.n, self.type_id, minimum=2)

    def describe(self) -> str:
        return (
            f"Your response must have exactly {self.n} sections. Mark the beginning of each section with "
            f"{self.marker} X, such as: {self.marker} 1."
        )

    def _check(self, text: str) -> bool:
        pattern = re.compile(
            rf"^[ \t]*(?:#{{1,6}}[ \t]*)?(?:\*\*?)?{re.escape(self.marker)}[ \t]+(\d+)\b[^\n]*$",
            re.IGNORECASE | re.MULTILINE,
        )
        matches = list(pattern.finditer(text))
        if [int(m.group(1)) for m in matches] != list(range(1, self.n + 1)):
            return False
        for i, match in enumerate(matches):
            # The section's content: rest of the marker line after the number, plus lines up to the next marker.
            end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
            body = text[match.start(1) + len(match.group(1)) : end]
            if not re.search(r"\w", body):
                return False
        return True

    def required_texts(self) -> tuple[RequiredText, ...]:
        return (RequiredText(f"{self.marker} 1", False),)

    def words_needed(self) -> int:
        return 8 * self.n


@_register("format:placeholders", slots=["placeholders"])
@dataclass(frozen=True)
class Placeholders(Constraint):
    n: int

    def __post_init__(self) -> None:
        _positive("n", self.n, self.type_id)

    def describe(self) -> str:
        return (
            f"The response must contain at least {_plural(self.n, 'placeholder')} represented by square "
            "brackets, such as [address]."
        )

    def _check(self, text: str) -> bool:
        return len(re.findall(r"\[[^\[\]\n]*\w[^\[\]\n]*\]", text)) >= self.n

    def words_needed(self) -> int:
        return self.n


@_register("format:postscript", slots=["end"])
@dataclass(frozen=True)
class Postscript(Constraint):
    """A line starting with the marker (e.g. P.S.), after some main text, with text of its own."""

    marker: str

    def __post_init__(self) -> None:
        _require(
            isinstance(self.marker, str) and re.fullmatch(r"(?:[A-Za-z]\.)+", self.marker) is not None,
            f"{self.type_id}: param 'marker' must look like 'P.S.' or 'P.P.S.', got {self.marker!r}",
        )

    def describe(self) -> str:
        return f"At the end of your response, please explicitly add a postscript starting with {self.marker}"

    def _check(self, text: str) -> bool:
        letters = self.marker.replace(".", "")
        body = r"[ \t]?".join(rf"{re.escape(ch)}\." for ch in letters)
        for match in re.finditer(rf"(?im)^[ \t]*(?:\*\*?)?{body}", text):
            if re.search(r"\w", text[: match.start()]) and re.search(r"\w", text[match.end() :]):
                return True
        return False

    def required_texts(self) -> tuple[RequiredText, ...]:
        return (RequiredText(self.marker, False),)

    def words_needed(self) -> int:
        return 5


@_register("format:headings", slots=["headings"])
@dataclass(frozen=True)
class Headings(Constraint):
    n: int

    def __post_init__(self) -> None:
        _positive("n", self.n, self.type_id)

    def describe(self) -> str:
        return f"Include at least {_plural(self.n, 'markdown heading')} (a line starting with #, such as ## Overview)."

    def _check(self, text: str) -> bool:
        return len(re.findall(r"(?m)^[ \t]{0,3}#{1,6}[ \t]+\S", text)) >= self.n

    def words_needed(self) -> int:
        return 2 * self.n


@_register("format:two_responses", slots=["layout", "list", "start", "end"])
@dataclass(frozen=True)
class TwoResponses(Constraint):
    def describe(self) -> str:
        return (
            "Give two different responses. Responses and only responses should be separated by 6 asterisk "
            "symbols: ******."
        )

    def _check(self, text: str) -> bool:
        parts = [p.strip() for p in re.split(r"\*{6,}", text)]
        return len(parts) == 2 and all(re.search(r"\w", p) for p in parts) and parts[0] != parts[1]

    def required_texts(self) -> tuple[RequiredText, ...]:
        return (RequiredText("******", True),)

    def words_needed(self) -> int:
        return 20


# ---------------------------------------------------------------------------------------------------------
# Letter case.
# ---------------------------------------------------------------------------------------------------------


@_register("case:lowercase", slots=["case"])
@dataclass(frozen=True)
class Lowercase(Constraint):
    def describe(self) -> str:
        return "Your entire response must be in lowercase letters; no capital letters are allowed."

    def _check(self, text: str) -> bool:
        return _has_lower(text) and not _has_upper(text)

    def forbids(self, required: Sequence[RequiredText]) -> bool:
        return any(r.case_sensitive and _has_upper(r.text) for r in required)


@_register("case:uppercase", slots=["case"])
@dataclass(frozen=True)
class Uppercase(Constraint):
    def describe(self) -> str:
        return "Your entire response must be in capital letters; no lowercase letters are allowed."

    def _check(self, text: str) -> bool:
        return _has_upper(text) and not _has_lower(text)

    def forbids(self, required: Sequence[RequiredText]) -> bool:
        return any(r.case_sensitive and _has_lower(r.text) for r in required)


@_register("case:capital_word_frequency", slots=["case"])
@dataclass(frozen=True)
class CapitalWordFrequency(Constraint):
    """Count of ALL-CAPS words (>= 2 letters, so 'I' and 'A' do not count)."""

    relation: str  # "at_least" | "less_than"
    n: int

    def __post_init__(self) -> None:
        _require(
            self.relation in ("at_least", "less_than"),
            f"{self.type_id}: param 'relation' must be 'at_least' or 'less_than', got {self.relation!r}",
        )
        _positive("n", self.n, self.type_id)

    def describe(self) -> str:
        words_phrase = "words written entirely in capital letters (like THIS)"
        if self.relation == "at_least":
            return f"Use at least {self.n} {words_phrase}."
        return f"Use fewer than {self.n} {words_phrase}."

    def _check(self, text: str) -> bool:
        count = sum(_is_caps_word(w) for w in words(text))
        return count >= self.n if self.relation == "at_least" else count < self.n

    def forbids(self, required: Sequence[RequiredText]) -> bool:
        if self.relation == "at_least":
            return False
        forced = sum(_is_caps_word(w) for r in required if r.case_sensitive for w in words(r.text))
        return forced >= self.n

    def words_needed(self) -> int:
        return self.n if self.relation == "at_least" else 0


# ---------------------------------------------------------------------------------------------------------
# Keywords and letters.
# ---------------------------------------------------------------------------------------------------------


@_register("keywords:include", slots=["keyword"])
@dataclass(frozen=True)
class IncludeKeyword(Constraint):
    """Keyword as a whole word (case-insensitive), at least n times."""

    keyword: str
    n: int

    def __post_init__(self) -> None:
        _nonempty("keyword", self.keyword, self.type_id)
        _positive("n", self.n, self.type_id)

    def describe(self) -> str:
        if self.n == 1:
            return f"Include the keyword '{self.keyword}' in your response."
        return f"Include the keyword '{self.keyword}' at least {self.n} times in your response."

    def _check(self, text: str) -> bool:
        return len(_phrase_pattern(self.keyword).findall(text)) >= self.n

    def required_texts(self) -> tuple[RequiredText, ...]:
        return (RequiredText(self.keyword, False),)

    def words_needed(self) -> int:
        return self.n * count_words(self.keyword)


@_register("keywords:include_all", slots=["keyword"])
@dataclass(frozen=True)
class IncludeAllKeywords(Constraint):
    keywords: tuple[str, ...]

    def __post_init__(self) -> None:
        _require(
            isinstance(self.keywords, tuple) and len(self.keywords) >= 2,
            f"{self.type_id}: param 'keywords' must list at least 2 keywords",
        )
        for kw in self.keywords:
            _nonempty("keywords", kw, self.type_id)

    def describe(self) -> str:
        quoted = [f"'{k}'" for k in self.keywords]
        return f"Include the keywords {', '.join(quoted[:-1])} and {quoted[-1]} in your response."

    def _check(self, text: str) -> bool:
        return all(_phrase_pattern(k).search(text) for k in self.keywords)

    def required_texts(self) -> tuple[RequiredText, ...]:
        return tuple(RequiredText(k, False) for k in self.keywords)

    def words_needed(self) -> int:
        return sum(count_words(k) for k in self.keywords)


@_register("keywords:exclude", slots=["exclude"])
@dataclass(frozen=True)
class ExcludeWord(Constraint):
    """The word must not appear as a whole word (case-insensitive); 'justice' does not break 'just'."""

    word: str

    def __post_init__(self) -> None:
        _nonempty("word", self.word, self.type_id)

    def describe(self) -> str:
        return f"Do not include the word '{self.word}' anywhere in your response."

    def _check(self, text: str) -> bool:
        return _phrase_pattern(self.word).search(text) is None

    def forbids(self, required: Sequence[RequiredText]) -> bool:
        return any(_phrase_pattern(self.word).search(r.text) for r in required)


@_register("keywords:letter_frequency", slots=["letter"])
@dataclass(frozen=True)
class LetterFrequency(Constraint):
    """The letter (either case) appears at least n times."""

    letter: str
    n: int

    def __post_init__(self) -> None:
        _require(
            isinstance(self.letter, str) and len(self.letter) == 1 and self.letter.isalpha(),
            f"{self.type_id}: param 'letter' must be a single letter, got {self.letter!r}",
        )
        _positive("n", self.n, self.type_id)

    def describe(self) -> str:
        return f"The letter '{self.letter}' should appear at least {self.n} times in your response."

    def _check(self, text: str) -> bool:
        return text.casefold().count(self.letter.casefold()) >= self.n

    def words_needed(self) -> int:
        return self.n // 2


# ---------------------------------------------------------------------------------------------------------
# Start and end.
# ---------------------------------------------------------------------------------------------------------


@_register("startend:start_word", slots=["start"])
@dataclass(frozen=True)
class StartWord(Constraint):
    """The first word (case-insensitive; leading quotes/markdown allowed) is the given word."""

    word: str

    def __post_init__(self) -> None:
        _require(
            isinstance(self.word, str) and _WORD_RE.fullmatch(self.word) is not None,
            f"{self.type_id}: param 'word' must be a single word, got {self.word!r}",
        )

    def describe(self) -> str:
        return f"Start your response with the word '{self.word}'."

    def _check(self, text: str) -> bool:
        first = _first_word(text)
        return first is not None and first.casefold() == self.word.casefold()

    def required_texts(self) -> tuple[RequiredText, ...]:
        return (RequiredText(self.word, False),)

    def forced_first_word(self) -> str | None:
        return self.word

    def words_needed(self) -> int:
        return 1


@_register("startend:end_phrase", slots=["end"])
@dataclass(frozen=True)
class EndPhrase(Constraint):
    """The response ends with the exact phrase (case-sensitive; only whitespace may follow)."""

    phrase: str

    def __post_init__(self) -> None:
        _nonempty("phrase", self.phrase, self.type_id)

    def describe(self) -> str:
        return f"Finish your response with this exact phrase: '{self.phrase}'. No other words should follow it."

    def _check(self, text: str) -> bool:
        phrase = unicodedata.normalize("NFC", self.phrase).strip()
        return text.endswith(phrase)

    def required_texts(self) -> tuple[RequiredText, ...]:
        return (RequiredText(self.phrase, True),)

    def words_needed(self) -> int:
        return count_words(self.phrase)

    def sentences_needed(self) -> int:
        return count_sentences(self.phrase)


@_register("startend:end_question", slots=["end"])
@dataclass(frozen=True)
class EndWithQuestion(Constraint):
    def describe(self) -> str:
        return "End your response with a question."

    def _check(self, text: str) -> bool:
        stripped = text.rstrip(_CLOSERS)
        return stripped[-1:] in _QUESTION_MARKS and re.search(r"\w", stripped) is not None

    def required_texts(self) -> tuple[RequiredText, ...]:
        return (RequiredText("?", True),)

    def words_needed(self) -> int:
        return 3

    def sentences_needed(self) -> int:
        return 1


@_register("startend:quotation", slots=["start", "end"])
@dataclass(frozen=True)
class Quotation(Constraint):
    """Whole response wrapped in double quotes (straight "..." or curly “...”)."""

    def describe(self) -> str:
        return "Wrap your entire response with double quotation marks."

    def _check(self, text: str) -> bool:
        return (
            len(text) >= 2
            and text[0] in "\"“"
            and text[-1] in "\"”"
            and re.search(r"\w", text[1:-1]) is not None
        )


def _squash(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


@_register("startend:repeat_prompt", slots=["start"])
@dataclass(frozen=True)
class RepeatPrompt(Constraint):
    """Starts with the request, word for word (case and whitespace ignored), then answers it."""

    request: str

    def __post_init__(self) -> None:
        _nonempty("request", self.request, self.type_id)

    def describe(self) -> str:
        return (
            "First repeat the request above word for word without change (only the request, not these "
            "instructions), then give your answer. Do not say anything before repeating the request."
        )

    def _check(self, text: str) -> bool:
        squashed, request = _squash(text), _squash(self.request)
        return squashed.startswith(request) and re.search(r"\w", squashed[len(request) :]) is not None

    def required_texts(self) -> tuple[RequiredText, ...]:
        return (RequiredText(self.request, False),)

    def forced_first_word(self) -> str | None:
        return _first_word(normalize_response(self.request))

    def words_needed(self) -> int:
        return count_words(self.request) + 5

    def sentences_needed(self) -> int:
        return count_sentences(self.request)


# ---------------------------------------------------------------------------------------------------------
# Punctuation and characters.
# ---------------------------------------------------------------------------------------------------------


@_register("punctuation:no_commas", slots=["commas"])
@dataclass(frozen=True)
class NoCommas(Constraint):
    def describe(self) -> str:
        return "In your entire response, refrain from the use of any commas."

    def _check(self, text: str) -> bool:
        return not any(ch in _COMMAS for ch in text)

    def forbids(self, required: Sequence[RequiredText]) -> bool:
        return any(ch in _COMMAS for r in required for ch in r.text)


@_register("punctuation:no_exclamation", slots=["exclamation"])
@dataclass(frozen=True)
class NoExclamation(Constraint):
    def describe(self) -> str:
        return "Do not use any exclamation marks in your response."

    def _check(self, text: str) -> bool:
        return not any(ch in _EXCLAMATIONS for ch in text)

    def forbids(self, required: Sequence[RequiredText]) -> bool:
        return any(ch in _EXCLAMATIONS for r in required for ch in r.text)


@_register("punctuation:question_marks", slots=["question_marks"])
@dataclass(frozen=True)
class QuestionMarks(Constraint):
    """Exactly n question marks (ASCII or full-width)."""

    n: int

    def __post_init__(self) -> None:
        _positive("n", self.n, self.type_id)

    def describe(self) -> str:
        return f"Use exactly {_plural(self.n, 'question mark')} in your response."

    def _check(self, text: str) -> bool:
        return sum(ch in _QUESTION_MARKS for ch in text) == self.n

    def sentences_needed(self) -> int:
        return self.n  # each question mark naturally ends a sentence

    def forbids(self, required: Sequence[RequiredText]) -> bool:
        return sum(ch in _QUESTION_MARKS for r in required for ch in r.text) > self.n


@_register("content:no_digits", slots=["digits"])
@dataclass(frozen=True)
class NoDigits(Constraint):
    def describe(self) -> str:
        return "Do not use any digits in your response; write numbers out in words."

    def _check(self, text: str) -> bool:
        return not any(ch.isdigit() for ch in text)

    def forbids(self, required: Sequence[RequiredText]) -> bool:
        return any(ch.isdigit() for r in required for ch in r.text)


# ---------------------------------------------------------------------------------------------------------
# Compatibility.
# ---------------------------------------------------------------------------------------------------------

# Constraints that count paragraphs or sentences, and blocks that make those counts ambiguous
# (is a title line a paragraph? is a bullet a sentence?). Never combined.
_COUNTED_UNITS = frozenset(
    {"length:paragraphs", "length:nth_paragraph_first_word", "format:divider_paragraphs",
     "length:max_sentences", "length:min_sentences"}
)
_BLOCKS = frozenset(
    {"format:title", "format:postscript", "format:bullets", "format:numbered_list", "format:headings",
     "format:sections", "format:two_responses", "format:json"}
)
_AMBIGUOUS_PAIRS = frozenset(
    {frozenset((a, b)) for a in _COUNTED_UNITS for b in _BLOCKS}
    # JSON has no room for markdown markup, and a multi-key object needs commas.
    | {frozenset(("format:json", b)) for b in
       ("format:title", "format:highlights", "format:placeholders", "format:headings", "format:postscript",
        "punctuation:no_commas", "case:capital_word_frequency")}
    # A quoted response starts with '"', so its first line is not a list item.
    | {frozenset(("startend:quotation", b)) for b in ("format:bullets", "format:numbered_list", "format:headings")}
)
# Constraints whose sentences_needed() counts the answer's content rather than an add-on to it.
_CONTENT_SENTENCE_TYPES = frozenset(
    {"length:min_words", "length:min_sentences", "length:paragraphs", "length:nth_paragraph_first_word",
     "format:divider_paragraphs"}
)
# Margin (in words) a "fewer than N words" limit must leave above what the other constraints need.
_WORD_MARGIN = 20


def find_conflicts(constraints: Sequence[Constraint]) -> list[str]:
    """Reasons why `constraints` cannot (or should not) be asked together; empty when compatible."""
    reasons: list[str] = []
    items = list(constraints)
    for i, a in enumerate(items):
        for b in items[i + 1 :]:
            if a.type_id == b.type_id:
                reasons.append(f"{a.type_id} appears twice")
                continue
            shared = sorted(a.slots & b.slots)
            if shared:
                reasons.append(f"{a.type_id} and {b.type_id} both control {', '.join(shared)}")
            if frozenset((a.type_id, b.type_id)) in _AMBIGUOUS_PAIRS:
                reasons.append(f"{a.type_id} and {b.type_id} make counts ambiguous together")
    for i, c in enumerate(items):
        others = items[:i] + items[i + 1 :]
        required = [r for o in others for r in o.required_texts()]
        if c.forbids(required):
            reasons.append(f"{c.type_id} forbids text another constraint requires: {[r.text for r in required]}")
        if isinstance(c, MaxWords):
            need = sum(o.words_needed() for o in others)
            if need + _WORD_MARGIN > c.n:
                reasons.append(f"{c.type_id} n={c.n} leaves too few words for the others (need ~{need})")
        first = c.forced_first_word()
        for o in others:
            other_first = o.forced_first_word()
            if first and other_first and first.casefold() != other_first.casefold() and c.type_id < o.type_id:
                reasons.append(f"{c.type_id} and {o.type_id} force different first words ({first!r}, {other_first!r})")
        if isinstance(c, MaxSentences):
            # The answer's own content (>= 1 sentence, or what paragraphs / minimums ask) plus add-ons such
            # as an end phrase, question marks or the repeated request.
            content = max([1] + [o.sentences_needed() for o in others if o.type_id in _CONTENT_SENTENCE_TYPES])
            need = content + sum(o.sentences_needed() for o in others if o.type_id not in _CONTENT_SENTENCE_TYPES)
            if need > c.n:
                reasons.append(f"{c.type_id} n={c.n} is below the {need} sentences the others need")
    return reasons


def compatible(constraints: Sequence[Constraint]) -> bool:
    return not find_conflicts(constraints)


# ---------------------------------------------------------------------------------------------------------
# Serialisation.
# ---------------------------------------------------------------------------------------------------------


def _coerce_param(type_id: str, name: str, expected: Any, value: Any, where: str) -> Any:
    if expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        what = "an integer"
    elif expected is str:
        ok = isinstance(value, str)
        what = "a string"
    elif typing.get_origin(expected) is tuple:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        what = "a list of strings"
        value = tuple(value) if ok else value
    else:  # pragma: no cover - only reachable if a new field type is added without support here
        raise AlignError(f"{where}: {type_id} param '{name}' has unsupported type {expected!r}")
    if not ok:
        raise AlignError(f"{where}: {type_id} param '{name}' must be {what}, got {value!r}")
    return value


def constraint_from_dict(data: Mapping[str, Any], where: str = "constraint") -> Constraint:
    """Inverse of `Constraint.to_dict`; `where` names the record in error messages."""
    if not isinstance(data, Mapping) or set(data) != {"type", "params"}:
        raise AlignError(f"{where}: expected an object with keys 'type' and 'params', got {data!r}")
    type_id, params = data["type"], data["params"]
    cls = CONSTRAINT_TYPES.get(type_id) if isinstance(type_id, str) else None
    if cls is None:
        raise AlignError(f"{where}: unknown constraint type {type_id!r}; known types: {sorted(CONSTRAINT_TYPES)}")
    if not isinstance(params, Mapping):
        raise AlignError(f"{where}: 'params' of {type_id} must be an object, got {params!r}")
    hints = typing.get_type_hints(cls)
    expected = {f.name: hints[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if set(params) != set(expected):
        raise AlignError(
            f"{where}: {type_id} expects params {sorted(expected)}, got {sorted(params)}"
        )
    kwargs = {name: _coerce_param(type_id, name, expected[name], params[name], where) for name in expected}
    try:
        return cls(**kwargs)
    except AlignError as err:
        raise AlignError(f"{where}: {err}") from None
