"""Score responses with a saved reward model using only transformers and peft (no align needed).

    python examples/score_with_reward_model.py --prompt "Name a colour." --response "Blue." --response "Dog."
    python examples/score_with_reward_model.py runs/ppo-tiny/reward/model --file pairs.jsonl  # {prompt, response}

A reward stage's model/ holds the adapter (score head included) or a full checkpoint, plus two small
files read here: align_reward.json (base, text format, max length) and reward_normalization.json (the
mean raw score of the SFT samples, subtracted so they score 0 on average, as InstructGPT does).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def load(folder: str):
    """(model, tokenizer, settings) for a reward model folder."""
    path = Path(folder)
    meta = json.loads((path / "align_reward.json").read_text())
    norm = json.loads((path / "reward_normalization.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if meta.get("adapter"):
        model = AutoModelForSequenceClassification.from_pretrained(meta["base"], num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        model = PeftModel.from_pretrained(model, folder)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
    settings = {"format": meta.get("format", "chat"), "max_length": meta.get("max_length", 512),
                "mean": norm.get("mean", 0.0)}
    return model.eval(), tokenizer, settings


def score(model, tokenizer, settings: dict, prompt: str, response: str) -> float:
    """The reward of one response: read at the conversation's last token, minus the SFT mean."""
    if settings["format"] == "pair":  # encoder reward models: "[CLS] prompt [SEP] response [SEP]"
        inputs = tokenizer(prompt, response, truncation="longest_first", max_length=settings["max_length"],
                           return_tensors="pt")
    else:  # causal bases: the conversation through the chat template, over-long ones keep their end
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        inputs = tokenizer(text, add_special_tokens=False, truncation=True, max_length=settings["max_length"],
                           return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits[0, 0].item() - settings["mean"]


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="runs/quickstart/reward/model")
    parser.add_argument("--prompt", help="The user prompt (with --response).")
    parser.add_argument("--response", action="append", default=[], help="Repeat to score several responses.")
    parser.add_argument("--file", help="JSONL of {prompt, response} records instead.")
    args = parser.parse_args(argv)
    if args.file:
        rows = [json.loads(line) for line in Path(args.file).read_text().splitlines() if line.strip()]
        pairs = [(r["prompt"], r["response"]) for r in rows]
    else:
        if not args.prompt or not args.response:
            parser.error("give --prompt and --response, or --file")
        pairs = [(args.prompt, r) for r in args.response]
    model, tokenizer, settings = load(args.model)
    scores = [score(model, tokenizer, settings, p, r) for p, r in pairs]
    for (_, response), value in zip(pairs, scores):
        print(f"{value:+.4f}\t{response}")
    return scores


if __name__ == "__main__":
    main()
