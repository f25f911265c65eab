"""Self-Instruct and Alpaca prompts for a teacher model, and parsers for what it writes back.

Every builder returns plain completion text that ends where the teacher should continue ("9.",
"4. Instruction:", ...), so it works with base models as is. The bootstrap prompt is the original
code's by default; ``style="guided"`` selects a paraphrase with guidance sentences and "Task N:" items.
Chat models get the *same* text as a single user message, with no system message: they usually answer
by restating the next marker ("9. ..." or "Task 9: ...") or with markdown bold, and the parsers accept
these forms.

Pipeline (Wang et al. 2022):
1. ``build_bootstrap_prompt`` -> teacher -> ``parse_bootstrap_output``: new instructions.
2. ``build_classification_prompt`` -> teacher -> ``parse_classification``: is it a classification task?
3. ``build_instance_prompt`` -> teacher -> ``parse_instances``: (input, output) instances, written
   input-first for ordinary tasks and output-first (class label, then input) for classification tasks, so
   labels are not all the same.
The Alpaca variant (Taori et al. 2023) asks for whole tasks in one go: ``build_alpaca_prompt`` ->
``parse_alpaca_output``.

Parsers never raise on messy text; they return what they could read. Filtering (length, keywords,
duplicates) is a separate step, see ``filters.py``, so drops can be counted per reason.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Literal

from align.errors import AlignError

# Special tokens after which a model's text is not part of the answer (chat/base end-of-turn markers).
END_MARKERS = (
    "</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "<eos>",
    "<end_of_turn>", "<|im_start|>",
)


def cut_at_end(text: str) -> tuple[str, bool]:
    """Text before the first end-of-turn marker, and whether one was found."""
    cut = min((i for i in (text.find(m) for m in END_MARKERS) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def clean_instruction(text: str) -> str:
    """One line, single spaces, no markdown bold or trailing colon; first letter upper-cased.

    The original code used str.capitalize(), which also lower-cases the rest ("python" from "Python");
    we only touch the first character.
    """
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"^(?:\*\*|__)+|(?:\*\*|__)+$", "", text).strip()
    text = text.rstrip(":").strip()
    return text[:1].upper() + text[1:]


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(":")


# ---------------------------------------------------------------------------------------------------------
# 1. Instruction bootstrapping
# ---------------------------------------------------------------------------------------------------------

BOOTSTRAP_HEADER_ORIGINAL = "Come up with a series of tasks:\n"
"""The header of Self-Instruct's bootstrap prompt (``encode_prompt`` in ``bootstrap_instructions.py``)."""

BOOTSTRAP_HEADER = (
    "Come up with a series of new tasks. Each task is a single instruction that someone could give to a "
    "helpful assistant. Make them diverse in topic, length and kind of work.\n\n"
)
"""The header of the ``guided`` prompt style: added guidance, "Task N:" numbering."""

BootstrapStyle = Literal["original", "guided"]


def build_bootstrap_prompt(
    seed_instructions: Sequence[str],
    machine_instructions: Sequence[str] = (),
    num_prompt_instructions: int = 8,
    *,
    rng: random.Random,
    num_machine: int = 2,
    style: BootstrapStyle = "original",
) -> str:
    """A bootstrap prompt from 6 human + 2 machine instructions in random order, ending where item 9 starts.

    ``original`` (the Self-Instruct code): "Come up with a series of tasks:\n1. ...\n8. ...\n9.";
    ``guided``: a header with guidance sentences and "Task 1: ... Task 9:" numbering (some chat models
    keep to it better). With fewer than ``num_machine`` machine instructions available (the start of a
    run), human ones fill the gap, as in the original. Parse the teacher's text with
    ``parse_bootstrap_output(text, start_index=num_prompt_instructions + 1)`` (either style).
    Chat models: send the returned text as the only user message.
    """
    n_machine = min(num_machine, len(machine_instructions), num_prompt_instructions)
    n_human = num_prompt_instructions - n_machine
    if n_human > len(seed_instructions):
        raise AlignError(
            f"bootstrap prompt needs {n_human} seed instructions but only {len(seed_instructions)} were given"
        )
    chosen = rng.sample(list(machine_instructions), n_machine) + rng.sample(list(seed_instructions), n_human)
    rng.shuffle(chosen)
    if style == "original":
        lines = [f"{i}. {_one_line(inst)}" for i, inst in enumerate(chosen, start=1)]
        return BOOTSTRAP_HEADER_ORIGINAL + "\n".join(lines) + f"\n{len(chosen) + 1}."
    if style != "guided":
        raise AlignError(f"bootstrap prompt style must be original or guided, got {style!r}")
    lines = [f"Task {i}: {_one_line(inst)}" for i, inst in enumerate(chosen, start=1)]
    return BOOTSTRAP_HEADER + "\n".join(lines) + f"\nTask {len(chosen) + 1}:"


def bootstrap_stop(num_prompt_instructions: int, style: BootstrapStyle = "original", chat: bool = False) -> list[str]:
    """Stop strings for a bootstrap call: a blank line, or the item number twice the prompt's.

    ``original``: the Self-Instruct code's ["\n\n", "\n16", "16.", "16 ."] for 8 in-context items;
    ``guided``: ["\n\n", "Task 16"]. Chat teachers (``chat=True``) get no blank-line stop: they often
    space list items with blank lines, which the parser copes with and a stop would cut.
    """
    n = 2 * num_prompt_instructions
    stops = [f"\n{n}", f"{n}.", f"{n} ."] if style == "original" else [f"Task {n}"]
    return stops if chat else ["\n\n", *stops]


# "Task 10:", "**Task 10:**", "10.", "10)", "(10)", "#10:", "- 10." and "Instruction 10:" all start an item.
_NUMBERED_RE = re.compile(
    r"""^\s*(?:[-*•]\s+)?(?:\*\*|__)?\s*
        (?:(?:task|instruction)\s*\#?\s*(?P<a>\d{1,4})\s*[.:)\-]?
          |\#?\(?(?P<b>\d{1,4})\s*[.:)]\)?
        )\s*(?:\*\*|__)?(?=\s|$)""",
    re.IGNORECASE | re.VERBOSE,
)
# Lines that start an example or answer rather than another instruction: skipped up to the next item.
_FIELD_RE = re.compile(r"^(?:input|output|example|answer|solution|response)\b\s*\d*\s*[:.]", re.IGNORECASE)
_TERMINAL_RE = re.compile(r"[.?!:;)\]\"'”’`]$")


def parse_bootstrap_output(text: str, start_index: int, truncated: bool | None = None) -> list[str]:
    """Instructions from a teacher's continuation of a bootstrap prompt ending in "{start_index}." (or
    "Task {start_index}:").

    The text before the first marker is item ``start_index`` (a restated "9." or "Task 9:" is fine).
    Numbering may be messy ("9.", "Task 10:", "10)", "**Task 11:**", gaps), but it must increase: a
    repeated or smaller number means the model started another list, and parsing stops. Parsing also
    stops at an end-of-turn token, or at text after a blank line that does not start a new item
    (trailing chatter). "Input:"/"Output:" lines under an item are skipped.

    ``truncated``: pass True when generation hit the token limit (finish_reason == "length") to drop the
    cut-off last item; None guesses (the last item is dropped if the text ran to its end and the item does
    not end in punctuation); False keeps it.
    """
    text, ended = cut_at_end(text)
    items: list[list[str]] = []
    current: list[str] = []
    number = start_index - 1
    started = False  # whether an item is open (the implicit first one opens on its first text)
    after_blank = skipping = stopped = False
    for line in text.split("\n"):
        stripped = line.strip()
        match = _NUMBERED_RE.match(line)
        if match:
            new = int(match.group("a") or match.group("b"))
            if started and new <= number:
                stopped = True
                break
            if started:
                items.append(current)
            current, number, started = [line[match.end():].strip()], new, True
            after_blank = skipping = False
            continue
        if not stripped:
            after_blank = started
            continue
        if after_blank:
            stopped = True
            break
        if _FIELD_RE.match(stripped):
            skipping = started = True
            continue
        if not skipping:
            current.append(stripped)
            started = True
    if started:
        items.append(current)
    instructions = [clean_instruction(" ".join(parts)) for parts in items]
    if instructions and not (stopped or ended or after_blank):
        cut_off = truncated if truncated is not None else not _TERMINAL_RE.search(instructions[-1])
        if cut_off:
            instructions.pop()
    return [inst for inst in instructions if inst]


# ---------------------------------------------------------------------------------------------------------
# 2. Is the task a classification task?
# ---------------------------------------------------------------------------------------------------------

CLASSIFICATION_HEADER = (
    "Decide whether each task is a classification task: one whose answer is a label chosen from a small, "
    "fixed set of options (such as yes/no, positive/negative, or one of a few listed categories).\n\n"
)

CLASSIFICATION_EXAMPLES: tuple[tuple[str, bool], ...] = (
    ("Write a short poem about the first snow of winter.", False),
    ("Classify the sentiment of the movie review as positive or negative.", True),
    ("Summarize the article in three sentences.", False),
    ("Tell whether the number is a perfect square.", True),
    ("Explain how a refrigerator keeps food cold.", False),
    ("Identify the language of the given sentence.", True),
    ("Translate the sentence into German.", False),
    ("Do the two sentences contradict each other? Answer yes or no.", True),
    ("Extract all the city names from the text.", False),
    ("Is the following statement true or false?", True),
    ("Find the median of the list of numbers.", False),
    ("Which of the listed answer choices is correct? Reply with the letter of the choice.", True),
    ("Write a SQL query that counts the orders placed in March.", False),
    ("Label each customer email as a complaint, a question, or praise.", True),
    ("Give me three tips for learning to cook.", False),
)


def build_classification_prompt(instruction: str) -> str:
    """Few-shot yes/no prompt ending in "Is it classification?"; parse with ``parse_classification``.

    Chat models: send the returned text as the only user message.
    """
    shots = "".join(
        f"Task: {task}\nIs it classification? {'Yes' if label else 'No'}\n\n" for task, label in CLASSIFICATION_EXAMPLES
    )
    return CLASSIFICATION_HEADER + shots + f"Task: {_one_line(instruction)}\nIs it classification?"


def parse_classification(text: str) -> bool | None:
    """True for a "Yes ..." answer, False for "No ...", None when the first line says neither."""
    text, _ = cut_at_end(text)
    first = text.strip().split("\n", 1)[0].strip().lower()
    first = re.sub(r"^[\s*_\"'`>#-]+", "", first)
    first = re.sub(r"^(?:answer|classification|is it classification\??)\s*:?\s*", "", first)
    first = re.sub(r"^[\s*_\"'`]+", "", first)
    if re.match(r"yes\b", first):
        return True
    if re.match(r"no\b", first):
        return False
    return None


# ---------------------------------------------------------------------------------------------------------
# 3. Instance generation
# ---------------------------------------------------------------------------------------------------------

INPUT_FIRST_HEADER = (
    "Write examples for each task below. Give several examples when you can, each with an input and the "
    "correct output. If a task needs no input, write only the output.\n\n"
)

INPUT_FIRST_EXAMPLES = """\
Task: Convert the temperature from Celsius to Fahrenheit.
Example 1
Input: 25 °C
Output: 77 °F

Example 2
Input: -40 °C
Output: -40 °F

Task: Write a motivational quote about persistence.
Example 1
Output: The summit is reached one ordinary step at a time.

Example 2
Output: Most doors open on the knock after the one where people give up.

Task: Given a list of numbers, return the largest one.
Example 1
Input: [3, 17, 8, -2]
Output: 17

Example 2
Input: [-5, -1, -12]
Output: -1

Task: Answer the question about world geography.
Example 1
Input: Which river flows through Cairo?
Output: The Nile.

Example 2
Input: What is the smallest country in the world by area?
Output: Vatican City.

Task: Fix the spelling mistakes in the sentence.
Example 1
Input: I recieved your mesage yesterday.
Output: I received your message yesterday.

Task: How can I keep fresh basil from wilting?
Example 1
Output: Trim the stems and stand the bunch in a glass of water, like flowers. Keep it on the counter, \
not in the fridge, loosely covered with a bag, and change the water every day or two.

Task: Write a Python function that checks whether a string is a palindrome.
Example 1
Output: def is_palindrome(s: str) -> bool:
    cleaned = [c.lower() for c in s if c.isalnum()]
    return cleaned == cleaned[::-1]

"""

OUTPUT_FIRST_HEADER = (
    "Given a classification task and its possible class labels, write an input for each class label. "
    "Write the class label first, then the input. If the task needs no input, write only the possible "
    "class labels.\n\n"
)

OUTPUT_FIRST_EXAMPLES = """\
Task: Classify the sentiment of the sentence as positive, negative, or mixed.
Class label: Positive
Sentence: The staff were friendly and the room was spotless.
Class label: Negative
Sentence: The shower was cold and nobody answered the front desk phone.
Class label: Mixed
Sentence: The food was delicious, but we waited an hour for a table.

Task: Is the number divisible by 3? Answer yes or no.
Class label: Yes
Number: 471
Class label: No
Number: 250

Task: Given a premise and a hypothesis, decide whether the premise entails the hypothesis.
Class label: Entailment
Premise: Every seat on the morning train was taken.
Hypothesis: The morning train was full.
Class label: Not entailment
Premise: Lina bought a new bike last week.
Hypothesis: Lina rides her bike to work.

Task: Identify the topic of the news headline: sports, politics, technology, or health.
Class label: Technology
Headline: New battery design could double the range of electric scooters
Class label: Health
Headline: Study links short afternoon naps to better memory in older adults
Class label: Sports
Headline: Underdog club reaches the cup final for the first time in 40 years

Task: Which of these is a prime number: 21, 27, 29, or 33?
Class label: 29

Task: Does the message ask for a refund? Answer yes or no.
Class label: Yes
Message: The headphones stopped working after two days. I'd like my money back, please.
Class label: No
Message: Could you tell me when my order will arrive?

"""


def build_instance_prompt(instruction: str, is_classification: bool) -> str:
    """Few-shot prompt ending in "Task: {instruction}\\n"; parse with ``parse_instances``.

    Classification tasks are prompted output-first (class label, then input) so the teacher does not
    write inputs that all fall in one class; others are input-first. Chat models: send the returned text
    as the only user message.
    """
    header, shots = (
        (OUTPUT_FIRST_HEADER, OUTPUT_FIRST_EXAMPLES) if is_classification else (INPUT_FIRST_HEADER, INPUT_FIRST_EXAMPLES)
    )
    return header + shots + f"Task: {_one_line(instruction)}\n"


_NEXT_TASK_RE = re.compile(r"^\s*(?:\*\*)?Task\s*\d*\s*:", re.IGNORECASE | re.MULTILINE)
_EXAMPLE_RE = re.compile(r"^\s*(?:\*\*|#+\s*)?Example\s*\d*\s*[:.)]?(?:\*\*)?[ \t]*(?:\n|$)", re.IGNORECASE | re.MULTILINE)
_INPUT_RE = re.compile(r"^\s*(?:\*\*)?Input\s*\d*\s*:(?:\*\*)?", re.IGNORECASE | re.MULTILINE)
_OUTPUT_RE = re.compile(r"(?:^|(?<=\s))(?:\*\*)?Output\s*\d*\s*:(?:\*\*)?", re.IGNORECASE | re.MULTILINE)
_CLASS_LABEL_RE = re.compile(r"^\s*(?:\*\*)?Class label\s*:(?:\*\*)?", re.IGNORECASE | re.MULTILINE)


def _before_next_task(text: str) -> str:
    text, _ = cut_at_end(text)
    match = _NEXT_TASK_RE.search(text)
    return text[: match.start()] if match else text


def _input_output(chunk: str) -> dict[str, str] | None:
    """One "Input: ... Output: ..." chunk (input optional) -> instance; None when no output was written."""
    match = _OUTPUT_RE.search(chunk)
    if match is None:
        return None
    inp, out = chunk[: match.start()], chunk[match.end():]
    second = _INPUT_RE.search(out)  # a further pair without an "Example" header: keep only the first
    if second:
        out = out[: second.start()]
    inp = _INPUT_RE.sub("", inp.strip(), count=1)
    return {"input": inp.strip(), "output": out.strip()}


def parse_instances(text: str, is_classification: bool, truncated: bool = False) -> list[dict[str, str]]:
    """Instances ``[{"input", "output"}, ...]`` from the teacher's continuation of ``build_instance_prompt``.

    Input-first text: "Example N" blocks of "Input: ... / Output: ..." (input optional), or one bare
    pair. Output-first text: "Class label: X" then the input on the following lines (the input keeps its
    own field name, e.g. "Sentence: ...", as in the original; a generic "Input:" prefix is removed).
    Parsing stops at a new "Task:" line or an end-of-turn token. Pass ``truncated=True`` when generation
    hit the token limit to drop the last, probably cut-off, instance. Empty outputs and duplicates are
    left for ``filters.filter_instances`` so the drops can be counted.
    """
    body = _before_next_task(text)
    instances: list[dict[str, str]] = []
    if is_classification:
        starts = list(_CLASS_LABEL_RE.finditer(body))
        for i, match in enumerate(starts):
            end = starts[i + 1].start() if i + 1 < len(starts) else len(body)
            label, _, rest = body[match.end(): end].strip().partition("\n")
            rest = _INPUT_RE.sub("", rest.strip(), count=1)
            instances.append({"input": rest.strip(), "output": label.strip()})
    else:
        chunks = _EXAMPLE_RE.split(body) if _EXAMPLE_RE.search(body) else [body]
        for chunk in chunks:
            if chunk.strip():
                instance = _input_output(chunk)
                if instance is not None:
                    instances.append(instance)
    if truncated and instances:
        instances.pop()
    return instances


# ---------------------------------------------------------------------------------------------------------
# Alpaca variant: a batch of whole tasks per request
# ---------------------------------------------------------------------------------------------------------

ALPACA_HEADER = """\
Write {num_tasks} new, varied tasks for an AI assistant. Each task has an instruction, an input, and the \
output a good assistant would give. The tasks will be used to test how well a language model follows \
instructions.

Requirements:
1. Vary the verbs: avoid starting two instructions with the same verb.
2. Vary the phrasing as well: mix direct commands with questions.
3. Vary the kind of task: open-ended writing, classification, editing, extraction, question answering, \
reasoning, coding, math, and so on.
4. A text-only language model must be able to do every task. Do not ask for images, pictures, drawings, \
audio, video or any other non-text output, and do not ask for actions in the world, such as setting an \
alarm or sending a message.
5. Write the instructions in English.
6. Keep each instruction to one or two sentences, either an imperative or a question.
7. When a task needs an input, write a specific and realistic one (an actual sentence, paragraph, list \
or code snippet, never a placeholder). It should make the task substantial but ideally stay under 100 \
words.
8. Many tasks need no input, for example general knowledge questions. Then write <noinput> as the input.
9. The output must be a correct, fitting response to the instruction and input, under 100 words.

List of {num_tasks} tasks:
"""

_NO_INPUT = ("<noinput>", "<no input>", "noinput", "<none>", "none", "n/a")


def _alpaca_fields(task: object) -> tuple[str, str, str]:
    """(instruction, input, output) of a SeedTask, a seed-format dict, or an Alpaca dict."""
    if isinstance(task, Mapping):
        if "instances" in task:
            inst = task["instances"][0]
            return task["instruction"], inst.get("input", ""), inst["output"]
        return task["instruction"], task.get("input", ""), task["output"]
    first = task.instances[0]  # SeedTask
    return task.instruction, first.input, first.output


def build_alpaca_prompt(
    seed_tasks: Sequence[object], num_tasks: int = 20, *, rng: random.Random, num_prompt_tasks: int = 3
) -> str:
    """Stanford-Alpaca-style prompt: requirements, ``num_prompt_tasks`` sampled demos, then "4. Instruction:".

    ``num_tasks`` is the length of the whole list, demos included (as in stanford_alpaca), so the teacher
    is asked for ``num_tasks - num_prompt_tasks`` new tasks. Seed tasks may be ``SeedTask`` objects,
    seed-format dicts (first instance used) or Alpaca dicts. Parse with ``parse_alpaca_output``.
    Chat models: send the returned text as the only user message.
    """
    if not 0 < num_prompt_tasks < num_tasks:
        raise AlignError(f"num_prompt_tasks must be between 1 and num_tasks - 1, got {num_prompt_tasks} of {num_tasks}")
    if num_prompt_tasks > len(seed_tasks):
        raise AlignError(f"alpaca prompt needs {num_prompt_tasks} seed tasks but only {len(seed_tasks)} were given")
    prompt = ALPACA_HEADER.format(num_tasks=num_tasks)
    for i, task in enumerate(rng.sample(list(seed_tasks), num_prompt_tasks), start=1):
        instruction, inp, out = _alpaca_fields(task)
        prompt += "###\n"
        prompt += f"{i}. Instruction: {_one_line(instruction)}\n"
        prompt += f"{i}. Input:\n{inp.strip() or '<noinput>'}\n"
        prompt += f"{i}. Output:\n{out.strip()}\n"
    return prompt + f"###\n{num_prompt_tasks + 1}. Instruction:"


_ALPACA_FIELD_RE = re.compile(
    r"^[ \t]*(?:\*\*)?(?:(\d+)\s*[.)]\s*)?(Instruction|Input|Output)\s*:(?:\*\*)?[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)


def _alpaca_block(block: str, first: bool) -> dict[str, str] | None:
    fields = list(_ALPACA_FIELD_RE.finditer(block))
    if first and (not fields or fields[0].group(2).lower() != "instruction"):
        block = "Instruction: " + block.lstrip()  # the first block continues the prompt's "N. Instruction:"
        fields = list(_ALPACA_FIELD_RE.finditer(block))
    names = [f.group(2).lower() for f in fields]
    if names != ["instruction", "input", "output"]:
        return None
    values = [
        block[f.end(): fields[i + 1].start() if i + 1 < len(fields) else len(block)].strip()
        for i, f in enumerate(fields)
    ]
    instruction, inp, out = values
    if inp.lower() in _NO_INPUT:
        inp = ""
    return {"instruction": clean_instruction(instruction), "input": inp, "output": out}


def parse_alpaca_output(text: str, truncated: bool = False) -> list[dict[str, str]]:
    """Tasks ``[{"instruction", "input", "output"}, ...]`` from the continuation of ``build_alpaca_prompt``.

    The text is split at "###"; each block needs "N. Instruction:", "N. Input:", "N. Output:" in that
    order (the first block's instruction continues the prompt, so its header is implied; numbers are
    optional and not checked). Blocks missing a field are skipped; "<noinput>" becomes "". Pass
    ``truncated=True`` when generation hit the token limit: the last block is then dropped, as in
    stanford_alpaca.
    """
    text, ended = cut_at_end(text)
    blocks = re.split(r"^[ \t]*###[ \t]*$|###", text, flags=re.MULTILINE)
    if truncated and not ended:
        blocks = blocks[:-1]
    tasks = []
    for i, block in enumerate(blocks):
        if block.strip():
            task = _alpaca_block(block, first=i == 0)
            if task is not None and task["instruction"]:
                tasks.append(task)
    return tasks
