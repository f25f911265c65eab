"""Self-Instruct (or Alpaca) data from any OpenAI-compatible endpoint: vLLM, llama.cpp, `align serve`, OpenAI.

    vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000       # or: align serve smollm2-135m-instruct --port 8000
    python examples/self_instruct_openai.py --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct
    OPENAI_API_KEY=... python examples/self_instruct_openai.py --base-url https://api.openai.com/v1 \
        --model gpt-4o-mini --api-key-env OPENAI_API_KEY

The key is read from the environment variable NAMED by --api-key-env and is never written to disk.
Re-running the same command resumes; the output folder's alpaca.json is SFT data (`sft.data`).
"""

from __future__ import annotations

import argparse

from align.stages.self_instruct import run_standalone


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="default", help="The model name the endpoint serves.")
    parser.add_argument("--api-key-env", help="NAME of the environment variable holding the API key.")
    parser.add_argument("--method", choices=("self_instruct", "alpaca"), default="alpaca")
    parser.add_argument("--num-instructions", type=int, default=50)
    parser.add_argument("--out", default="runs/self-instruct-openai")
    args = parser.parse_args(argv)

    settings = {
        "teacher": {"type": "openai", "base_url": args.base_url, "model": args.model, "api_key_env": args.api_key_env},
        "method": args.method,
        "num_instructions": args.num_instructions,
        "formats": ["alpaca", "chat"],
    }
    result = run_standalone(settings, args.out)
    print(f"kept {result.metrics['kept']} of {args.num_instructions} tasks; SFT data: {result.outputs.get('data')}")
    return result


if __name__ == "__main__":
    main()
