"""The `align label` command: serve the labeling page, or `align label stats FILE`."""

from __future__ import annotations

import argparse
import getpass
import json

from align.errors import AlignError


def default_labeler() -> str:
    try:
        return getpass.getuser() or "default"
    except Exception:  # no user name in this environment (e.g. a container without /etc/passwd entry)
        return "default"


def run_label_command(args: argparse.Namespace) -> int:
    if args.tasks == "stats" and args.rankings:
        from align.preferences.label.stats import format_stats, label_stats

        stats = label_stats(args.rankings)
        print(json.dumps(stats, indent=2, ensure_ascii=False) if args.json else format_stats(stats, args.rankings))
        return 0
    if args.rankings:
        raise AlignError(f"unexpected argument {args.rankings!r}; usage: align label TASKS.jsonl --out RANKINGS.jsonl "
                         "| align label stats RANKINGS.jsonl")
    if not args.out:
        raise AlignError("align label needs --out RANKINGS.jsonl (where the labels are written)")
    from align.preferences.label.server import serve

    timeout = {} if args.read_timeout is None else {"read_timeout_s": args.read_timeout}
    serve(args.tasks, args.out, host=args.host, port=args.port, labeler=args.labeler or default_labeler(),
          token=args.token, allow_remote=args.allow_remote, **timeout)
    return 0
