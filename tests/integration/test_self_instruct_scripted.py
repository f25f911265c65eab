"""A scripted teacher for the Self-Instruct loop, and tests of the loop's logic with it.

`ScriptedTeacher` implements the Teacher interface and answers each kind of prompt the loop sends
(bootstrap, classification, instances, Alpaca) with realistic canned text: fresh instructions mixed
with ones every filter should catch (blacklisted words, too short, near-duplicates, empty outputs,
contradicting instances). It honours `stop` like an API would. `ScriptedBackend` puts the same
answers behind `align serve`, so the HTTP path can be tested with usable output.

Other test files import this module (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path

import pytest

from align.data_gen.generate import SelfInstructSettings, generate
from align.data_gen.seeds import load_seed_tasks

FRESH = [  # five of these are ROUGE-L near-duplicates of shipped seed tasks
    "Suggest three names for a bakery that specializes in sourdough bread.",
    "Explain why the sky looks blue during the day but red at sunset.",
    "Classify the email as spam or not spam.",
    "Convert the recipe quantities from cups to grams.",
    "List five questions a journalist might ask a newly elected mayor.",
    "Decide whether the review is positive or negative.",
    "Translate the phrase into Spanish and French.",
    "Give two arguments for and two against a four-day work week.",
    "Rewrite the paragraph so that a ten-year-old can understand it.",
    "Is the following number prime? Answer yes or no.",
    "Write a limerick about a cat who learns to play chess.",
    "Estimate how many piano tuners work in a city of one million people.",
    "Identify the logical fallacy in the argument.",
    "Propose a weekly meal plan for a vegetarian student on a budget.",
    "Describe the water cycle in four steps.",
    "Detect the language of the sentence: English, German, or Italian.",
    "Compose a polite reply declining a wedding invitation.",
    "Find all the verbs in the sentence.",
    "Recommend a board game for a family with young children and explain your choice.",
    "Summarize the main causes of the French Revolution.",
    "Calculate the compound interest on the loan after three years.",
    "Create a packing checklist for a weekend camping trip.",
    "Tell me whether the statement is a fact or an opinion.",
    "Outline a presentation about renewable energy for high school students.",
    "Generate a catchy slogan for a bicycle repair shop.",
    "Sort the list of countries by population, largest first.",
    "Explain the difference between weather and climate with an example.",
    "Brainstorm ten uses for an empty glass jar.",
    "Correct the grammar in the customer's message.",
    "Predict what happens next in the story and justify your guess.",
    "Compare the advantages of trains and planes for a 500 km trip.",
    "Name the capital city of each country in the list.",
    "Draft a short job advertisement for a part-time barista.",
    "Determine whether the two sentences mean the same thing.",
    "Invent a riddle whose answer is the moon.",
    "Paraphrase the quote without changing its meaning.",
    "Recommend three exercises to improve posture for office workers.",
    "Categorize the expense as food, transport, housing, or entertainment.",
    "Explain how a bill becomes a law in simple terms.",
    "Plan a two-day itinerary for a first visit to Rome.",
]
JUNK = [
    "Draw a picture of a lighthouse at night.",  # blacklisted_word
    "Hi there.",  # too_short
    "Look at the attached image and describe it.",  # blacklisted_word
    "!!! Write something.",  # starts_with_punctuation
]
EMPTY_OUTPUT_TASKS = ("Brainstorm ten uses for an empty glass jar.",)
CONFLICT_TASKS = ("Sort the list of countries by population, largest first.",)


def _extra_instructions():
    """Unlimited further distinct instructions once FRESH runs out (long runs)."""
    subjects = ["a lighthouse keeper", "a retired astronaut", "a street musician", "an urban beekeeper",
                "a night-shift nurse", "a chess prodigy", "a ferry captain", "a wildlife photographer"]
    jobs = ["Write a diary entry from the point of view of {}.", "List interview questions for {}.",
            "Describe a typical morning for {}.", "Invent a surprising hobby for {} and explain it."]
    for n in itertools.count(1):
        for job in jobs:
            for subject in subjects:
                yield job.format(subject) + ("" if n == 1 else f" Use exactly {n + 2} sentences.")


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    cut = min((text.find(s) for s in stop or [] if s in text), default=len(text))
    return text[:cut]


class ScriptedTeacher:
    """Answers Self-Instruct prompts with canned but realistic text; counts calls; can be slowed down."""

    def __init__(self, delay_s: float = 0.0, useless: bool = False):
        self.fresh = itertools.chain(FRESH, _extra_instructions())
        self.delay_s = delay_s
        self.useless = useless
        self.calls = 0
        self.prompts = 0
        self.emitted: list[str] = []

    def complete(self, prompts, *, max_tokens, temperature, stop=None):
        self.calls += 1
        self.prompts += len(prompts)
        if self.delay_s:
            time.sleep(self.delay_s)
        return [cut_at_stop(self.answer(p), stop).strip() for p in prompts]

    def chat(self, conversations, *, max_tokens, temperature):
        return [self.answer(c[-1]["content"]).strip() for c in conversations]

    # --- one answer per kind of prompt -----------------------------------------------------------------

    def answer(self, prompt: str) -> str:
        if self.useless:
            return "<|im_end|>"  # a teacher that immediately ends its turn
        if prompt.rstrip().endswith("Is it classification?"):
            task = prompt.rsplit("Task:", 1)[1]
            clf = re.search(r"\b(classify|categorize|decide whether|detect|is the following|tell me whether|"
                            r"determine whether)\b", task, re.IGNORECASE)
            return " Yes" if clf else " No"
        if prompt.endswith("\n") and "\nTask: " in prompt:
            return self.instances(prompt.rsplit("Task: ", 1)[1].strip(), "Class label:" in prompt)
        if prompt.rstrip().endswith("Instruction:"):
            return self.alpaca(int(re.search(r"(\d+)\. Instruction:\s*$", prompt).group(1)))
        match = re.search(r"(?:Task (\d+):|\n(\d+)\.)\s*$", prompt)  # guided or original bootstrap prompt
        if match:
            return self.bootstrap(int(match.group(1) or match.group(2)), guided=match.group(1) is not None)
        raise AssertionError(f"unexpected prompt: {prompt[-200:]!r}")

    def _next(self) -> str:
        inst = next(self.fresh)
        self.emitted.append(inst)
        return inst

    def bootstrap(self, start: int, guided: bool = False) -> str:
        items = [self._next(), self._next(), JUNK[self.calls % len(JUNK)], self._next()]
        if self.emitted[:-3]:  # repeat an earlier instruction, reworded a little: a near-duplicate
            items.append(self.emitted[len(self.emitted) // 2].replace(".", " please."))
        items.append("Write a haiku about autumn leaves")  # unfinished, cut by the token limit: parser drops it
        marker = "Task {}:" if guided else "{}."
        lines = [f" {items[0]}"] + [f"{marker.format(start + i)} {inst}" for i, inst in enumerate(items[1:], start=1)]
        return "\n".join(lines) + f"\n{marker.format(16)} Something the stop string cuts off."

    def instances(self, instruction: str, classification: bool) -> str:
        if instruction in EMPTY_OUTPUT_TASKS:
            return "Example 1\nInput: a jar\nOutput:\n\nTask: next"
        if instruction in CONFLICT_TASKS:
            return ("Example 1\nInput: France, Chad\nOutput: France, Chad\n\n"
                    "Example 2\nInput: France, Chad\nOutput: Chad, France\n")
        if classification:
            return ("Class label: Yes\nText: Congratulations, you won a free cruise! Click here.\n"
                    "Class label: No\nText: The meeting moved to 3 pm on Thursday.\n\nTask: Another task")
        return (f"Example 1\nInput: sample input for: {instruction[:30]}\nOutput: A careful answer to "
                f"'{instruction[:40]}'.\n\nExample 2\nOutput: A second, different answer.\n\n"
                f"Example 2\nOutput: A second, different answer.\n\nTask: Unrelated next task")

    def alpaca(self, start: int) -> str:
        blocks = []
        for i, inst in enumerate([self._next(), JUNK[1], self._next(), self._next()]):
            number = start + i
            head = f" {inst}" if i == 0 else f"{number}. Instruction: {inst}"
            no_input = i % 2 == 0
            blocks.append(f"{head}\n{number}. Input:\n{'<noinput>' if no_input else 'Some concrete input text.'}\n"
                          f"{number}. Output:\n{'' if i == 3 else 'A fitting answer of a few words.'}")
        return "\n###\n".join(blocks) + "\n###\n21. Instruction: cut by the stop"


class ScriptedBackend:
    """`align serve` backend answering with a ScriptedTeacher (chat prompts are the user's message)."""

    def __init__(self, teacher: ScriptedTeacher | None = None):
        self.teacher = teacher or ScriptedTeacher()

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def chat_prompt(self, messages: list[dict]) -> str:
        return messages[-1]["content"]

    def generate(self, prompts, *, max_tokens, temperature, top_p, stop, n, seed):
        texts = self.teacher.complete(prompts, max_tokens=max_tokens, temperature=temperature, stop=stop)
        return [[(t, "stop", self.count_tokens(t))] * n for t in texts]


SMALL = SelfInstructSettings(request_batch_size=2)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def seeds():
    return load_seed_tasks()


def test_self_instruct_loop_end_to_end(tmp_path, seeds):
    teacher = ScriptedTeacher()
    result = generate(teacher, seeds, tmp_path, num_instructions=12, config=SMALL, progress=False)
    assert result.complete
    records = read_jsonl(tmp_path / "machine_generated.jsonl")
    assert len(records) == 12 == result.stats["kept"]
    instructions = [r["instruction"] for r in records]
    assert len(set(instructions)) == 12
    assert set(instructions) <= set(FRESH)  # nothing from the junk or the cut-off items survived
    assert len({r["id"] for r in records}) == 12
    dropped = result.stats["filters"]["dropped"]
    for reason in ("blacklisted_word", "too_short", "near_duplicate"):
        assert dropped.get(reason, 0) > 0, (reason, dropped)
    # the filter tally covers every raw generation
    assert result.stats["filters"]["total"] == result.stats["raw_generations"]
    assert result.stats["filters"]["kept"] == 12
    # classification tasks were prompted output-first and parsed as label + input
    spam = next(r for r in records if r["instruction"] == "Classify the email as spam or not spam.")
    assert spam["is_classification"] is True
    assert [i["output"] for i in spam["instances"]] == ["Yes", "No"]
    assert "Explain why the sky looks blue during the day but red at sunset." not in instructions  # ~ a seed
    recipe = next(r for r in records if r["instruction"].startswith("Convert the recipe"))
    assert recipe["is_classification"] is False
    assert len(recipe["instances"]) == 2  # the duplicated example was removed
    assert result.stats["instances"]["total"] == sum(len(r["instances"]) for r in records)
    assert result.stats["diversity"]["unique_verbs"] >= 8
    # each round: one bootstrap, one classification, one instance call
    assert teacher.calls == result.stats["teacher_calls"] == 3 * result.stats["rounds"]


def test_exports_load_as_training_data(tmp_path, seeds):
    from align.data import load_examples

    result = generate(ScriptedTeacher(), seeds, tmp_path, num_instructions=6, config=SMALL, progress=False)
    n_instances = result.stats["instances"]["total"]
    alpaca = json.loads((tmp_path / "alpaca_data.json").read_text())
    assert len(alpaca) == n_instances and set(alpaca[0]) == {"instruction", "input", "output"}
    assert len(load_examples(str(tmp_path / "alpaca_data.json"))) == n_instances
    assert len(load_examples(str(tmp_path / "chat_data.jsonl"))) == n_instances
    assert len(load_examples(str(tmp_path / "self_instruct_data.jsonl"))) == n_instances
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["complete"] is True and stats["elapsed_s"] >= 0
    assert stats["files"] == {"alpaca": "alpaca_data.json", "self_instruct": "self_instruct_data.jsonl",
                              "chat": "chat_data.jsonl"}


def test_alpaca_method(tmp_path, seeds):
    teacher = ScriptedTeacher()
    result = generate(teacher, seeds, tmp_path, num_instructions=7, method="alpaca", config=SMALL, progress=False)
    assert result.complete
    records = result.records
    assert len(records) == 7 and all(len(r["instances"]) == 1 for r in records)
    assert {r["instruction"] for r in records} <= set(FRESH)
    # Alpaca asks for whole tasks: one teacher call per round, no classification or instance calls
    assert teacher.calls == result.stats["rounds"]
    dropped = result.stats["filters"]["dropped"]
    assert dropped.get("too_short", 0) > 0 and dropped.get("empty_output", 0) > 0
    no_input = [r for r in records if r["instances"][0]["input"] == ""]
    assert no_input  # "<noinput>" became an empty input


def test_target_is_exact_rerun_is_a_no_op_and_a_higher_target_continues(tmp_path, seeds):
    generate(ScriptedTeacher(), seeds, tmp_path, num_instructions=5, config=SMALL, progress=False)
    first = read_jsonl(tmp_path / "machine_generated.jsonl")
    assert len(first) == 5
    again = ScriptedTeacher()
    result = generate(again, seeds, tmp_path, num_instructions=5, config=SMALL, progress=False)
    assert again.calls == 0 and result.complete and len(result.records) == 5
    more = generate(ScriptedTeacher(), seeds, tmp_path, num_instructions=9, config=SMALL, progress=False)
    records = read_jsonl(tmp_path / "machine_generated.jsonl")
    assert len(records) == 9 and records[:5] == first
    assert len({r["instruction"] for r in records}) == 9
    assert more.stats["resumed_from"] == 5


def test_useless_teacher_stops_with_incomplete_stats(tmp_path, seeds):
    teacher = ScriptedTeacher(useless=True)
    cfg = SelfInstructSettings(request_batch_size=2, max_idle_rounds=3)
    result = generate(teacher, seeds, tmp_path, num_instructions=5, config=cfg, progress=False)
    assert not result.complete
    assert teacher.calls == 3  # 3 idle rounds of one bootstrap call each (nothing to classify)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["complete"] is False and stats["kept"] == 0
    assert "max_idle_rounds" in stats["stop_reason"]
    assert stats["empty_generations"] == 6


def test_max_teacher_calls_is_a_hard_limit(tmp_path, seeds):
    teacher = ScriptedTeacher()
    cfg = SelfInstructSettings(request_batch_size=1, max_teacher_calls=4)
    result = generate(teacher, seeds, tmp_path, num_instructions=40, config=cfg, progress=False)
    assert not result.complete
    assert teacher.calls <= 4 + 2  # the limit is checked between rounds (a round makes up to 3 calls)
    assert "max_teacher_calls" in result.stats["stop_reason"]
    assert 0 < result.stats["kept"] < 40


def test_folder_of_another_method_is_refused(tmp_path, seeds):
    from align.errors import AlignError

    generate(ScriptedTeacher(), seeds, tmp_path, num_instructions=2, config=SMALL, progress=False)
    with pytest.raises(AlignError, match="method"):
        generate(ScriptedTeacher(), seeds, tmp_path, num_instructions=2, method="alpaca", config=SMALL, progress=False)


class FailingTeacher(ScriptedTeacher):
    """Works for a few calls, then fails as a teacher whose retries ran out would."""

    def __init__(self, fail_after: int):
        super().__init__()
        self.fail_after = fail_after

    def complete(self, prompts, **kwargs):
        from align.errors import AlignError

        if self.calls >= self.fail_after:
            raise AlignError("teacher scripted: chat completion failed after 6 attempts: RateLimitError (HTTP 429)")
        return super().complete(prompts, **kwargs)


def test_teacher_failure_keeps_records_and_marks_stats_incomplete(tmp_path, seeds):
    from align.errors import AlignError

    with pytest.raises(AlignError, match="429"):
        generate(FailingTeacher(fail_after=7), seeds, tmp_path, num_instructions=30, config=SMALL, progress=False)
    kept = read_jsonl(tmp_path / "machine_generated.jsonl")
    assert kept  # the rounds that finished are safe on disk
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["complete"] is False and stats["kept"] == len(kept)
    assert stats["stop_reason"].startswith("interrupted by AlignError")
    assert stats["files"] == {} and not any(tmp_path.glob("*_data.json*"))  # no export passed off as the data
    result = generate(ScriptedTeacher(), seeds, tmp_path, num_instructions=len(kept) + 3, config=SMALL, progress=False)
    assert result.complete and result.records[: len(kept)] == kept
    assert len(json.loads((tmp_path / "alpaca_data.json").read_text())) == result.stats["instances"]["total"]


def test_a_failed_continuation_removes_the_earlier_exports(tmp_path, seeds):
    """Exports of an earlier, smaller target no longer match the records once a larger run failed midway."""
    from align.errors import AlignError

    generate(ScriptedTeacher(), seeds, tmp_path, num_instructions=3, config=SMALL, progress=False)
    assert (tmp_path / "alpaca_data.json").exists()
    with pytest.raises(AlignError):
        generate(FailingTeacher(fail_after=4), seeds, tmp_path, num_instructions=30, config=SMALL, progress=False)
    assert not any(tmp_path.glob("*_data.json*"))


def test_an_incomplete_run_exports_only_when_asked_and_never_an_empty_file(tmp_path, seeds):
    cfg = SelfInstructSettings(request_batch_size=1, max_teacher_calls=3)
    result = generate(ScriptedTeacher(), seeds, tmp_path / "a", num_instructions=40, config=cfg, progress=False)
    assert not result.complete and result.records and result.files == {}
    assert not (tmp_path / "a" / "alpaca_data.json").exists()
    result = generate(ScriptedTeacher(), seeds, tmp_path / "b", num_instructions=40, config=cfg, progress=False,
                      export_incomplete=True)
    assert len(json.loads((tmp_path / "b" / "alpaca_data.json").read_text())) == result.stats["instances"]["total"] > 0
    useless = generate(ScriptedTeacher(useless=True), seeds, tmp_path / "c", num_instructions=5,
                       config=SelfInstructSettings(max_idle_rounds=1), progress=False, export_incomplete=True)
    assert useless.records == [] and not (tmp_path / "c" / "alpaca_data.json").exists()
