"""Prompt builders produce the documented layouts; parsers survive realistic messy teacher output."""

from __future__ import annotations

import random
import re

import pytest

from align.data_gen.prompts import (
    build_alpaca_prompt,
    build_bootstrap_prompt,
    build_classification_prompt,
    build_instance_prompt,
    parse_alpaca_output,
    parse_bootstrap_output,
    parse_classification,
    parse_instances,
)
from align.data_gen.seeds import load_seed_tasks
from align.errors import AlignError

HUMAN = [f"Human instruction number {i}." for i in range(20)]
MACHINE = ["Machine instruction alpha.", "Machine instruction beta.", "Machine instruction gamma."]


# ---------------------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------------------


def test_guided_bootstrap_prompt_has_six_human_two_machine_numbered_and_open_ended():
    prompt = build_bootstrap_prompt(HUMAN, MACHINE, rng=random.Random(0), style="guided")
    lines = [ln for ln in prompt.splitlines() if ln.startswith("Task ")]
    assert [ln.split(":")[0] for ln in lines] == [f"Task {i}" for i in range(1, 10)]
    assert prompt.endswith("\nTask 9:")
    body = [ln.split(": ", 1)[1] for ln in lines[:-1]]
    assert sum(b.startswith("Machine") for b in body) == 2
    assert sum(b.startswith("Human") for b in body) == 6
    assert len(set(body)) == 8


def test_bootstrap_prompt_fills_with_humans_when_no_machine_tasks_yet():
    prompt = build_bootstrap_prompt(HUMAN, [], rng=random.Random(0), style="guided")
    assert prompt.count("Human instruction") == 8 and prompt.endswith("Task 9:")
    prompt = build_bootstrap_prompt(HUMAN, MACHINE[:1], rng=random.Random(0), style="guided")
    assert prompt.count("Machine instruction") == 1 and prompt.count("Human instruction") == 7


def test_bootstrap_prompt_is_reproducible_and_collapses_whitespace():
    a = build_bootstrap_prompt(HUMAN, MACHINE, rng=random.Random(5), style="guided")
    assert a == build_bootstrap_prompt(HUMAN, MACHINE, rng=random.Random(5), style="guided")
    prompt = build_bootstrap_prompt(["Split\n  over   lines:"] * 8, [], rng=random.Random(0), style="guided")
    assert "Task 1: Split over lines\n" in prompt


def test_bootstrap_prompt_needs_enough_seeds():
    with pytest.raises(AlignError, match="needs 6 seed instructions"):
        build_bootstrap_prompt(HUMAN[:3], MACHINE, rng=random.Random(0))


MESSY = """ Describe the water cycle in three short sentences.
Task 10: Give me a list of five fruits that are high in vitamin C.
11) **Write a haiku about freshly baked bread.**
Input: none
Output: Warm crust crackles...
12. Sort the following numbers
in ascending order: 5, 2, 9.
(13) Explain what a budget deficit is.

Here are some more ideas you might like:
14. This line is chatter and must not be parsed."""


def test_parse_bootstrap_handles_messy_numbering_fields_and_trailing_chatter():
    assert parse_bootstrap_output(MESSY, start_index=9) == [
        "Describe the water cycle in three short sentences.",
        "Give me a list of five fruits that are high in vitamin C.",
        "Write a haiku about freshly baked bread.",
        "Sort the following numbers in ascending order: 5, 2, 9.",
        "Explain what a budget deficit is.",
    ]


def test_parse_bootstrap_chat_style_restated_marker_and_end_token():
    text = "Task 9: plan a three-day trip to Rome.\n\nTask 10: Name three uses of vinegar.<|im_end|>\nTask 11: junk"
    assert parse_bootstrap_output(text, 9) == ["Plan a three-day trip to Rome.", "Name three uses of vinegar."]


def test_parse_bootstrap_stops_when_numbering_restarts():
    text = " Plan a picnic menu.\n10. Name three colors.\n1. Come up with a series of tasks:\n2. Again"
    assert parse_bootstrap_output(text, 9) == ["Plan a picnic menu.", "Name three colors."]


@pytest.mark.parametrize(
    ("truncated", "expected"),
    [(None, 2), (True, 2), (False, 3)],
)
def test_parse_bootstrap_cut_off_last_item(truncated, expected):
    text = " Plan a picnic menu.\n10. Name three colors.\n11. Explain why the moon"
    assert len(parse_bootstrap_output(text, 9, truncated=truncated)) == expected


def test_parse_bootstrap_keeps_complete_last_item_when_guessing():
    text = " Plan a picnic menu.\n10. What is the tallest mountain in Africa?"
    assert parse_bootstrap_output(text, 9) == ["Plan a picnic menu.", "What is the tallest mountain in Africa?"]
    # The model's end (stop sequence or end token) means nothing was cut off.
    assert parse_bootstrap_output(" Plan a picnic menu\n10. Name two rivers</s>", 9) == [
        "Plan a picnic menu", "Name two rivers",
    ]


def test_parse_bootstrap_empty_and_garbage():
    assert parse_bootstrap_output("", 9) == []
    assert parse_bootstrap_output("<|endoftext|>", 9) == []
    assert parse_bootstrap_output("\n\n", 9) == []


# ---------------------------------------------------------------------------------------------------------
# Classification identification
# ---------------------------------------------------------------------------------------------------------


def test_classification_prompt_is_few_shot_yes_no():
    prompt = build_classification_prompt("Decide if the  review\nis positive.")
    assert prompt.endswith("Task: Decide if the review is positive.\nIs it classification?")
    answers = re.findall(r"Is it classification\? (Yes|No)\n", prompt)
    assert len(answers) >= 10 and "Yes" in answers and "No" in answers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" Yes", True),
        (" No\n\nTask: Write a poem.\nIs it classification? Yes", False),
        ("yes.", True),
        ("NO, it asks for free text.", False),
        ("**Answer:** Yes, the output is a label.", True),
        ("Is it classification? No", False),
        (" Maybe, it depends.", None),
        ("", None),
        ("Nope", None),
        ("Yesterday I ...", None),
    ],
)
def test_parse_classification(text, expected):
    assert parse_classification(text) is expected


# ---------------------------------------------------------------------------------------------------------
# Instance generation
# ---------------------------------------------------------------------------------------------------------


def test_instance_prompts_are_input_first_or_output_first():
    plain = build_instance_prompt("Sort the words alphabetically.", is_classification=False)
    clf = build_instance_prompt("Classify the email as spam or not.", is_classification=True)
    assert plain.endswith("Task: Sort the words alphabetically.\n")
    assert clf.endswith("Task: Classify the email as spam or not.\n")
    assert "Input:" in plain and "Class label:" not in plain
    first_label, first_input = clf.index("Class label:"), clf.index("Sentence:")
    assert first_label < first_input  # label comes before the input it describes


def test_parse_instances_input_first_several_examples():
    text = """Example 1
Input: banana, apple, cherry
Output: apple, banana, cherry

Example 2
Input: zebra, ant
Output: ant, zebra

Task: Translate the word into French.
Example 1
Input: cat
Output: chat"""
    assert parse_instances(text, is_classification=False) == [
        {"input": "banana, apple, cherry", "output": "apple, banana, cherry"},
        {"input": "zebra, ant", "output": "ant, zebra"},
    ]


def test_parse_instances_no_input_multiline_output_and_end_token():
    text = "Example 1\nOutput: Roses wake in dew,\nbees hum low.\n\nExample 2\nOutput: Night rain on the roof.</s>Example 3"
    assert parse_instances(text, False) == [
        {"input": "", "output": "Roses wake in dew,\nbees hum low."},
        {"input": "", "output": "Night rain on the roof."},
    ]


def test_parse_instances_single_bare_pair_and_nothing_parsable():
    assert parse_instances("Input: 12, 7\nOutput: 19", False) == [{"input": "12, 7", "output": "19"}]
    assert parse_instances("I am not sure what you mean.", False) == []


def test_parse_instances_truncated_drops_last():
    text = "Example 1\nInput: 2 + 2\nOutput: 4\n\nExample 2\nInput: 3 + 5\nOutput: 8\n\nExample 3\nInput: 9 +"
    assert parse_instances(text, False) == [{"input": "2 + 2", "output": "4"}, {"input": "3 + 5", "output": "8"}]
    assert parse_instances(text.rsplit("\n\nExample 3", 1)[0] + "\n\nExample 3\nInput: 1 + 1\nOutput: 2", False, truncated=True) == [
        {"input": "2 + 2", "output": "4"}, {"input": "3 + 5", "output": "8"},
    ]


def test_parse_instances_output_first_classification():
    text = """Class label: Spam
Email: You won a free cruise! Send your card number to claim it.
Class label: Not spam
Email: Hi Ana, the meeting moved to 3 pm.
See you there.
Class label: Spam
Input: Cheap watches, click now.

Task: Next task
Class label: X"""
    assert parse_instances(text, is_classification=True) == [
        {"input": "Email: You won a free cruise! Send your card number to claim it.", "output": "Spam"},
        {"input": "Email: Hi Ana, the meeting moved to 3 pm.\nSee you there.", "output": "Not spam"},
        {"input": "Cheap watches, click now.", "output": "Spam"},
    ]


def test_parse_instances_classification_labels_only_and_truncation():
    assert parse_instances("Class label: 29\n", True) == [{"input": "", "output": "29"}]
    text = "Class label: Yes\nNumber: 471\nClass label: No\nNumber: 25"
    assert parse_instances(text, True, truncated=True) == [{"input": "Number: 471", "output": "Yes"}]


# ---------------------------------------------------------------------------------------------------------
# Alpaca variant
# ---------------------------------------------------------------------------------------------------------


def test_alpaca_prompt_lists_requirements_demos_and_open_slot():
    seeds = load_seed_tasks()
    prompt = build_alpaca_prompt(seeds, num_tasks=20, rng=random.Random(0))
    assert "20" in prompt.split("\n", 1)[0]
    for needle in ("verb", "images", "audio", "English", "<noinput>", "100 words"):
        assert needle in prompt
    assert prompt.count("###\n") == 4
    assert [int(n) for n in re.findall(r"^(\d+)\. Instruction:", prompt, flags=re.M)] == [1, 2, 3, 4]
    assert prompt.endswith("###\n4. Instruction:")
    for i in (1, 2, 3):
        assert f"{i}. Input:\n" in prompt and f"{i}. Output:\n" in prompt


def test_alpaca_prompt_accepts_dicts_and_marks_missing_input():
    tasks = [{"instruction": "Name a prime number.", "input": "", "output": "7"}] * 3
    prompt = build_alpaca_prompt(tasks, num_tasks=5, rng=random.Random(0))
    assert "1. Input:\n<noinput>\n" in prompt and prompt.endswith("4. Instruction:")
    with pytest.raises(AlignError):
        build_alpaca_prompt(tasks[:2], rng=random.Random(0))


ALPACA_OUT = """ Name three famous painters from the 19th century.
4. Input:
<noinput>
4. Output:
Claude Monet, Vincent van Gogh and Mary Cassatt.

###
5. Instruction: Convert the sentence to the passive voice.
5. Input:
The committee approved the new budget.
5. Output:
The new budget was approved by the committee.
###
Here is some chatter that is not a task.
###
6. Instruction: Rewrite the text to be more polite.
6. Output:
Missing its input field, so it is skipped.
###
7. Instruction: Write a function that adds two numbers in Python.
7. Input: <noinput>
7. Output:
def add(a, b):
    return a + b
###
8. Instruction: Tell me a joke about
"""


def test_parse_alpaca_output_blocks():
    tasks = parse_alpaca_output(ALPACA_OUT)
    assert [t["instruction"] for t in tasks] == [
        "Name three famous painters from the 19th century.",
        "Convert the sentence to the passive voice.",
        "Write a function that adds two numbers in Python.",
    ]
    assert tasks[0]["input"] == "" and tasks[1]["input"] == "The committee approved the new budget."
    assert tasks[2]["output"] == "def add(a, b):\n    return a + b"


def test_parse_alpaca_output_truncated_drops_last_block():
    text = ALPACA_OUT.rsplit("###", 1)[0] + "###\n8. Instruction: Tell me a joke.\n8. Input:\n<noinput>\n8. Output:\nWhy did the"
    assert parse_alpaca_output(text)[-1]["output"] == "Why did the"
    assert parse_alpaca_output(text, truncated=True)[-1]["instruction"].startswith("Write a function")


def test_parse_alpaca_output_end_token_and_empty():
    assert parse_alpaca_output("") == []
    text = " Say hi.\n4. Input:\n<noinput>\n4. Output:\nHi!<|eot_id|>###\n5. Instruction: x\n5. Input:\n\n5. Output:\ny"
    assert parse_alpaca_output(text) == [{"instruction": "Say hi.", "input": "", "output": "Hi!"}]
