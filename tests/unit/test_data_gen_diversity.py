"""The verb-noun heuristic on common instruction shapes, and the counts it produces."""

from __future__ import annotations

import pytest

from align.data_gen.diversity import root_verb_noun, verb_noun_diversity
from align.data_gen.seeds import load_seed_tasks


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("Write a short poem about cats.", ("write", "poem")),
        ("Please write a product description for a lamp.", ("write", "description")),
        ("Can you summarize the text below?", ("summarize", "text")),
        ("Give me a list of five fruits.", ("give", "list")),
        ("Generate three creative names for a bakery.", ("generate", "names")),
        ("Rewrite the following sentence in passive voice.", ("rewrite", "sentence")),
        ("Given a list of numbers, find the largest value.", ("find", "value")),
        ("Briefly explain the difference between TCP and UDP.", ("explain", "difference")),
        ("Write a polite email declining a job offer.", ("write", "email")),
        ("Extract all the dates mentioned in the text.", ("extract", "dates")),
        ("Pull out the delivery address from the message.", ("pull", "address")),
        ("Explain why the sky is blue.", ("explain", None)),
        ("Come up with a slogan for a bakery.", ("come", None)),
        ("What is the capital of France?", (None, None)),
        ("Is the following email spam?", (None, None)),
        ("", (None, None)),
    ],
)
def test_root_verb_noun(instruction, expected):
    assert root_verb_noun(instruction) == expected


def test_counts_and_top_lists():
    stats = verb_noun_diversity(
        ["Write a poem about rain.", "Write a poem about snow.", "Write a story.", "List three fruits.", "Why?"],
        top_k=2,
    )
    assert stats.total == 5 and stats.with_verb == 4 and stats.with_pair == 4
    assert stats.top_verbs == [("write", 3), ("list", 1)]
    assert stats.top_pairs[0] == (("write", "poem"), 2)
    assert stats.unique_pairs == 3
    assert stats.to_dict()["top_pairs"][0] == ["write", "poem", 2]


def test_our_seeds_are_varied():
    stats = verb_noun_diversity(t.instruction for t in load_seed_tasks())
    assert stats.unique_verbs >= 25
    assert stats.unique_pairs >= 0.8 * stats.with_pair
