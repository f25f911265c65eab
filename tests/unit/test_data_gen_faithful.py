"""Self-Instruct and Alpaca as the original code does them: one test per rule, each naming the original.

Originals: yizhongw/self-instruct ``self_instruct/bootstrap_instructions.py`` (``encode_prompt``,
``post_process_gpt3_response``) and ``self_instruct/prepare_for_finetuning.py``
(``parse_instances_for_generation_task``, ``parse_instances_for_classification_task``,
``filter_invalid_instances``); tatsu-lab/stanford_alpaca ``generate_instruction.py``
(``post_process_gpt3_response``).
"""

from __future__ import annotations

import random
import re

import pytest

from align.data_gen import filters
from align.data_gen.filters import filter_instances, instance_drop_reason, instruction_drop_reason
from align.data_gen.generate import SelfInstructSettings, generate
from align.data_gen.prompts import (
    bootstrap_stop,
    build_bootstrap_prompt,
    parse_alpaca_output,
    parse_bootstrap_output,
    parse_instances,
)
from align.data_gen.seeds import load_seed_tasks
from align.teachers import Generated

HUMAN = [f"Human instruction number {i}." for i in range(20)]


# --------------------------------------------------------------------------------------- instruction rules


@pytest.mark.parametrize(("text", "dropped"), [("Write three poems.", True), ("Name a color", True),
                                               ("Write three short poems.", False)])
def test_instructions_of_three_words_or_fewer_are_dropped(text, dropped):
    """Both post_process_gpt3_response: ``if len(inst.split()) <= 3 or len(inst.split()) > 150: continue``."""
    assert (instruction_drop_reason(text) == filters.TOO_SHORT) is dropped


def test_instructions_over_150_words_are_dropped():
    """Both post_process_gpt3_response: ``len(inst.split()) > 150`` is dropped, 150 is kept."""
    assert instruction_drop_reason(" ".join(["word"] * 151)) == filters.TOO_LONG
    assert instruction_drop_reason(" ".join(["word"] * 150)) is None


@pytest.mark.parametrize(("text", "dropped"), [
    ("Write a program that prints the first ten primes.", True),
    ("write a program to sort a list of names.", True),  # the original capitalize()s before comparing
    ("Write a  Program that reverses a string.", True),
    ("Write a short program that prints hello.", False),  # a prefix rule, not a keyword rule
    ("Explain how to write a program in Python.", False),
])
def test_write_a_program_instructions_are_dropped(text, dropped):
    """Both post_process_gpt3_response: ``if inst.startswith("Write a program"): continue`` (after
    ``re.sub(r"\\s+", " ", inst).strip().capitalize()`` in Self-Instruct)."""
    assert (instruction_drop_reason(text) == filters.WRITE_A_PROGRAM) is dropped


def test_blacklist_is_the_originals():
    """bootstrap_instructions.post_process_gpt3_response's keyword list, matched as whole words."""
    assert filters.BLACKLIST == ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
                                 "map", "maps", "draw", "plot", "go to")
    assert instruction_drop_reason("Draw a cat using only ASCII characters.") == filters.BLACKLISTED_WORD


@pytest.mark.parametrize("word", ["video", "audio", "music", "flowchart", "diagram"])
def test_alpaca_blacklist_adds_five_words(word):
    """stanford_alpaca post_process_gpt3_response: Self-Instruct's list + video, audio, music, flowchart,
    diagram. Self-Instruct's own method keeps such instructions, as its original does."""
    text = f"Summarize the {word} described in the text below."
    assert instruction_drop_reason(text, blacklist=filters.ALPACA_BLACKLIST) == filters.BLACKLISTED_WORD
    assert instruction_drop_reason(text) is None


def test_instructions_starting_with_punctuation_or_non_ascii_are_dropped():
    """Both post_process_gpt3_response: ``inst[0] in string.punctuation`` / ``not inst[0].isascii()``."""
    assert instruction_drop_reason("- List three primary colors.") == filters.STARTS_WITH_PUNCTUATION
    assert instruction_drop_reason("¿Cuál es la capital de Francia?") == filters.STARTS_NON_ENGLISH


# --------------------------------------------------------------------------------------- instance rules


def test_instance_whose_input_equals_its_output_is_dropped():
    """prepare_for_finetuning.filter_invalid_instances: ``if instance[1] == instance[2]: continue``."""
    assert instance_drop_reason("Paris", " Paris ") == filters.INPUT_EQUALS_OUTPUT
    check = filter_instances([{"input": "Paris", "output": "Paris"}, {"input": "Rome", "output": "Italy"}])
    assert check.instances == [{"input": "Rome", "output": "Italy"}]
    assert check.removed == {filters.INPUT_EQUALS_OUTPUT: 1}


@pytest.mark.parametrize(("inp", "out"), [("Sentence:", "Positive"), ("The movie was great.", "Label:"),
                                          ("", "Here are the steps:")])
def test_instance_whose_input_or_output_ends_with_a_colon_is_dropped(inp, out):
    """prepare_for_finetuning.filter_invalid_instances: ``if instance[1].strip().endswith(":") or
    instance[2].strip().endswith(":"): continue`` (usually an incomplete generation)."""
    assert instance_drop_reason(inp, out) == filters.ENDS_WITH_COLON
    check = filter_instances([{"input": inp, "output": out}])
    assert check.instances == [] and check.drop_reason == filters.ENDS_WITH_COLON


def test_instance_with_an_empty_output_is_dropped():
    """prepare_for_finetuning.filter_invalid_instances: ``if instance[2] == "": continue``."""
    assert instance_drop_reason("a jar", "  ") == filters.EMPTY_OUTPUT


# --------------------------------------------------------------------------------------- truncation


def test_cut_off_instances_lose_their_last_instance():
    """parse_instances_for_generation_task / _classification_task: ``if ... finish_reason == "length":
    instances = instances[:-1]``."""
    text = "Example 1\nInput: 2+2\nOutput: 4\n\nExample 2\nInput: 3+3\nOutput: 6 and the"
    assert [i["output"] for i in parse_instances(text, False)] == ["4", "6 and the"]
    assert [i["output"] for i in parse_instances(text, False, truncated=True)] == ["4"]
    clf = "Class label: Yes\nText: I want a refund.\nClass label: No\nText: Where is my"
    assert [i["output"] for i in parse_instances(clf, True, truncated=True)] == ["Yes"]


def test_cut_off_alpaca_continuation_loses_its_last_task():
    """stanford_alpaca post_process_gpt3_response: ``if idx == len(raw_instructions) - 1 and
    response["finish_reason"] == "length": continue``."""
    text = (" Name three kinds of clouds.\n4. Input:\n<noinput>\n4. Output:\nCumulus, stratus, cirrus.\n###\n"
            "5. Instruction: Give a synonym for happy.\n5. Input:\n<noinput>\n5. Output:\nCheerful and")
    assert len(parse_alpaca_output(text)) == 2
    assert [t["instruction"] for t in parse_alpaca_output(text, truncated=True)] == ["Name three kinds of clouds."]


# --------------------------------------------------------------------------------------- the prompt


def test_default_bootstrap_prompt_is_the_originals():
    """bootstrap_instructions.encode_prompt: "Come up with a series of tasks:\\n", "{i}. {instruction}\\n" per
    in-context instruction (whitespace collapsed, trailing ":" removed), then "{n + 1}."."""
    prompt = build_bootstrap_prompt(["Split\n  over   lines:"] + HUMAN, ["Machine task one."], rng=random.Random(0))
    lines = prompt.split("\n")
    assert lines[0] == "Come up with a series of tasks:"
    assert [re.match(r"(\d+)\. ", ln).group(1) for ln in lines[1:9]] == [str(i) for i in range(1, 9)]
    assert lines[9] == "9." and prompt.endswith("\n9.")
    assert "Machine task one." in prompt
    assert "Task" not in prompt
    one = build_bootstrap_prompt(["Split\n  over   lines:"] * 8, [], rng=random.Random(0))
    assert "\n1. Split over lines\n" in one


def test_default_bootstrap_stops_are_the_originals():
    """bootstrap_instructions main loop: ``stop_sequences=["\\n\\n", "\\n16", "16.", "16 ."]`` for 8 in-context
    instructions; the guided style stops at "Task 16"."""
    assert bootstrap_stop(8) == ["\n\n", "\n16", "16.", "16 ."]
    assert bootstrap_stop(8, "guided") == ["\n\n", "Task 16"]
    assert SelfInstructSettings().bootstrap.prompt == "original"


def test_guided_prompt_style_is_a_named_option():
    prompt = build_bootstrap_prompt(HUMAN, [], rng=random.Random(0), style="guided")
    assert prompt.startswith("Come up with a series of new tasks.") and prompt.endswith("\nTask 9:")
    assert parse_bootstrap_output(" Name a river.\nTask 10: List three moons of Jupiter.\n", 9) == [
        "Name a river.", "List three moons of Jupiter."]


# --------------------------------------------------------------------------------------- in the loop


class ReasonTeacher:
    """A teacher answering each kind of prompt with fixed text and finish reasons (Generated, as real ones)."""

    def __init__(self, bootstrap: list[tuple[str, str]], alpaca: list[tuple[str, str]] | None = None,
                 instances: tuple[str, str] = ("Example 1\nInput: a\nOutput: b\n\nExample 2\nInput: c\nOutput: d",
                                               "length")):
        self.bootstrap, self.alpaca, self.instances = list(bootstrap), list(alpaca or []), instances
        self.calls = 0

    def complete(self, prompts, *, max_tokens, temperature, stop=None):
        self.calls += 1
        out = []
        for i, p in enumerate(prompts):
            if p.rstrip().endswith("Is it classification?"):
                out.append(Generated("No", "stop"))
            elif p.endswith("\n") and "\nTask: " in p:
                out.append(Generated(*self.instances))
            elif p.rstrip().endswith("Instruction:"):
                out.append(Generated(*self.alpaca[i % len(self.alpaca)]))
            else:
                out.append(Generated(*self.bootstrap[i % len(self.bootstrap)]))
        return out


GOOD = " Invent a riddle whose answer is the moon.\n10. Describe a typical morning for a ferry captain."
CUT = " Plan a two-day itinerary for a first visit to Rome.\n10. Compose a polite reply declining a"


def test_loop_drops_a_bootstrap_continuation_cut_at_the_limit(tmp_path):
    """bootstrap_instructions.post_process_gpt3_response: ``if response is None or
    response["choices"][0]["finish_reason"] == "length": return []``; instances cut at the limit lose the last."""
    teacher = ReasonTeacher([(GOOD, "stop"), (CUT, "length")])
    cfg = SelfInstructSettings(request_batch_size=2, max_teacher_calls=3)
    result = generate(teacher, load_seed_tasks(), tmp_path, num_instructions=2, config=cfg, progress=False)
    assert [r["instruction"] for r in result.records] == ["Invent a riddle whose answer is the moon.",
                                                          "Describe a typical morning for a ferry captain."]
    assert result.stats["raw_generations"] == 2  # nothing from the cut-off continuation
    assert all(r["instances"] == [{"input": "a", "output": "b"}] for r in result.records)  # last one was cut
    assert result.stats["truncated_generations"] == 1 + 2  # one bootstrap, two instance texts


def test_loop_can_keep_the_complete_items_of_a_cut_off_bootstrap(tmp_path):
    teacher = ReasonTeacher([(CUT, "length")])
    cfg = SelfInstructSettings(request_batch_size=1, max_teacher_calls=3, bootstrap={"on_length": "drop_last"})
    result = generate(teacher, load_seed_tasks(), tmp_path, num_instructions=1, config=cfg, progress=False)
    assert [r["instruction"] for r in result.records] == ["Plan a two-day itinerary for a first visit to Rome."]


def test_loop_alpaca_drops_extra_blacklist_and_cut_off_last_task(tmp_path):
    """stanford_alpaca post_process_gpt3_response: the longer blacklist, and the last task of a "length" reply."""
    text = (" Recommend a song with calm music for studying.\n4. Input:\n<noinput>\n4. Output:\nClair de Lune.\n###\n"
            "5. Instruction: Suggest three names for a sourdough bakery.\n5. Input:\n<noinput>\n5. Output:\n"
            "Rise & Shine, Crumb, The Starter.\n###\n"
            "6. Instruction: Explain why bread goes stale.\n6. Input:\n<noinput>\n6. Output:\nStarch")
    teacher = ReasonTeacher([], alpaca=[(text, "length")])
    cfg = SelfInstructSettings(request_batch_size=1, max_teacher_calls=1)
    result = generate(teacher, load_seed_tasks(), tmp_path, num_instructions=3, method="alpaca", config=cfg,
                      progress=False, export_incomplete=True)
    assert [r["instruction"] for r in result.records] == ["Suggest three names for a sourdough bakery."]
    assert result.stats["filters"]["dropped"] == {filters.BLACKLISTED_WORD: 1}  # "music"
    assert result.stats["truncated_generations"] == 1
