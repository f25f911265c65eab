"""A custom judge for the rank stage: a function fn(prompt, response) -> float; higher ranks first, equal
scores tie (a ranking whose responses all tie teaches the reward model nothing and is not used).

    rank:
      judge: {type: gold, function: "examples/custom_judge.py:on_topic"}

    python examples/custom_judge.py                                 # recipes/quickstart.yaml with this judge
    python examples/custom_judge.py recipes/reward-tiny.yaml --out runs/custom-judge rank.k=4

For a judge that is a model, use judge: {type: llm, teacher: ...} (any OpenAI-compatible endpoint or a
local model); for people, judge: {type: human} and `align label`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

STOP = frozenset(["a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "how", "in", "is", "it", "of", "on",
                 "or", "that", "the", "this", "to", "what", "with", "write"])


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if w not in STOP and len(w) > 2}


def on_topic(prompt: str, response: str) -> float:
    """The share of the prompt's content words the response uses, rounded so near-equal answers tie."""
    asked = content_words(prompt)
    if not asked:
        return 0.0
    return round(len(asked & content_words(response)) / len(asked), 1)


SPEC = f"{Path(__file__).resolve()}:on_topic"


def main(argv: list[str] | None = None) -> list:
    from align.runner import run_recipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="recipes/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="More dotted overrides, e.g. rank.k=4")
    parser.add_argument("--out", help="Run directory (default runs/<recipe name>).")
    args = parser.parse_intermixed_args(argv)
    records = run_recipe(args.recipe, args.out, [f"rank.judge={{type: gold, function: '{SPEC}'}}", *args.overrides])
    for record in records:
        print(record.name, record.status, record.outputs)
    return records


if __name__ == "__main__":
    main()
