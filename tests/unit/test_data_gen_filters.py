"""Every heuristic filter on examples it must drop and examples it must keep; the report's counts."""

from __future__ import annotations

import json

import pytest

from align.data_gen.filters import (
    BLACKLIST,
    BLACKLISTED_WORD,
    DUPLICATE_INSTANCE,
    EMPTY_OUTPUT,
    NEAR_DUPLICATE,
    NO_INSTANCES,
    SAME_INPUT_DIFFERENT_OUTPUT,
    STARTS_NON_ENGLISH,
    STARTS_WITH_PUNCTUATION,
    TOO_LONG,
    TOO_SHORT,
    FilterReport,
    blacklisted_word,
    filter_instances,
    instruction_drop_reason,
)


@pytest.mark.parametrize("word", BLACKLIST)
def test_each_blacklisted_word_drops(word):
    assert instruction_drop_reason(f"Please look at the {word} and describe it briefly.") == BLACKLISTED_WORD


@pytest.mark.parametrize(
    "text",
    [
        "Describe the IMAGE below in two sentences.",
        "Go to the store and buy milk for the family.",
        "Please go   to the kitchen and report what you see.",
        "Plot: summarize the story in one line.",
    ],
)
def test_blacklist_is_case_insensitive_and_spans_spaces(text):
    assert instruction_drop_reason(text) == BLACKLISTED_WORD


@pytest.mark.parametrize(
    "text",
    [
        "Update your profile summary to sound more confident.",  # "file" inside a word
        "Explain the imagery in this poem in plain words.",  # "image" inside a word
        "Write a paragraph about Mapuche culture for students.",  # "map" inside a word
        "Describe the plotline twist without spoilers please.",
        "Tell me about the time you had to go back home.",
    ],
)
def test_blacklist_matches_whole_words_only(text):
    assert blacklisted_word(text) is None
    assert instruction_drop_reason(text) is None


def test_custom_blacklist_and_disabling_it():
    assert instruction_drop_reason("Summarize the video transcript below.", blacklist=["video"]) == BLACKLISTED_WORD
    assert instruction_drop_reason("Describe the image in three sentences.", blacklist=[]) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Summarize.", TOO_SHORT),
        ("Write poems", TOO_SHORT),
        ("Write three poems.", TOO_SHORT),  # 3 words: the originals drop len(split()) <= 3
        ("", TOO_SHORT),
        ("   ", TOO_SHORT),
        (" ".join(["word"] * 151), TOO_LONG),
        ('"Write a haiku about spring rain.', STARTS_WITH_PUNCTUATION),
        ("- List three primary colors please.", STARTS_WITH_PUNCTUATION),
        ("¿Cuál es la capital de Francia hoy?", STARTS_NON_ENGLISH),
        ("Écris un poème sur la mer demain.", STARTS_NON_ENGLISH),
        ("写一首关于 the sea and sky 的诗", STARTS_NON_ENGLISH),
    ],
)
def test_instruction_drops(text, reason):
    assert instruction_drop_reason(text) == reason


@pytest.mark.parametrize(
    "text",
    [
        "Write three short poems.",  # 4 words is allowed
        " ".join(["word"] * 150),  # exactly 150 words is allowed
        "3 reasons to learn Python: list and explain them.",
        "What is the capital of Australia?",
    ],
)
def test_instruction_keeps(text):
    assert instruction_drop_reason(text) is None


def test_word_limits_are_configurable():
    assert instruction_drop_reason("Write three short poems.", min_words=5) == TOO_SHORT
    assert instruction_drop_reason("Write three poems.", min_words=3) is None
    assert instruction_drop_reason("Write three short poems now.", max_words=4) == TOO_LONG


def test_filter_instances_keeps_clean_ones():
    check = filter_instances([{"input": "2+2", "output": "4"}, {"input": "3+3", "output": " 6 "}])
    assert check.drop_reason is None
    assert check.instances == [{"input": "2+2", "output": "4"}, {"input": "3+3", "output": "6"}]
    assert check.removed == {}


def test_filter_instances_removes_empty_outputs_and_duplicates():
    check = filter_instances(
        [
            {"input": "a", "output": "x"},
            {"input": "b", "output": "   "},
            {"input": " a ", "output": "x"},
            {"input": "", "output": "poem one"},
            {"input": "", "output": "poem two"},  # empty input, different outputs: fine
            {"input": "c"},  # no output at all
        ]
    )
    assert check.drop_reason is None
    assert check.instances == [
        {"input": "a", "output": "x"},
        {"input": "", "output": "poem one"},
        {"input": "", "output": "poem two"},
    ]
    assert check.removed == {EMPTY_OUTPUT: 2, DUPLICATE_INSTANCE: 1}


def test_same_input_different_output_rejects_the_task():
    check = filter_instances([{"input": "Is 9 prime?", "output": "No"}, {"input": "Is 9 prime?", "output": "Yes"}])
    assert check.drop_reason == SAME_INPUT_DIFFERENT_OUTPUT and check.instances == []


def test_all_empty_or_no_instances():
    assert filter_instances([{"input": "a", "output": ""}]).drop_reason == EMPTY_OUTPUT
    assert filter_instances([]).drop_reason == NO_INSTANCES


def test_filter_instances_accepts_objects_with_attributes():
    from align.data_gen.seeds import Instance

    check = filter_instances([Instance(input="x", output="y"), Instance(input="x", output="y")])
    assert check.instances == [{"input": "x", "output": "y"}] and check.removed == {DUPLICATE_INSTANCE: 1}


def test_report_counts_prints_and_round_trips_json():
    report = FilterReport()
    for reason in [None, None, None, TOO_SHORT, BLACKLISTED_WORD, TOO_SHORT, NEAR_DUPLICATE]:
        report.record(reason)
    report.add_instance_check(filter_instances([{"input": "a", "output": "x"}, {"input": "a", "output": "x"}]))
    assert report.kept == 3 and report.total_dropped == 4 and report.total == 7
    assert report.dropped == {TOO_SHORT: 2, BLACKLISTED_WORD: 1, NEAR_DUPLICATE: 1}
    data = json.loads(report.to_json())
    assert data["kept"] == 3 and data["dropped"][TOO_SHORT] == 2 and data["instances_removed"] == {DUPLICATE_INSTANCE: 1}
    assert list(data["dropped"]) == [BLACKLISTED_WORD, TOO_SHORT, NEAR_DUPLICATE]  # fixed report order
    assert FilterReport.from_dict(data).to_dict() == data
    text = str(report)
    assert "7 tasks" in text and "too_short" in text and "28.6%" in text


def test_report_merge():
    a, b = FilterReport(), FilterReport()
    a.record(None)
    a.record(TOO_LONG)
    b.record(TOO_LONG)
    b.record(None)
    merged = a.merge(b)
    assert merged.kept == 2 and merged.dropped == {TOO_LONG: 2}
    assert a.dropped == {TOO_LONG: 1}  # inputs untouched
