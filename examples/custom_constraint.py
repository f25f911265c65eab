"""A custom verifiable constraint for the gold reward: check a response's text, no model involved.

A constraint says what it asks (`describe`, appended to the prompt) and checks it (`_check` on the
normalised response). This file registers one, writes a prompt set that uses it next to shipped
constraints, and provides `gold`, a fn(prompt, response) -> float to name in a recipe:

    rank:
      prompts: my_gold_prompts.jsonl
      judge: {type: gold, function: "examples/custom_constraint.py:gold"}
    ppo:
      prompts: my_gold_prompts.jsonl
      reward: examples/custom_constraint.py:gold            # RLVR: the checker is the reward

    python examples/custom_constraint.py --out my_gold_prompts.jsonl

`gold` reads the prompt set named by the environment variable GOLD_PROMPTS (default
./my_gold_prompts.jsonl): set it when the run starts elsewhere.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from align.eval import constraints as C
from align.eval import gold as G

TYPE_ID = "custom:sign_off"
PROMPTS = Path(os.environ.get("GOLD_PROMPTS", "my_gold_prompts.jsonl"))  # where `gold` reads the prompt set

C.CONSTRAINT_TYPES.pop(TYPE_ID, None)  # importing this file twice (e.g. as a script and by path) re-registers


@C.register(TYPE_ID, slots=["end"])  # slot "end": never combined with another constraint on the ending
@dataclass(frozen=True)
class SignOff(C.Constraint):
    name: str

    def describe(self) -> str:
        return f"End your answer with a line that says exactly: -- {self.name}"

    def _check(self, text: str) -> bool:
        return text.splitlines()[-1].strip() == f"-- {self.name}"


def write_prompts(path: Path, per_task: int = 2) -> list[G.GoldPrompt]:
    """Shipped base tasks, each with the sign-off and one shipped constraint that fits with it."""
    prompts = []
    for task in G.BASE_TASKS:
        for i, other in enumerate((C.MaxWords(n=120), C.NoCommas())[:per_task]):
            constraints = (other, SignOff(name="Ada"))
            if not C.compatible(constraints):
                continue
            prompts.append(G.GoldPrompt(id=f"{task.id}-sign-{i}", task_id=task.id, split=G.split_tasks()[task.id],
                                        prompt=G.render_prompt(task, constraints), constraints=constraints))
    path.write_text(G.dumps_jsonl(prompts))
    return prompts


@lru_cache(maxsize=4)
def _index(path: str) -> dict[str, G.GoldPrompt]:
    return {p.prompt: p for p in G.read_gold_prompts(path)}


def gold(prompt: str, response: str) -> float:
    """Fraction of the prompt's constraints met (0 for a prompt that is not in the set)."""
    record = _index(str(PROMPTS.resolve())).get(prompt.strip())
    return G.gold_score(record, response) if record else 0.0


def main(argv: list[str] | None = None) -> list[float]:
    global PROMPTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(PROMPTS), help="Prompt set to write (JSONL).")
    args = parser.parse_args(argv)
    PROMPTS = Path(args.out)
    prompts = write_prompts(PROMPTS)
    print(f"wrote {len(prompts)} prompts to {PROMPTS}; e.g.\n{prompts[0].prompt}\n")
    answers = ["Sleep well and drink water.\n-- Ada", "Sleep well, drink water, walk.", "Sleep well.\n-- Bob"]
    scores = [gold(prompts[1].prompt, a) for a in answers]
    for answer, value in zip(answers, scores):
        print(f"{value:.2f}  {answer!r}")
    return scores


if __name__ == "__main__":
    main()
