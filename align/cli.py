"""The `align` command line. Each sub-command is a thin shell over a library function."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from align.errors import AlignError

HEADLINE_METRICS = (
    "last_loss", "eval_loss", "tokens_per_second", "kept", "rankings", "informative", "all_tied",
    "heldout_accuracy", "accuracy", "heldout_reward_accuracy", "heldout_reward_margin", "objective/scores",
    "objective/kl", "gold_score", "strict_accuracy", "win_rate",
)

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_").replace("_", "-")] = fn
    return fn


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _interval(metrics: dict, key: str) -> str:
    """' [0.52, 0.71] (95% CI, 58 pairs)' after a reward model's held-out accuracy, '' for other metrics."""
    ci = metrics.get(f"{key}_ci")
    if key != "heldout_accuracy" or not isinstance(ci, list) or len(ci) != 2:
        return ""
    return f" [{ci[0]:.3f}, {ci[1]:.3f}] (95% CI, {metrics.get('heldout_pairs', '?')} pairs)"


def _policy_line(name: str, m: dict) -> str:
    keys = (("gold_score", "gold"), ("compliance", "compliance"), ("strict_accuracy", "strict"),
            ("degenerate_share", "degenerate"), ("on_topic_cosine", "on-topic"), ("ifeval_prompt_strict", "ifeval"),
            ("reward_score", "rm"), ("kl", "kl"))
    parts = [f"{short}={_fmt(m[k])}" for k, short in keys if isinstance(m.get(k), (int, float))]
    if isinstance(m.get("gold_gain"), dict):
        from align.eval.bootstrap import format_gain

        parts.append(f"gold gain {format_gain(m['gold_gain'])} (95% CI, n={m['gold_gain']['n']})")
    return f"{name}: " + " ".join(parts)


def _fixed_line(text: str, m: dict) -> str:
    """The trivial-answer row: one string answered to every prompt."""
    return f"fixed {text!r}: gold={_fmt(m['gold_score'])} compliance={_fmt(m['compliance'])}"


def print_summary(records, run_dir: str) -> None:
    """End-of-run table: what ran, how long, the numbers that matter."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"align run: {run_dir}")
    for col in ("stage", "status", "time", "key metrics"):
        table.add_column(col)
    for rec in records:
        shown = [(k, rec.metrics[k]) for k in HEADLINE_METRICS if k in rec.metrics and rec.metrics[k] is not None]
        if not shown:
            shown = [(k, v) for k, v in rec.metrics.items() if isinstance(v, (int, float)) and k != "seconds"][:4]
        text = ", ".join(f"{k}={_fmt(v)}{_interval(rec.metrics, k)}" for k, v in shown[:5])
        if isinstance(rec.metrics.get("policies"), dict):  # eval: one line per policy, side by side
            lines = [_policy_line(name, m) for name, m in rec.metrics["policies"].items()]
            lines += [_fixed_line(t, m) for t, m in (rec.metrics.get("fixed_strings") or {}).items()]
            text = "\n".join([*lines, text])
        seconds = rec.seconds or rec.metrics.get("seconds") or 0
        table.add_row(rec.name, rec.status, f"{seconds:.0f}s" if rec.status == "ran" else "-", text)
    Console(stderr=False).print(table)


@command
def cmd_run(args: argparse.Namespace) -> int:
    from align.runner import run_recipe

    records = run_recipe(args.recipe, args.out, args.overrides, args.from_stage, args.only, args.force)
    from align.config import load_recipe

    run_dir = args.out or os.path.join("runs", load_recipe(args.recipe, args.overrides).name)
    print_summary(records, run_dir)
    return 0


@command
def cmd_validate(args: argparse.Namespace) -> int:
    from align.config import check_recipe_inputs, load_recipe
    from align.stages import STAGE_ORDER

    recipe = load_recipe(args.recipe, args.overrides)
    check_recipe_inputs(recipe, str(args.recipe))  # what `align run` checks before its first stage
    stages = [s for s in STAGE_ORDER if getattr(recipe, s, None) is not None]
    print(f"{args.recipe}: OK ({recipe.name}: {' -> '.join(stages)})")
    return 0


@command
def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from align.report import write_report
    from align.runner import run_folder_lock

    if not Path(args.run_dir).is_dir():
        raise AlignError(f"{args.run_dir}: no such run folder; expected the --out folder of an `align run`")
    with run_folder_lock(args.run_dir):  # not while a run writes it (it writes the report itself at the end)
        md_path, html_path = write_report(args.run_dir)
    print(f"wrote {md_path} and {html_path}")
    return 0


@command
def cmd_plan(args: argparse.Namespace) -> int:
    from align.config import load_recipe
    from align.plan import parse_size, plan_recipe, render

    recipe = load_recipe(args.recipe, args.overrides)
    budget = parse_size(args.gpu_memory) if args.gpu_memory else None
    render(plan_recipe(recipe, args.device, budget), budget, args.device)
    return 0


def _chat_messages(prompt: str, system: str | None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


@command
def cmd_generate(args: argparse.Namespace) -> int:
    from align.generation import generate_chat
    from align.models import load_for_generation

    model, tokenizer = load_for_generation(args.model)
    conversations = [_chat_messages(p, args.system) for p in args.prompt]
    responses = generate_chat(model, tokenizer, conversations, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, seed=args.seed)
    for prompt, response in zip(args.prompt, responses):
        if len(args.prompt) > 1:
            print(f"### {prompt}")
        print(response)
    return 0


@command
def cmd_chat(args: argparse.Namespace) -> int:
    from align.generation import generate_chat
    from align.models import load_for_generation

    model, tokenizer = load_for_generation(args.model)
    history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    print("Chatting with", args.model, "- empty line or Ctrl-D to quit, /reset to clear the history.")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        if line == "/reset":
            history = history[:1] if args.system else []
            continue
        history.append({"role": "user", "content": line})
        reply = generate_chat(model, tokenizer, [history], max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, seed=args.seed)[0]
        history.append({"role": "assistant", "content": reply})
        print(f"model> {reply}")
    return 0


@command
def cmd_serve(args: argparse.Namespace) -> int:
    from align.sharing.serve import serve

    timeout = {} if args.read_timeout is None else {"read_timeout_s": args.read_timeout}
    serve(args.model, host=args.host, port=args.port, model_name=args.model_name, **timeout)
    return 0


@command
def cmd_self_instruct(args: argparse.Namespace) -> int:
    from align.stages.self_instruct import run_standalone

    teacher: dict = {"type": "local", "model": args.teacher}
    if args.teacher_url:
        teacher = {"type": "openai", "base_url": args.teacher_url, "model": args.teacher_model or args.teacher,
                   "api_key_env": args.api_key_env}
    if args.endpoint:
        teacher["endpoint"] = args.endpoint
    settings = {"teacher": teacher, "method": args.method, "num_instructions": args.num_instructions}
    if args.seeds:
        settings["seeds"] = args.seeds
    result = run_standalone(settings, args.out, seed=args.seed)
    print(f"self-instruct: {result.metrics['kept']}/{args.num_instructions} instructions in {args.out}"
          f" -> {result.outputs.get('data', 'nothing exported')}")
    return 0 if result.metrics.get("complete") else 1


@command
def cmd_score(args: argparse.Namespace) -> int:
    from align.preferences.reward_model import load_reward_model

    reward_model = load_reward_model(args.model)
    prompts = [_chat_messages(args.prompt, args.system)] * len(args.response)
    scorer = reward_model.score_raw if args.raw else reward_model.score
    for response, value in zip(args.response, scorer(prompts, args.response)):
        print(f"{value:.4f}" if len(args.response) == 1 else f"{value:.4f}\t{response}")
    return 0


@command
def cmd_export(args: argparse.Namespace) -> int:
    from align.sharing.export import export_model

    out = export_model(args.stage, args.out, merge=args.merge, dtype=args.dtype)
    print(f"wrote {out} (its README.md says how to load it)")
    return 0


@command
def cmd_push(args: argparse.Namespace) -> int:
    from align.sharing.push import push_model

    url = push_model(args.stage, args.repo_id, private=args.private, merge=args.merge, dtype=args.dtype)
    print(f"pushed to {url}")
    return 0


@command
def cmd_label(args: argparse.Namespace) -> int:
    from align.preferences.label.command import run_label_command

    return run_label_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="align", description="Post-training alignment: Self-Instruct, SFT, "
                                     "reward models, PPO RLHF, evaluation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="Run a recipe's stages (skips stages already done).")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="Dotted overrides, e.g. sft.train.lr=1e-4")
    p.add_argument("--out", help="Run directory (default runs/<recipe name>).")
    p.add_argument("--from", dest="from_stage", help="Re-run this stage and every later one.")
    p.add_argument("--only", help="Run only this stage (its inputs must be complete).")
    p.add_argument("--force", action="store_true", help="Re-run every stage from scratch.")

    p = sub.add_parser("validate", help="Check a recipe without running it.")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")

    p = sub.add_parser("report", help="(Re)write report.md and report.html for a run directory.")
    p.add_argument("run_dir")

    p = sub.add_parser("plan", help="Estimate peak GPU memory per stage, and what to change to make it fit.")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="Dotted overrides, e.g. sft.train.batch_size=8")
    p.add_argument("--gpu-memory", help="Memory of one GPU, e.g. 8GiB or 24GB: say whether each stage fits.")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda (default): GPU memory; cpu: the RAM a CPU run adds.")

    for name, help_text in (("generate", "Answer prompts with a model or a run's output."),
                            ("chat", "Chat with a model or a run's output in the terminal.")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("model", help="Model reference, model/adapter dir, or a run's stage dir (e.g. runs/x/sft).")
        if name == "generate":
            p.add_argument("--prompt", action="append", required=True, help="Repeat for several prompts.")
        p.add_argument("--system", help="System message.")
        p.add_argument("--max-new-tokens", type=int, default=256)
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy.")
        p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("serve", help="Serve a model over an OpenAI-compatible HTTP API.")
    p.add_argument("model", help="Model reference, model/adapter dir, or a run's stage dir.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", help="Name clients use for the model (default: the reference).")
    p.add_argument("--read-timeout", type=float, metavar="SECONDS",
                   help="Close a connection that sends nothing for this long (a stalled request body is answered "
                        "408; default 30).")

    p = sub.add_parser("self-instruct", help="Generate instruction data with a teacher (Self-Instruct / Alpaca).")
    p.add_argument("--seeds", help="Seed tasks JSONL (default: the 175 shipped Self-Instruct seeds).")
    p.add_argument("--teacher", default="smollm2-135m-instruct",
                   help="Local teacher model reference (or the model name with --teacher-url).")
    p.add_argument("--teacher-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
    p.add_argument("--teacher-model", help="Model name at --teacher-url (default: --teacher).")
    p.add_argument("--api-key-env", help="NAME of the environment variable holding the API key.")
    p.add_argument("--endpoint", choices=["chat", "completions"], help="How prompts are sent to the teacher.")
    p.add_argument("--method", choices=["self_instruct", "alpaca"], default="self_instruct")
    p.add_argument("--num-instructions", type=int, default=100, help="Instructions to keep.")
    p.add_argument("--out", required=True, help="Output directory (re-run the same command to resume).")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("score", help="Print a reward model's reward for a prompt and response(s).")
    p.add_argument("model", help="Reward model dir or a run's reward stage dir (e.g. runs/x/reward).")
    p.add_argument("--prompt", required=True, help="The user prompt.")
    p.add_argument("--response", action="append", required=True, help="Repeat to score several responses.")
    p.add_argument("--system", help="System message placed before the prompt.")
    p.add_argument("--raw", action="store_true", help="The head's raw output (default: normalized, SFT mean = 0).")

    for name, help_text in (("export", "Write a finished stage's model to a folder (--merge: adapter folded into "
                                       "its base, a plain transformers model), with tokenizer and model card."),
                            ("push", "Upload a finished stage's model (or --merge: the merged model) to the "
                                     "Hugging Face Hub.")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("stage", help="The stage folder of a run, e.g. runs/ppo-tiny/ppo.")
        if name == "export":
            p.add_argument("--out", required=True, help="Folder to write (new or empty).")
        else:
            p.add_argument("--repo-id", required=True, help="Hub repo, NAMESPACE/NAME (created if missing).")
            p.add_argument("--private", action="store_true", help="Create the repo private.")
        p.add_argument("--merge", action="store_true", help="Fold a LoRA/DoRA adapter into its base (a 4-bit "
                       "base is dequantized first); reward models become sequence-classification models.")
        p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                       help="Weights' dtype with --merge.")

    p = sub.add_parser("label", help="Rank responses yourself in a local web page (`align label stats FILE`: "
                       "counts, flags, inter-labeler agreement).")
    p.add_argument("tasks", help="Tasks JSONL of {prompt, responses} (the rank stage's tasks.jsonl), or `stats`.")
    p.add_argument("rankings", nargs="?", help="With `stats`: the labels file to summarise.")
    p.add_argument("--out", help="Labels file to write (JSONL rankings; re-run to resume).")
    p.add_argument("--port", type=int, default=8600, help="0 picks a free port.")
    p.add_argument("--host", default="127.0.0.1", help="Non-local addresses need --allow-remote.")
    p.add_argument("--labeler", help="Your name, stored with each label (default: your user name).")
    p.add_argument("--token", help="Require this token on every request (?token=... or X-Label-Token header).")
    p.add_argument("--allow-remote", action="store_true", help="Allow binding to a non-local address.")
    p.add_argument("--read-timeout", type=float, metavar="SECONDS",
                   help="Close a connection that sends nothing for this long (a stalled request body is answered "
                        "408; default 5).")
    p.add_argument("--json", action="store_true", help="With `stats`: print JSON.")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options too (`align run r.yaml --out x sft.train.lr=1e-4`).
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return COMMANDS[args.command](args)
    except AlignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
