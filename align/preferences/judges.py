"""Judges: put K responses to a prompt in order, best first (the `rank` stage's labeler).

Every judge has ``rank(prompts, responses) -> [ranking per prompt]`` where a ranking is a list of
tie groups of response indices, best first (see `align.preferences.rankings`). Three kinds:

- ``gold``: a Python function ``fn(prompt: str, response: str) -> float`` named ``module:function``
  (or ``path/to/file.py:function``); equal scores form a tie group.
- ``llm``: a teacher model asked "Which response is better, A or B?" (answering "Verdict: A|B|tie")
  for every pair in BOTH orders (a pair's preference is the average, so a judge that always answers
  "A" yields a tie), with
  pairs aggregated by wins minus losses (Copeland); or listwise, asked for a full order with the
  responses shown forward and reversed (positions averaged, Borda).
- ``human``: no ranking here; the stage writes labeling tasks and stops (see `align.stages.rank`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from align.callables import load_callable
from align.errors import AlignError
from align.preferences.rankings import Ranking
from align.teachers import TeacherConfig

GoldFn = Callable[[str, str], float]


class Judge(Protocol):
    """Anything that ranks the responses of a batch of prompts."""

    def rank(self, prompts: list[str], responses: list[list[str]]) -> list[Ranking]: ...


# --------------------------------------------------------------------------- settings


class GoldJudgeConfig(BaseModel):
    """Rank by a programmatic gold reward."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["gold"] = "gold"
    function: str = Field(description="module:function or path/to/file.py:function; fn(prompt, response) -> float.")

    @field_validator("function")
    @classmethod
    def _has_colon(cls, value: str) -> str:
        if ":" not in value or not value.rsplit(":", 1)[1].isidentifier():
            raise ValueError(f"expected 'module:function' or 'path/file.py:function', got {value!r}")
        return value


class LLMJudgeConfig(BaseModel):
    """Rank with a teacher model (local HF model or an OpenAI-compatible endpoint)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["llm"] = "llm"
    teacher: TeacherConfig = Field(description="The judging model: a model reference (local) or {type: openai, "
                                   "model, base_url, api_key_env}.")
    mode: Literal["pairwise", "listwise"] = Field(
        "pairwise", description="pairwise: A/B per pair, both orders, Copeland; listwise: full order, forward + reversed.")
    max_tokens: int = Field(16, gt=0, description="Tokens the judge may write per answer.")
    temperature: float = Field(0.0, ge=0, description="Judge sampling temperature (0 = greedy).")


class HumanJudgeConfig(BaseModel):
    """Write labeling tasks (prompt + responses) for people and stop."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["human"] = "human"


JudgeConfig = Annotated[GoldJudgeConfig | LLMJudgeConfig | HumanJudgeConfig, Field(discriminator="type")]


# --------------------------------------------------------------------------- scores → ranking


def ranking_from_scores(scores: Sequence[float]) -> Ranking:
    """Indices sorted by score, highest first; equal scores share a tie group (index order inside)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    groups: Ranking = []
    for i in order:
        if groups and scores[groups[-1][0]] == scores[i]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


# --------------------------------------------------------------------------- gold


def load_gold_function(spec: str) -> GoldFn:
    """Import ``module:function`` or ``path/to/file.py:function``; AlignError saying what went wrong."""
    return load_callable(spec, "gold function")


class GoldJudge:
    """Scores each response with fn(prompt, response); higher is better."""

    def __init__(self, fn: GoldFn, name: str = "gold"):
        self.fn, self.name = fn, name
        self.last_scores: list[list[float]] = []

    def scores(self, prompt: str, responses: list[str]) -> list[float]:
        out = []
        for response in responses:
            try:
                value = float(self.fn(prompt, response))
            except Exception as exc:
                raise AlignError(f"gold function {self.name} failed on prompt {prompt[:60]!r}: "
                                 f"{type(exc).__name__}: {exc}") from exc
            if math.isnan(value):
                raise AlignError(f"gold function {self.name} returned NaN for prompt {prompt[:60]!r}")
            out.append(value)
        return out

    def rank(self, prompts: list[str], responses: list[list[str]]) -> list[Ranking]:
        self.last_scores = [self.scores(p, rs) for p, rs in zip(prompts, responses)]
        return [ranking_from_scores(s) for s in self.last_scores]


# --------------------------------------------------------------------------- LLM judge

PAIRWISE_SYSTEM = "You are a careful, impartial judge of answers to instructions."
PAIRWISE_TEMPLATE = """Compare two responses to the same instruction. Judge helpfulness, correctness and clarity; ignore the order in which they are shown and their length.

[Instruction]
{prompt}

[Response A]
{a}

[Response B]
{b}

Which response is better, A or B? Reply with one final line that is exactly "Verdict: A", "Verdict: B" or "Verdict: tie"."""

LISTWISE_TEMPLATE = """Rank {k} responses to the same instruction from best to worst. Judge helpfulness, correctness and clarity; ignore the order in which they are shown and their length.

[Instruction]
{prompt}

{listing}

Answer with the response numbers from best to worst separated by '>', for example: {example}"""

# The format the prompt asks for: a line "Verdict: A|B|tie" (the last one counts).
_VERDICT = re.compile(r"\bverdict\W{0,3}\s*(?:is\s+)?(?:response\s+)?\**\s*\b(A|B|tie)\b", re.IGNORECASE)
# Answers in free text: phrases that state a choice ("the better answer is B", "I prefer A", "B is better").
_STATED = [
    re.compile(r"\b(?i:answer|choice|winner|pick|choose|prefer|preference|better (?:one|response))\b"
               r"\W{0,3}\s*(?i:is\s+|would be\s+)?(?i:response\s+)?\**\s*\b([AB])\b"),
    re.compile(r"\b(?i:response\s+)?([AB])\b\s+(?i:is\s+(?:clearly\s+|slightly\s+)?(?:the\s+)?"
               r"(?:better|best|superior|preferred|preferable))\b"),
]
_LETTER = re.compile(r"\b([AB])\b")


def parse_choice(text: str) -> str | None:
    """'A', 'B' or 'tie' from a judge's answer; None when it states no verdict.

    The prompt asks for a final line "Verdict: A|B|tie", and the last such line counts. Without one,
    the LAST phrase stating a choice counts ("A better answer is B" is B, not the article A); failing
    that, a lone letter ("B", "Response B."), and an answer naming both letters without a verdict is
    unparsed rather than guessed.
    """
    verdicts = _VERDICT.findall(text)
    if verdicts:
        last = verdicts[-1]
        return "tie" if last.lower() == "tie" else last.upper()
    stated = [(m.start(1), m.group(1)) for pattern in _STATED for m in pattern.finditer(text)]
    if stated:
        return max(stated)[1]
    letters = set(_LETTER.findall(text))
    return letters.pop() if len(letters) == 1 else None


def parse_order(text: str, k: int) -> list[int]:
    """'2 > 1 > 3' → [1, 0, 2] (0-based); unknown or repeated numbers are dropped."""
    order: list[int] = []
    for number in re.findall(r"\d+", text):
        i = int(number) - 1
        if 0 <= i < k and i not in order:
            order.append(i)
    return order


class LLMJudge:
    """A judge built on any teacher with ``chat(conversations, *, max_tokens, temperature) -> [str]``."""

    def __init__(self, teacher: Any, mode: str = "pairwise", max_tokens: int = 16, temperature: float = 0.0):
        if not callable(getattr(teacher, "chat", None)):
            raise AlignError(f"llm judge: the teacher ({type(teacher).__name__}) has no chat() method")
        self.teacher, self.mode, self.max_tokens, self.temperature = teacher, mode, max_tokens, temperature
        self.calls = 0  # conversations sent to the teacher
        self.unparsed = 0  # answers that named no response

    def _ask(self, conversations: list[list[dict]]) -> list[str]:
        self.calls += len(conversations)
        answers = self.teacher.chat(conversations, max_tokens=self.max_tokens, temperature=self.temperature)
        if len(answers) != len(conversations):
            raise AlignError(f"llm judge: teacher returned {len(answers)} answers for {len(conversations)} questions")
        return answers

    def rank(self, prompts: list[str], responses: list[list[str]]) -> list[Ranking]:
        if self.mode == "listwise":
            return self._rank_listwise(prompts, responses)
        return self._rank_pairwise(prompts, responses)

    # pairwise: every unordered pair asked as (A=i, B=j) and (A=j, B=i)
    def _rank_pairwise(self, prompts: list[str], responses: list[list[str]]) -> list[Ranking]:
        questions, keys = [], []
        for p, (prompt, rs) in enumerate(zip(prompts, responses)):
            for i in range(len(rs)):
                for j in range(len(rs)):
                    if i != j:  # both orders of each pair
                        questions.append(pairwise_question(prompt, rs[i], rs[j]))
                        keys.append((p, i, j))
        answers = self._ask(questions) if questions else []
        # wins[p][i][j]: how often i was preferred over j, over the two orders (0, 0.5 per unparsed, ..., 2)
        wins = [[[0.0] * len(rs) for _ in rs] for rs in responses]
        for (p, a, b), answer in zip(keys, answers):
            choice = parse_choice(answer)
            if choice in (None, "tie"):
                self.unparsed += choice is None
                wins[p][a][b] += 0.5
                wins[p][b][a] += 0.5
            else:
                winner, loser = (a, b) if choice == "A" else (b, a)
                wins[p][winner][loser] += 1.0
        return [copeland(w) for w in wins]

    # listwise: the full list shown forward and reversed, positions averaged
    def _rank_listwise(self, prompts: list[str], responses: list[list[str]]) -> list[Ranking]:
        questions, shown = [], []
        for prompt, rs in zip(prompts, responses):
            k = len(rs)
            for order in (list(range(k)), list(reversed(range(k)))):
                listing = "\n\n".join(f"[Response {n + 1}]\n{rs[i]}" for n, i in enumerate(order))
                example = " > ".join(str(n) for n in [2, 1, *range(3, k + 1)][:k])
                text = LISTWISE_TEMPLATE.format(k=k, prompt=prompt, listing=listing, example=example)
                questions.append([{"role": "user", "content": text}])
                shown.append(order)
        answers = self._ask(questions) if questions else []
        rankings = []
        for p, rs in enumerate(responses):
            k, points = len(rs), [0.0] * len(rs)
            for q in (2 * p, 2 * p + 1):
                positions = parse_order(answers[q], k)
                if len(positions) < k:
                    self.unparsed += 1
                for i, points_i in borda(positions, k).items():
                    points[shown[q][i]] += points_i
            rankings.append(ranking_from_scores(points))
        return rankings


def pairwise_question(prompt: str, first: str, second: str) -> list[dict]:
    """The A/B question as a conversation: `first` is shown as Response A."""
    return [{"role": "system", "content": PAIRWISE_SYSTEM},
            {"role": "user", "content": PAIRWISE_TEMPLATE.format(prompt=prompt, a=first, b=second)}]


def pairwise_judge_fn(teacher: Any, max_tokens: int = 16, temperature: float = 0.0) -> Callable[[str, str, str], str]:
    """judge_fn(prompt, first, second) -> "first" | "second" | "tie" (no verdict), for any teacher with chat().

    One presentation order per call: callers that compare two responses ask both orders
    (align.eval.winrate.judge_pairwise does), as `LLMJudge` does for rankings.
    """
    if not callable(getattr(teacher, "chat", None)):
        raise AlignError(f"llm judge: the teacher ({type(teacher).__name__}) has no chat() method")

    def judge_fn(prompt: str, first: str, second: str) -> str:
        answer = teacher.chat([pairwise_question(prompt, first, second)], max_tokens=max_tokens,
                              temperature=temperature)[0]
        return {"A": "first", "B": "second"}.get(parse_choice(answer), "tie")

    return judge_fn


def copeland(wins: list[list[float]]) -> Ranking:
    """Pairwise preference counts → ranking by (pairs won − pairs lost); a 50/50 pair counts for neither.

    wins: [K][K], wins[i][j] = times i was preferred over j (over both presentation orders).
    """
    k = len(wins)
    score = [sum((wins[i][j] > wins[j][i]) - (wins[i][j] < wins[j][i]) for j in range(k) if j != i) for i in range(k)]
    return ranking_from_scores(score)


def borda(order: list[int], k: int) -> dict[int, float]:
    """Borda points (k−1 for first, …, 0 for last) of shown positions; unnamed positions share the rest equally."""
    points = {i: float(k - 1 - rank) for rank, i in enumerate(order)}
    rest = [i for i in range(k) if i not in points]
    if rest:
        left = [float(k - 1 - rank) for rank in range(len(order), k)]
        share = sum(left) / len(rest)
        points.update({i: share for i in rest})
    return points


def make_judge(cfg: GoldJudgeConfig | LLMJudgeConfig) -> Judge:
    """A ready judge from its settings."""
    if isinstance(cfg, GoldJudgeConfig):
        return GoldJudge(load_gold_function(cfg.function), cfg.function)
    from align.teachers import make_teacher

    teacher = make_teacher(cfg.teacher)
    return LLMJudge(teacher, cfg.mode, cfg.max_tokens, cfg.temperature)


# --------------------------------------------------------------------------- example gold functions


def gold_target_length(prompt: str, response: str, target: int = 12) -> float:
    """Toy gold reward: prefer answers of about `target` words (−|words − target|). Used by reward-tiny."""
    return -abs(len(response.split()) - target)


def gold_clean_text(prompt: str, response: str) -> float:
    """Toy gold reward: the share of a response's characters that are printable ASCII (1.0 = clean text).

    A tiny model's samples mix words with byte garbage; this is a per-token property a small reward
    model can learn, which makes it a good smoke test of the whole rank → reward path.
    """
    if not response:
        return 0.0
    return round(sum(32 <= ord(c) < 127 or c == "\n" for c in response) / len(response), 4)
