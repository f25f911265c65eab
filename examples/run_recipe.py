"""Run a recipe from Python and see what each stage produced.

    python examples/run_recipe.py                                   # recipes/quickstart.yaml -> runs/quickstart
    python examples/run_recipe.py recipes/sft-tiny.yaml --out runs/demo sft.train.max_steps=5

`run_recipe` is what `align run` calls: stages already finished with the same settings are skipped, so
running this twice continues where the first run stopped. Every model folder it writes holds a README.md
model card saying how to load it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from align.runner import run_recipe

SHOWN = ("last_loss", "heldout_accuracy", "heldout_reward_accuracy", "last_score", "final_kl", "gold_score")


def main(argv: list[str] | None = None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="recipes/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="Dotted overrides, e.g. sft.train.lr=1e-4")
    parser.add_argument("--out", help="Run directory (default runs/<recipe name>).")
    args = parser.parse_intermixed_args(argv)

    records = run_recipe(args.recipe, args.out, args.overrides)
    for record in records:
        numbers = ", ".join(f"{k}={record.metrics[k]:.4g}" for k in SHOWN
                            if isinstance(record.metrics.get(k), (int, float)))
        print(f"{record.name:14} {record.status:8} {numbers}")
        model = record.outputs.get("model")
        if model and (Path(model) / "README.md").exists():
            print(f"{'':14} model: {model} (see its README.md)")
    return records


if __name__ == "__main__":
    main()
