"""Verb-noun diversity of instructions: root verb + its first direct object, counted.

Self-Instruct measures diversity by parsing each instruction with spaCy (Berkeley Neural Parser in the
paper) and taking the root verb and its direct-object noun ("write" + "poem"). spaCy's English model is
a separate download we cannot rely on offline, so ``root_verb_noun`` *approximates the dependency parse*
with a light heuristic for imperative instructions:

- skip politeness and request prefixes ("please", "can you", "I want you to", "help me") and a leading
  subordinate clause ("Given a list of numbers, find ..." -> "find ...");
- the first remaining word is the verb, unless it is a question word, auxiliary, pronoun, determiner or
  preposition (then the instruction is a question or statement with no imperative root: no pair);
- a leading adverb ("Briefly explain") and a verb particle ("come up with", "pull out") are skipped;
- the object is the head of the following noun phrase: skip determiners, quantities and object pronouns
  ("me", "us"), collect words up to a preposition, conjunction, relative word, participle, new
  determiner or punctuation, and take the last one ("write a short product description for..." ->
  "description"). A preposition or "why"/"whether" right after the verb means no direct object.

It agrees with a parser on common instruction shapes and fails on harder ones (ambiguous verb/noun words,
nested clauses); use it to compare datasets, not as linguistics.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


_PREFIXES = (
    "please", "kindly", "can you", "could you", "would you", "will you", "can u", "i want you to",
    "i would like you to", "i'd like you to", "i need you to", "help me", "help me to", "let's", "lets",
    "now", "also", "then", "just",
)
_CLAUSE_STARTERS = _wordset(
    "given using based for in with according from after before if when considering assuming"
)
_NOT_VERBS = _wordset(
    """what which who whom whose when where why how is are was were am be been do does did can could will
    would should shall may might must has have had i you he she it we they me us him her them my your our
    their its this that these those there here a an the some any all each every no not if in on at for of to
    from by with about as than then so yes it's there's"""
)
_DETERMINERS = _wordset(
    """a an the this that these those some any each every all both my your our their his her its one two
    three four five six seven eight nine ten several few many more most another other following given
    such me us him them you it few"""
)
_STOPPERS = _wordset(
    """of for about to in on at from with by into onto over under between among as than that which who
    whom whose where when why how if and or but so because while using based below above given
    according within without per like via is are was were be what whether after before until during
    so such except instead"""
)
_PARTICLES = _wordset("up out down off back away over")
_NOT_ADVERBS = _wordset("apply reply supply multiply imply comply rely fly ally rally tally bully")
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'\-]*|\d+|[^\sA-Za-z\d]")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD_RE.findall(text)]


def _strip_prefixes(words: list[str]) -> list[str]:
    changed = True
    while changed and words:
        changed = False
        for prefix in sorted(_PREFIXES, key=len, reverse=True):
            parts = prefix.split()
            if words[: len(parts)] == parts:
                words = words[len(parts):]
                changed = True
                break
        while words and not words[0][0].isalnum():  # leading punctuation, e.g. after "Please,"
            words = words[1:]
            changed = True
    return words


def root_verb_noun(instruction: str) -> tuple[str | None, str | None]:
    """(verb, object noun) of an imperative instruction; (None, None) for questions and statements."""
    words = _strip_prefixes(_words(instruction.split("\n", 1)[0]))
    if words and words[0] in _CLAUSE_STARTERS and "," in words:
        words = _strip_prefixes(words[words.index(",") + 1:])
    if words and len(words) > 1 and words[0].endswith("ly") and words[0] not in _NOT_ADVERBS:
        words = words[1:]  # "Briefly explain ..."
    if not words or not words[0].isalpha() or words[0] in _NOT_VERBS:
        return None, None
    verb, rest = words[0], words[1:]
    if rest and rest[0] in _PARTICLES:  # "come up with", "pull out"
        rest = rest[1:]
    phrase: list[str] = []
    for w in rest:
        if phrase and (w in _DETERMINERS or w.endswith(("ing", "ed"))):
            break  # a new noun phrase or a participle clause starts: "a polite email declining a ..."
        if not w[0].isalnum() or w in _STOPPERS:
            if phrase:
                break
            if w in _STOPPERS:  # "write about ..." / "explain why ...": no direct object
                return verb, None
            continue
        if not phrase and (w in _DETERMINERS or w.isdigit()):
            continue
        phrase.append(w)
        if len(phrase) == 4:
            break
    noun = phrase[-1] if phrase else None
    if noun is not None and not noun.isalpha():
        noun = None
    return verb, noun


@dataclass
class DiversityStats:
    """How varied a set of instructions is, by root verb and by (verb, noun) pair."""

    total: int
    with_verb: int
    with_pair: int
    unique_verbs: int
    unique_pairs: int
    top_verbs: list[tuple[str, int]]
    top_pairs: list[tuple[tuple[str, str], int]]

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "with_verb": self.with_verb,
            "with_pair": self.with_pair,
            "unique_verbs": self.unique_verbs,
            "unique_pairs": self.unique_pairs,
            "top_verbs": [[v, n] for v, n in self.top_verbs],
            "top_pairs": [[v, o, n] for (v, o), n in self.top_pairs],
        }


def verb_noun_diversity(instructions: Iterable[str], top_k: int = 20) -> DiversityStats:
    """Counts of root verbs and (verb, noun) pairs; the top ``top_k`` of each, most common first."""
    verbs: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    total = 0
    for instruction in instructions:
        total += 1
        verb, noun = root_verb_noun(instruction)
        if verb:
            verbs[verb] += 1
            if noun:
                pairs[(verb, noun)] += 1
    return DiversityStats(
        total=total,
        with_verb=sum(verbs.values()),
        with_pair=sum(pairs.values()),
        unique_verbs=len(verbs),
        unique_pairs=len(pairs),
        top_verbs=verbs.most_common(top_k),
        top_pairs=pairs.most_common(top_k),
    )
