"""The gold-reward prompt set: base tasks x verifiable constraints, scored exactly by `constraints.py`.

Split choice: train/heldout are split **by base task**, stratified by task kind. Every kind (explain,
email, story, ...) has 4 tasks; one per kind, chosen by the seed, goes to heldout. So no heldout prompt
shares its topic text with a train prompt (a policy cannot score on heldout by memorising a topic), while
both splits cover every kind. Constraint types are shared by both splits by design: the held-out question
is "does following instructions transfer to new requests", not "to new instruction types".

Two sets ship, both split the same way (same held-out base tasks):
- the full set (`gold:train`, `gold:heldout`): 1-3 constraints of 33 types per prompt;
- `focus` (`gold:focus:train`, `gold:focus:heldout`): 1-2 constraints from five families a small model can
  learn in minutes (placeholders, markdown highlights, no commas, a keyword, a word limit), for short demos
  where a learnable preference matters more than coverage (the quickstart).

Regenerate the shipped files with `python -m align.eval.gold --write`; `--check` verifies them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from align.errors import AlignError
from align.eval import constraints as C
from align.jsonl import iter_jsonl

GOLD_PROMPTS_PATH = Path(__file__).with_name("gold_prompts.jsonl")
SEED = 20231114  # IFEval's arXiv date; any fixed value works
PROMPTS_PER_TASK = 7
SPLITS = ("train", "heldout")
# How many constraints a prompt gets: 1, 2 or 3.
_N_CONSTRAINT_WEIGHTS = {1: 0.3, 2: 0.4, 3: 0.3}


@dataclass(frozen=True)
class BaseTask:
    id: str
    kind: str
    text: str
    keywords: tuple[str, ...]  # words natural for the topic, used by keyword constraints
    has_passage: bool = False  # summarisation tasks quote a passage: too long to ask to repeat


def _t(kind: str, slug: str, text: str, *keywords: str) -> BaseTask:
    return BaseTask(id=f"{kind}-{slug}", kind=kind, text=text, keywords=keywords)


_PASSAGES = {
    "honeybees": (
        "Honeybees live in colonies that can hold tens of thousands of individuals, almost all of them female "
        "workers. Workers collect nectar and pollen, build wax comb, care for larvae and defend the hive. A "
        "single queen lays the eggs, while male drones exist mainly to mate. As they move from flower to "
        "flower, bees carry pollen, which makes them vital pollinators for many fruits, nuts and vegetables. "
        "In recent decades beekeepers have reported heavy colony losses linked to parasites, pesticides, poor "
        "nutrition and disease."
    ),
    "printing-press": (
        "Around 1440 Johannes Gutenberg combined movable metal type, oil-based ink and a screw press adapted "
        "from winemaking. Before then, books in Europe were copied by hand or printed from carved wooden "
        "blocks, which made them slow and costly to produce. Gutenberg's workshop could print hundreds of "
        "identical pages a day. Within fifty years presses operated in more than two hundred European cities, "
        "prices of books fell sharply, and ideas, news and scientific findings spread faster than ever before."
    ),
    "heat-islands": (
        "Cities are often several degrees warmer than the countryside around them, an effect called the urban "
        "heat island. Asphalt, concrete and dark roofs absorb sunlight during the day and release the heat at "
        "night, while tall buildings trap warm air and block cooling winds. Cars, air conditioners and "
        "factories add waste heat. Planting street trees, building green roofs and using lighter paving "
        "materials can lower local temperatures and reduce the health risks of heat waves."
    ),
    "sleep-memory": (
        "Sleep is not a pause for the brain. During deep sleep, the brain replays patterns of activity from "
        "the day, which helps move new memories from short-term storage into long-term networks. Dreaming "
        "sleep appears to support emotional memories and creative links between ideas. Students who sleep "
        "after studying usually remember more than those who stay awake for the same length of time, and "
        "losing a night of sleep makes it harder to learn new material the next day."
    ),
}


def _summary(slug: str, instruction: str, *keywords: str) -> BaseTask:
    text = f"{instruction}\n\n{_PASSAGES[slug]}"
    return BaseTask(id=f"summarize-{slug}", kind="summarize", text=text, keywords=keywords, has_passage=True)


# 15 kinds x 4 tasks. Keywords are words an on-topic answer would naturally use.
BASE_TASKS: tuple[BaseTask, ...] = (
    _t("explain", "photosynthesis", "Explain how photosynthesis turns sunlight into chemical energy.",
       "chlorophyll", "glucose", "oxygen", "leaves"),
    _t("explain", "sky-colour", "Explain why the sky looks blue during the day and red at sunset.",
       "scattering", "wavelength", "atmosphere", "light"),
    _t("explain", "vaccines", "Explain how a vaccine trains the immune system to fight an infection.",
       "antibodies", "immune", "virus", "memory"),
    _t("explain", "compound-interest", "Explain what compound interest is and why it matters for saving money.",
       "interest", "savings", "growth", "time"),
    _t("describe", "fish-market", "Describe a busy morning at a fish market by the sea.",
       "fish", "vendors", "ice", "gulls"),
    _t("describe", "mountain-view", "Describe the view from the top of a mountain after a long hike.",
       "clouds", "valley", "wind", "summit"),
    _t("describe", "library", "Describe what a good public library offers to its community.",
       "books", "librarians", "quiet", "events"),
    _t("describe", "rainstorm", "Describe the sounds and smells of a city street during a summer rainstorm.",
       "rain", "puddles", "thunder", "umbrellas"),
    _t("note", "plants", "Write a short note to a neighbour asking them to water your plants while you are away.",
       "plants", "water", "keys", "thanks"),
    _t("note", "office-closure", "Write a short note to your team announcing that the office will close early on Friday.",
       "office", "Friday", "schedule", "team"),
    _t("note", "teacher-thanks", "Write a short thank-you note to a teacher who helped you prepare for an exam.",
       "exam", "teacher", "patience", "grateful"),
    _t("note", "electricity-bill", "Write a short note reminding your roommate to pay their share of the electricity bill.",
       "bill", "electricity", "deadline", "share"),
    _t("advice", "first-run", "Give advice to someone who is going running for the first time.",
       "shoes", "pace", "rest", "stretching"),
    _t("advice", "exam-season", "Give advice to a student who struggles to manage their time during exam season.",
       "schedule", "breaks", "sleep", "priorities"),
    _t("advice", "houseplants", "Give advice on keeping houseplants alive in a dark apartment.",
       "light", "watering", "soil", "humidity"),
    _t("advice", "job-interview", "Give advice to someone preparing for their first job interview.",
       "research", "questions", "confidence", "examples"),
    _summary("honeybees", "Summarize the following passage.", "bees", "pollination", "hive", "colony"),
    _summary("printing-press", "Summarize the following text for a busy reader.",
             "printing", "Gutenberg", "books", "ideas"),
    _summary("heat-islands", "Write a brief summary of this passage.", "heat", "cities", "trees", "temperature"),
    _summary("sleep-memory", "Summarize the main points of the passage below.",
             "sleep", "memory", "brain", "learning"),
    _t("compare", "train-plane", "Compare trains and airplanes for travelling between two cities that are a few hundred kilometres apart.",
       "comfort", "time", "cost", "emissions"),
    _t("compare", "ebooks", "Compare reading paper books with reading e-books.",
       "screen", "paper", "battery", "convenience"),
    _t("compare", "remote-work", "Compare working from home with working in an office.",
       "commute", "focus", "colleagues", "flexibility"),
    _t("compare", "cats-dogs", "Compare cats and dogs as pets for a small apartment.",
       "space", "walks", "litter", "attention"),
    _t("howto", "pour-over", "Describe the steps to brew a cup of pour-over coffee.",
       "grind", "filter", "water", "kettle"),
    _t("howto", "bike-tyre", "Describe how to fix a flat tyre on a bicycle.",
       "tyre", "tube", "pump", "patch"),
    _t("howto", "vegetable-garden", "Describe how to plant a small vegetable garden in spring.",
       "seeds", "soil", "sunlight", "compost"),
    _t("howto", "power-outage", "Describe how to prepare your home for a long power outage.",
       "flashlight", "batteries", "water", "food"),
    _t("email", "leaking-tap", "Write an email to your landlord reporting a leaking kitchen tap.",
       "leak", "tap", "repair", "kitchen"),
    _t("email", "farewell-lunch", "Write an email inviting colleagues to a farewell lunch for a retiring coworker.",
       "lunch", "farewell", "retirement", "restaurant"),
    _t("email", "delayed-order", "Write an email to a customer apologising for a delayed order.",
       "order", "delay", "apology", "delivery"),
    _t("email", "essay-feedback", "Write an email asking a professor for feedback on a draft essay.",
       "draft", "feedback", "essay", "deadline"),
    _t("story", "lighthouse", "Write a short story about a lighthouse keeper who finds a message in a bottle.",
       "lighthouse", "bottle", "message", "storm"),
    _t("story", "baking-robot", "Write a short story about a robot learning to bake bread.",
       "robot", "bread", "oven", "flour"),
    _t("story", "umbrella", "Write a short story about two strangers sharing an umbrella at a bus stop.",
       "umbrella", "rain", "strangers", "bus"),
    _t("story", "hidden-door", "Write a short story about a child who discovers a hidden door in a library.",
       "door", "library", "key", "shelves"),
    _t("product", "water-bottle", "Write a product description for a reusable water bottle.",
       "bottle", "steel", "leak", "cold"),
    _t("product", "headphones", "Write a product description for a pair of noise-cancelling headphones.",
       "sound", "battery", "comfort", "noise"),
    _t("product", "chess-set", "Write a product description for a handmade wooden chess set.",
       "wood", "board", "pieces", "craft"),
    _t("product", "folding-bike", "Write a product description for a compact folding bicycle.",
       "frame", "fold", "commute", "wheels"),
    _t("opinion", "car-free-centres", "Argue for or against banning cars from city centres.",
       "traffic", "pollution", "pedestrians", "transit"),
    _t("opinion", "homework", "Give your opinion on whether homework should be assigned in primary school.",
       "homework", "children", "practice", "play"),
    _t("opinion", "cooking-at-home", "Argue whether it is worth learning to cook at home instead of eating out.",
       "cooking", "money", "health", "skills"),
    _t("opinion", "free-museums", "Give your opinion on whether museums should be free to visit.",
       "museums", "access", "funding", "culture"),
    _t("eli5", "gravity", "Explain to a ten-year-old what gravity is.",
       "gravity", "mass", "earth", "falling"),
    _t("eli5", "seasons", "Explain to a child why we have seasons.",
       "tilt", "sun", "summer", "winter"),
    _t("eli5", "internet", "Explain to a child how the internet carries a message from one computer to another.",
       "packets", "computer", "router", "message"),
    _t("eli5", "recycling", "Explain to a child why recycling matters.",
       "recycling", "plastic", "waste", "planet"),
    _t("proscons", "solar-panels", "List the pros and cons of putting solar panels on a house.",
       "solar", "roof", "energy", "cost"),
    _t("proscons", "big-city", "List the pros and cons of living in a big city.",
       "jobs", "noise", "rent", "transport"),
    _t("proscons", "adult-instrument", "List the pros and cons of learning a musical instrument as an adult.",
       "practice", "patience", "music", "brain"),
    _t("proscons", "four-day-week", "List the pros and cons of a four-day work week.",
       "productivity", "rest", "wages", "schedule"),
    _t("review", "cafe", "Write a review of a small neighbourhood café you visited recently.",
       "coffee", "pastries", "staff", "atmosphere"),
    _t("review", "book", "Write a review of a book that changed the way you think.",
       "book", "author", "ideas", "chapter"),
    _t("review", "hiking-trail", "Write a review of a hiking trail for beginners.",
       "trail", "views", "difficulty", "signs"),
    _t("review", "budget-phone", "Write a review of a budget smartphone after a month of use.",
       "battery", "camera", "screen", "price"),
    _t("plan", "countryside-weekend", "Plan a relaxing weekend trip to the countryside for two people.",
       "cottage", "walks", "picnic", "market"),
    _t("plan", "vegetarian-week", "Plan a week of simple vegetarian dinners for a busy family.",
       "vegetables", "beans", "pasta", "leftovers"),
    _t("plan", "birthday-party", "Plan a small birthday party for a seven-year-old.",
       "cake", "games", "invitations", "balloons"),
    _t("plan", "spanish-study", "Plan a study schedule for learning basic Spanish in three months.",
       "vocabulary", "grammar", "practice", "listening"),
)

# ---------------------------------------------------------------------------------------------------------
# Parameter choices per constraint type (dataset design; the checkers live in constraints.py).
# A sampler returns None when the type does not fit the task.
# ---------------------------------------------------------------------------------------------------------

_EXCLUDE_WORDS = ("very", "really", "basically", "actually", "just", "important", "things", "also", "simply")
_START_WORDS = ("Certainly", "Well", "Indeed", "Honestly", "Absolutely", "Imagine", "Today", "So")
_FIRST_WORDS = ("Firstly", "However", "Overall", "Finally", "Additionally", "Moreover", "Interestingly")
_END_PHRASES = (
    "Is there anything else I can help with?",
    "Let me know if you have additional questions.",
    "Hope this helps!",
    "Any other questions?",
    "That is all for now.",
)
_LETTERS = "bcdfgkmpvwy"

Sampler = Callable[[random.Random, BaseTask], "C.Constraint | None"]


def _nth_paragraph(rng: random.Random, task: BaseTask) -> C.Constraint:
    n = rng.choice((2, 3, 4))
    return C.NthParagraphFirstWord(n=n, nth=rng.randint(1, n), first_word=rng.choice(_FIRST_WORDS))


def _capital_words(rng: random.Random, task: BaseTask) -> C.Constraint:
    if rng.random() < 0.5:
        return C.CapitalWordFrequency(relation="at_least", n=rng.choice((2, 3, 5)))
    return C.CapitalWordFrequency(relation="less_than", n=rng.choice((2, 3, 4)))


SAMPLERS: dict[str, Sampler] = {
    "length:max_words": lambda rng, t: C.MaxWords(n=rng.choice((50, 80, 100, 150, 200, 300))),
    "length:min_words": lambda rng, t: C.MinWords(n=rng.choice((40, 80, 120, 200, 300))),
    "length:max_sentences": lambda rng, t: C.MaxSentences(n=rng.choice((3, 4, 5, 6, 8, 10))),
    "length:min_sentences": lambda rng, t: C.MinSentences(n=rng.choice((3, 5, 8, 10))),
    "length:paragraphs": lambda rng, t: C.Paragraphs(n=rng.choice((2, 3, 4, 5))),
    "length:nth_paragraph_first_word": _nth_paragraph,
    "format:divider_paragraphs": lambda rng, t: C.DividerParagraphs(n=rng.choice((2, 3, 4))),
    "format:bullets": lambda rng, t: C.Bullets(n=rng.choice((2, 3, 4, 5))),
    "format:numbered_list": lambda rng, t: C.NumberedList(n=rng.choice((3, 4, 5, 6))),
    "format:json": lambda rng, t: C.JsonFormat(),
    "format:title": lambda rng, t: C.Title(),
    "format:highlights": lambda rng, t: C.Highlights(n=rng.choice((1, 2, 3))),
    "format:sections": lambda rng, t: C.Sections(marker=rng.choice(("SECTION", "Section", "PART")),
                                                 n=rng.choice((2, 3, 4))),
    "format:placeholders": lambda rng, t: C.Placeholders(n=rng.choice((1, 2, 3))),
    "format:postscript": lambda rng, t: C.Postscript(marker=rng.choice(("P.S.", "P.P.S."))),
    "format:headings": lambda rng, t: C.Headings(n=rng.choice((1, 2, 3))),
    "format:two_responses": lambda rng, t: C.TwoResponses(),
    "case:lowercase": lambda rng, t: C.Lowercase(),
    "case:uppercase": lambda rng, t: C.Uppercase(),
    "case:capital_word_frequency": _capital_words,
    "keywords:include": lambda rng, t: C.IncludeKeyword(keyword=rng.choice(t.keywords), n=rng.choice((1, 2, 3))),
    "keywords:include_all": lambda rng, t: C.IncludeAllKeywords(keywords=tuple(rng.sample(t.keywords, 2))),
    "keywords:exclude": lambda rng, t: C.ExcludeWord(word=rng.choice(_EXCLUDE_WORDS)),
    "keywords:letter_frequency": lambda rng, t: C.LetterFrequency(letter=rng.choice(_LETTERS),
                                                                  n=rng.choice((2, 3, 4, 6))),
    "startend:start_word": lambda rng, t: C.StartWord(word=rng.choice(_START_WORDS)),
    "startend:end_phrase": lambda rng, t: C.EndPhrase(phrase=rng.choice(_END_PHRASES)),
    "startend:end_question": lambda rng, t: C.EndWithQuestion(),
    "startend:quotation": lambda rng, t: C.Quotation(),
    "startend:repeat_prompt": lambda rng, t: None if t.has_passage else C.RepeatPrompt(request=t.text),
    "punctuation:no_commas": lambda rng, t: C.NoCommas(),
    "punctuation:no_exclamation": lambda rng, t: C.NoExclamation(),
    "punctuation:question_marks": lambda rng, t: C.QuestionMarks(n=rng.choice((1, 2, 3))),
    "content:no_digits": lambda rng, t: C.NoDigits(),
}

# The focus set's families: behaviours a 135M model shows in some samples but not all (so rankings carry
# signal and RL has something to reinforce), checkable anywhere in a response.
FOCUS_SAMPLERS: dict[str, Sampler] = {
    "format:placeholders": lambda rng, t: C.Placeholders(n=rng.choice((1, 2))),
    "format:highlights": lambda rng, t: C.Highlights(n=rng.choice((1, 2))),
    "punctuation:no_commas": lambda rng, t: C.NoCommas(),
    "keywords:include": lambda rng, t: C.IncludeKeyword(keyword=rng.choice(t.keywords), n=rng.choice((1, 2))),
    "length:max_words": lambda rng, t: C.MaxWords(n=rng.choice((30, 40, 50))),
}


@dataclass(frozen=True)
class GoldSet:
    """A shipped prompt file and how it is generated."""

    path: Path
    samplers: Mapping[str, Sampler]
    n_constraint_weights: Mapping[int, float]
    per_task: int


GOLD_SETS: dict[str, GoldSet] = {
    "full": GoldSet(GOLD_PROMPTS_PATH, SAMPLERS, _N_CONSTRAINT_WEIGHTS, PROMPTS_PER_TASK),
    "focus": GoldSet(GOLD_PROMPTS_PATH.with_name("gold_prompts_focus.jsonl"), FOCUS_SAMPLERS, {1: 0.5, 2: 0.5}, 5),
}


def parse_gold_spec(spec: str) -> tuple[str, str]:
    """'gold:heldout' -> ('full', 'heldout'); 'gold:focus:train' -> ('focus', 'train'). Errors name the choices."""
    parts = spec.split(":")
    if parts[0] != "gold" or len(parts) not in (2, 3):
        raise AlignError(f"{spec!r}: expected gold:SPLIT or gold:SET:SPLIT")
    name, split = ("full", parts[1]) if len(parts) == 2 else (parts[1], parts[2])
    if name not in GOLD_SETS:
        raise AlignError(f"{spec!r}: unknown gold prompt set {name!r}; the shipped sets are {', '.join(GOLD_SETS)}")
    if split not in SPLITS:
        raise AlignError(f"{spec!r}: the gold splits are {' and '.join(SPLITS)}")
    return name, split


def gold_spec_path(spec: str) -> tuple[Path, str]:
    """The shipped file and split a gold:... spec names."""
    name, split = parse_gold_spec(spec)
    return GOLD_SETS[name].path, split


# ---------------------------------------------------------------------------------------------------------
# Records.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldPrompt:
    """One prompt of the gold set. `task_id` names the base task (the split unit)."""

    id: str
    task_id: str
    prompt: str
    constraints: tuple[C.Constraint, ...]
    split: str

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task_id": self.task_id,
            "prompt": self.prompt,
            "constraints": [c.to_dict() for c in self.constraints],
            "split": self.split,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], where: str = "gold prompt") -> GoldPrompt:
        keys = {"id", "task_id", "prompt", "constraints", "split"}
        if not isinstance(record, Mapping) or set(record) != keys:
            got = sorted(record) if isinstance(record, Mapping) else type(record).__name__
            raise AlignError(f"{where}: expected keys {sorted(keys)}, got {got}")
        for key in ("id", "task_id", "prompt"):
            if not isinstance(record[key], str) or not record[key]:
                raise AlignError(f"{where}: '{key}' must be a non-empty string")
        if record["split"] not in SPLITS:
            raise AlignError(f"{where}: 'split' must be one of {SPLITS}, got {record['split']!r}")
        if not isinstance(record["constraints"], list) or not record["constraints"]:
            raise AlignError(f"{where}: 'constraints' must be a non-empty list")
        constraints = tuple(
            C.constraint_from_dict(c, where=f"{where}, constraints[{i}]") for i, c in enumerate(record["constraints"])
        )
        return cls(record["id"], record["task_id"], record["prompt"], constraints, record["split"])


# A gold prompt given as a GoldPrompt, a JSON record, or its exact prompt text from the shipped set.
PromptLike = GoldPrompt | Mapping[str, Any] | str


def as_gold_prompt(record: PromptLike) -> GoldPrompt:
    if isinstance(record, GoldPrompt):
        return record
    if isinstance(record, str):
        return lookup_gold_prompt(record)
    return GoldPrompt.from_record(record)


# ---------------------------------------------------------------------------------------------------------
# Generation.
# ---------------------------------------------------------------------------------------------------------


def split_tasks(tasks: Sequence[BaseTask] = BASE_TASKS, seed: int = SEED) -> dict[str, str]:
    """task id -> split. Per kind (sorted), shuffle its tasks with the seed; a quarter go to heldout."""
    by_kind: dict[str, list[BaseTask]] = {}
    for task in tasks:
        by_kind.setdefault(task.kind, []).append(task)
    rng = random.Random(f"{seed}:split")
    assignment: dict[str, str] = {}
    for kind in sorted(by_kind):
        ids = sorted(t.id for t in by_kind[kind])
        rng.shuffle(ids)
        n_heldout = max(1, round(len(ids) / 4))
        for i, task_id in enumerate(ids):
            assignment[task_id] = "heldout" if i < n_heldout else "train"
    return assignment


def _sample_constraints(rng: random.Random, task: BaseTask, usage: Counter[str],
                        samplers: Mapping[str, Sampler] = SAMPLERS,
                        n_weights: Mapping[int, float] = _N_CONSTRAINT_WEIGHTS) -> tuple[C.Constraint, ...]:
    """1-3 mutually compatible constraints; rarely used types are favoured so every type is covered."""
    k = rng.choices(list(n_weights), weights=list(n_weights.values()))[0]
    chosen: list[C.Constraint] = []
    for _ in range(200):
        if len(chosen) == k:
            break
        taken = {c.type_id for c in chosen}
        candidates = [t for t in sorted(samplers) if t not in taken]
        type_id = rng.choices(candidates, weights=[1.0 / (1 + usage[t]) for t in candidates])[0]
        constraint = samplers[type_id](rng, task)
        if constraint is not None and C.compatible([*chosen, constraint]):
            chosen.append(constraint)
    return tuple(chosen)


def render_prompt(task: BaseTask, constraints: Sequence[C.Constraint]) -> str:
    return f"{task.text}\n\n{' '.join(c.describe() for c in constraints)}"


def generate_gold_prompts(
    tasks: Sequence[BaseTask] = BASE_TASKS, seed: int = SEED, per_task: int = PROMPTS_PER_TASK,
    samplers: Mapping[str, Sampler] = SAMPLERS, n_constraint_weights: Mapping[int, float] = _N_CONSTRAINT_WEIGHTS,
) -> list[GoldPrompt]:
    """Deterministic: same tasks, seed and per_task give the same list (string-seeded `random.Random`)."""
    if len({t.id for t in tasks}) != len(tasks):
        raise AlignError("base task ids must be unique")
    splits = split_tasks(tasks, seed)
    usage: Counter[str] = Counter()
    prompts: list[GoldPrompt] = []
    for task in sorted(tasks, key=lambda t: t.id):
        rng = random.Random(f"{seed}:{task.id}")
        seen: set[str] = set()
        while len(seen) < per_task:
            constraints = _sample_constraints(rng, task, usage, samplers, n_constraint_weights)
            key = json.dumps(sorted(json.dumps(c.to_dict(), sort_keys=True) for c in constraints))
            if key in seen:
                continue
            seen.add(key)
            usage.update(c.type_id for c in constraints)
            prompts.append(
                GoldPrompt(
                    id=f"{task.id}-{len(seen) - 1}",
                    task_id=task.id,
                    prompt=render_prompt(task, constraints),
                    constraints=constraints,
                    split=splits[task.id],
                )
            )
    return prompts


def dumps_jsonl(prompts: Sequence[GoldPrompt]) -> str:
    return "".join(json.dumps(p.to_record(), ensure_ascii=False) + "\n" for p in prompts)


def read_gold_prompts(path: str | Path) -> list[GoldPrompt]:
    path = Path(path)
    if not path.is_file():
        raise AlignError(f"gold prompt file not found: {path}")
    return [GoldPrompt.from_record(record, where=f"{path}:{lineno}") for lineno, record in iter_jsonl(path)]


@lru_cache(maxsize=4)
def _load_cached(path: str) -> tuple[GoldPrompt, ...]:
    return tuple(read_gold_prompts(path))


def generate_gold_set(name: str) -> list[GoldPrompt]:
    """The prompts of a shipped set, regenerated (what its file must hold)."""
    spec = GOLD_SETS[name]
    return generate_gold_prompts(per_task=spec.per_task, samplers=spec.samplers,
                                 n_constraint_weights=spec.n_constraint_weights)


def load_gold_prompts(split: str = "train", path: str | Path | None = None) -> list[GoldPrompt]:
    """Prompts of one split ("train", "heldout" or "all") from the shipped full set (or `path`)."""
    if split not in (*SPLITS, "all"):
        raise AlignError(f"unknown gold split {split!r}; expected one of {(*SPLITS, 'all')}")
    prompts = _load_cached(str(Path(path) if path is not None else GOLD_PROMPTS_PATH))
    return [p for p in prompts if split == "all" or p.split == split]


def check_prompt_set(spec: str) -> None:
    """Reject a prompt set that cannot load (a bad gold: spec, a missing file) without reading it all."""
    if spec.startswith("gold:"):
        gold_spec_path(spec)
    elif not Path(spec).is_file():
        raise AlignError(f"gold prompt file not found: {spec}; expected a JSONL of gold prompt records or a "
                         "gold:SPLIT / gold:SET:SPLIT spec (e.g. gold:heldout, gold:focus:heldout)")


def load_prompt_set(spec: str, num: int | None = None, key: str = "prompts") -> list[GoldPrompt]:
    """The first `num` prompts (None = all) of `spec`: a shipped set's split (gold:heldout, gold:focus:train...)
    or a JSONL of gold prompt records. A bad gold: spec is an error naming the recipe `key`."""
    if spec.startswith("gold:"):
        try:
            path, split = gold_spec_path(spec)
        except AlignError as err:
            raise AlignError(f"{key}: {err}") from None
        prompts = load_gold_prompts(split, path)
    else:
        prompts = read_gold_prompts(spec)
    return prompts[:num] if num else prompts


@lru_cache(maxsize=1)
def _prompt_index() -> dict[str, GoldPrompt]:
    """Prompt text -> record over every shipped set (a text in two sets has the same constraints in both)."""
    return {p.prompt: p for spec in GOLD_SETS.values() for p in _load_cached(str(spec.path))}


def lookup_gold_prompt(prompt: str) -> GoldPrompt:
    """The shipped record whose prompt text is exactly `prompt` (outer whitespace ignored)."""
    if not isinstance(prompt, str):
        raise AlignError(f"prompt must be a string, got {type(prompt).__name__}")
    index = _prompt_index()
    found = index.get(prompt) or index.get(prompt.strip())
    if found is None:
        preview = prompt[:80] + ("..." if len(prompt) > 80 else "")
        raise AlignError(
            f"prompt is not in the gold prompt sets ({', '.join(g.path.name for g in GOLD_SETS.values())}): "
            f"{preview!r}. The gold reward "
            "only scores prompts from that set, matched by exact text: pass the prompt unchanged (no chat "
            "template, no added instructions)."
        )
    return found


# ---------------------------------------------------------------------------------------------------------
# Scoring.
# ---------------------------------------------------------------------------------------------------------


def constraint_results(record: PromptLike, response: str) -> list[bool]:
    """Pass/fail of each constraint of the prompt, in order."""
    return [c.check(response) for c in as_gold_prompt(record).constraints]


def gold_score(record: PromptLike, response: str) -> float:
    """Fraction of the prompt's constraints the response satisfies, in [0, 1]."""
    results = constraint_results(record, response)
    return sum(results) / len(results)


def strict_accuracy(record: PromptLike, response: str) -> float:
    """1.0 when every constraint is satisfied (IFEval's prompt-level strict accuracy), else 0.0."""
    return float(all(constraint_results(record, response)))


def score_batch(records: Sequence[PromptLike], responses: Sequence[str]) -> dict[str, Any]:
    """Aggregate gold metrics over aligned (prompt, response) lists.

    Returns {"n_prompts", "gold_score" (mean fraction satisfied), "strict_accuracy" (prompt-level),
    "instruction_accuracy" (constraint-level, micro-averaged), "pass_rate": {type_id: rate}}.
    """
    if len(records) != len(responses):
        raise AlignError(f"score_batch: {len(records)} prompts but {len(responses)} responses")
    if not records:
        raise AlignError("score_batch: no prompts given")
    passed: Counter[str] = Counter()
    total: Counter[str] = Counter()
    scores, stricts = [], []
    for record, response in zip(records, responses, strict=True):
        prompt = as_gold_prompt(record)
        results = constraint_results(prompt, response)
        scores.append(sum(results) / len(results))
        stricts.append(float(all(results)))
        for constraint, ok in zip(prompt.constraints, results, strict=True):
            total[constraint.type_id] += 1
            passed[constraint.type_id] += ok
    return {
        "n_prompts": len(records),
        "gold_score": sum(scores) / len(scores),
        "strict_accuracy": sum(stricts) / len(stricts),
        "instruction_accuracy": sum(passed.values()) / sum(total.values()),
        "pass_rate": {t: passed[t] / total[t] for t in sorted(total)},
    }


# ---------------------------------------------------------------------------------------------------------
# Entry point: python -m align.eval.gold --write | --check
# ---------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m align.eval.gold", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="regenerate the prompt file")
    action.add_argument("--check", action="store_true", help="exit 1 if the file differs from regeneration")
    parser.add_argument("--path", type=Path, default=None,
                        help="prompt file of --set (default: the shipped file of each set)")
    parser.add_argument("--set", choices=list(GOLD_SETS), default=None, help="one set (default: all)")
    args = parser.parse_args(argv)
    names = [args.set] if args.set else (["full"] if args.path else list(GOLD_SETS))
    for name in names:
        prompts = generate_gold_set(name)
        path = args.path or GOLD_SETS[name].path
        text = dumps_jsonl(prompts)
        if args.write:
            path.write_text(text, encoding="utf-8")
        elif args.check:
            current = path.read_text(encoding="utf-8") if path.is_file() else None
            if current != text:
                print(f"{path} is stale; run: python -m align.eval.gold --write", file=sys.stderr)
                return 1
        counts = Counter(p.split for p in prompts)
        types = Counter(c.type_id for p in prompts for c in p.constraints)
        print(f"{name}: {len(prompts)} prompts ({dict(counts)}), {len(types)} constraint types, "
              f"{len(BASE_TASKS)} base tasks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
