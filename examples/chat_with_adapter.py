"""Chat with a PPO or DPO adapter using only transformers and peft (no align needed).

    python examples/chat_with_adapter.py                            # runs/quickstart/ppo/model, interactive
    python examples/chat_with_adapter.py runs/dpo/dpo/model --prompt "Write a haiku about rain."

MODEL is an adapter folder (a stage's model/), a Hub repo pushed with `align push`, or a merged folder
from `align export --merge`. The adapter's base is read from its adapter_config.json.
"""

from __future__ import annotations

import argparse

import torch
from peft import PeftConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer


def load(model_ref: str):
    """(model, tokenizer): an adapter on its base, or a full model."""
    tokenizer = AutoTokenizer.from_pretrained(model_ref)
    try:
        base = PeftConfig.from_pretrained(model_ref).base_model_name_or_path
    except ValueError:  # no adapter_config.json: a full (or merged) model
        return AutoModelForCausalLM.from_pretrained(model_ref, dtype=torch.float32).eval(), tokenizer
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, model_ref).eval(), tokenizer


def reply(model, tokenizer, history: list[dict], max_new_tokens: int, temperature: float) -> str:
    inputs = tokenizer.apply_chat_template(history, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                **sampling)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _read(prompt: str) -> str:
    try:
        return input(prompt).strip()
    except EOFError:
        return ""


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="runs/quickstart/ppo/model")
    parser.add_argument("--prompt", action="append", help="Answer these (one conversation each) and exit.")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy.")
    args = parser.parse_args(argv)
    model, tokenizer = load(args.model)

    if args.prompt:
        answers = [reply(model, tokenizer, [{"role": "user", "content": p}], args.max_new_tokens, args.temperature)
                   for p in args.prompt]
        for answer in answers:
            print(answer)
        return answers
    history: list[dict] = []
    while (line := _read("you> ")):  # an empty line or Ctrl-D ends the chat
        history.append({"role": "user", "content": line})
        history.append({"role": "assistant", "content": reply(model, tokenizer, history, args.max_new_tokens,
                                                              args.temperature)})
        print("model>", history[-1]["content"])
    return [m["content"] for m in history if m["role"] == "assistant"]


if __name__ == "__main__":
    main()
