"""A custom reward for PPO: any Python function fn(prompt, response) -> float.

Name it in a recipe instead of a reward model (the file is imported by path, or use `my_package.rewards:fn`):

    ppo:
      reward: examples/custom_reward.py:concise_answer
      # or a reward model plus this function:  reward: {source: "@reward", functions: [{function: ..., weight: 0.5}]}

    python examples/custom_reward.py                                # recipes/quickstart.yaml with this reward
    python examples/custom_reward.py recipes/ppo-tiny.yaml --out runs/custom-reward ppo.train.steps=5

prompt is the last user message of the query, response the sampled answer. Scores should be on a scale
of about 1 (they are added to a per-token KL penalty of size init_kl_coef).
"""

from __future__ import annotations

import argparse
from pathlib import Path

TARGET_WORDS = 20


def concise_answer(prompt: str, response: str) -> float:
    """Prefer complete answers of about TARGET_WORDS words: in [-1, 1]."""
    words = response.split()
    length = 1.0 - min(abs(len(words) - TARGET_WORDS) / TARGET_WORDS, 1.0)  # 1 at the target, 0 far from it
    finished = 1.0 if response.rstrip().endswith((".", "!", "?")) else 0.0
    return length + finished - 1.0


SPEC = f"{Path(__file__).resolve()}:concise_answer"  # what the recipe names: this file and function


def main(argv: list[str] | None = None) -> list:
    from align.runner import run_recipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="recipes/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="More dotted overrides, e.g. ppo.train.steps=5")
    parser.add_argument("--out", help="Run directory (default runs/<recipe name>).")
    args = parser.parse_intermixed_args(argv)
    records = run_recipe(args.recipe, args.out, [f"ppo.reward='{SPEC}'", *args.overrides])
    for record in records:
        print(record.name, record.status, {k: record.metrics.get(k) for k in ("first_score", "last_score")
                                           if k in record.metrics})
    return records


if __name__ == "__main__":
    main()
