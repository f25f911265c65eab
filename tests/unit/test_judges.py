"""Judges: gold functions (import errors, ties) and the LLM judge's position swap, with fake teachers."""

from __future__ import annotations

import re

import pytest

from align.errors import AlignError
from align.preferences.judges import (
    GoldJudge,
    GoldJudgeConfig,
    LLMJudge,
    borda,
    copeland,
    load_gold_function,
    pairwise_judge_fn,
    parse_choice,
    parse_order,
    ranking_from_scores,
)


def test_ranking_from_scores_groups_ties_best_first():
    assert ranking_from_scores([0.1, 0.9, 0.5]) == [[1], [2], [0]]
    assert ranking_from_scores([1.0, 2.0, 1.0, 0.0]) == [[1], [0, 2], [3]]
    assert ranking_from_scores([3, 3]) == [[0, 1]]


# --------------------------------------------------------------------------- gold


def test_gold_function_from_module_and_file(tmp_path):
    fn = load_gold_function("align.preferences.judges:gold_target_length")
    assert fn("p", "one two three") == -9
    script = tmp_path / "my_gold.py"
    script.write_text("def score(prompt, response):\n    return response.count('!')\n")
    judge = GoldJudge(load_gold_function(f"{script}:score"))
    assert judge.rank(["p"], [["a", "b!!", "c!", "d!"]]) == [[[1], [2, 3], [0]]]
    assert judge.last_scores == [[0.0, 2.0, 1.0, 1.0]]


@pytest.mark.parametrize("spec, needle", [
    ("no_colon_here", "expected 'module:function'"),
    ("align_no_such_module_xyz:f", "cannot import 'align_no_such_module_xyz': ModuleNotFoundError"),
    ("align.preferences.judges:no_such_fn", "'align.preferences.judges' has no attribute 'no_such_fn'"),
    ("align.preferences.judges:PAIRWISE_TEMPLATE", "'PAIRWISE_TEMPLATE' is a str, not callable"),
    ("/nonexistent/gold.py:f", "file /nonexistent/gold.py not found"),
])
def test_gold_function_errors_are_clear(spec, needle):
    with pytest.raises(AlignError) as err:
        load_gold_function(spec)
    assert needle in str(err.value)
    assert spec in str(err.value)


def test_gold_module_that_raises_on_import(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(AlignError, match="RuntimeError: boom"):
        load_gold_function(f"{script}:f")


def test_gold_function_failure_and_nan_are_reported():
    with pytest.raises(AlignError, match="failed on prompt 'p'.*ZeroDivisionError"):
        GoldJudge(lambda p, r: 1 / 0, "m:f").rank(["p"], [["a", "b"]])
    with pytest.raises(AlignError, match="returned NaN"):
        GoldJudge(lambda p, r: float("nan"), "m:f").rank(["p"], [["a", "b"]])


def test_gold_config_validates_spec_shape():
    assert GoldJudgeConfig(function="a.b:c").function == "a.b:c"
    with pytest.raises(ValueError, match="expected 'module:function'"):
        GoldJudgeConfig(function="a.b.c")


# --------------------------------------------------------------------------- LLM judge


def _shown(conversation):
    """(prompt text, response A, response B) from a pairwise judge question."""
    text = conversation[-1]["content"]
    a = re.search(r"\[Response A\]\n(.*?)\n\n\[Response B\]", text, re.S).group(1)
    b = re.search(r"\[Response B\]\n(.*?)\n\nWhich", text, re.S).group(1)
    return a, b


class AlwaysA:
    """A maximally position-biased teacher."""

    def __init__(self):
        self.seen = []

    def chat(self, conversations, *, max_tokens, temperature):
        self.seen.extend(conversations)
        return ["A"] * len(conversations)


class PrefersLonger:
    """A consistent teacher: the longer response wins, whatever the order."""

    def chat(self, conversations, *, max_tokens, temperature):
        out = []
        for conv in conversations:
            a, b = _shown(conv)
            out.append("Response A is better." if len(a) > len(b) else "B")
        return out


def test_position_biased_judge_yields_a_tie():
    teacher = AlwaysA()
    judge = LLMJudge(teacher)
    assert judge.rank(["q"], [["short", "a bit longer", "the longest answer here"]]) == [[[0, 1, 2]]]
    assert judge.calls == 6 == len(teacher.seen)  # 3 pairs × both orders
    shown = {_shown(c) for c in teacher.seen}
    assert ("short", "a bit longer") in shown and ("a bit longer", "short") in shown


def test_consistent_judge_gives_the_correct_order_for_each_prompt():
    judge = LLMJudge(PrefersLonger())
    rankings = judge.rank(["q1", "q2"], [["xx", "xxxx", "x", "xxx"], ["bb", "b"]])
    assert rankings == [[[1], [3], [0], [2]], [[0], [1]]]
    assert judge.calls == 4 * 3 + 2 * 1 and judge.unparsed == 0


def test_unparseable_answers_count_as_half():
    class Mumbles:
        def chat(self, conversations, *, max_tokens, temperature):
            return ["I cannot decide"] * len(conversations)

    judge = LLMJudge(Mumbles())
    assert judge.rank(["q"], [["a", "b"]]) == [[[0, 1]]]
    assert judge.unparsed == 2


def test_listwise_position_swap():
    class ListFirstToLast:  # always answers "1 > 2 > 3 ...": pure position bias
        def chat(self, conversations, *, max_tokens, temperature):
            return [" > ".join(str(i) for i in range(1, 4)) for _ in conversations]

    class ByLength:  # reads the listing and orders by length, longest first
        def chat(self, conversations, *, max_tokens, temperature):
            out = []
            for conv in conversations:
                shown = re.findall(r"\[Response (\d+)\]\n(.*?)(?=\n\n\[Response|\n\nAnswer)", conv[0]["content"], re.S)
                out.append(" > ".join(n for n, text in sorted(shown, key=lambda s: -len(s[1]))))
            return out

    biased = LLMJudge(ListFirstToLast(), mode="listwise")
    assert biased.rank(["q"], [["a", "bb", "ccc"]]) == [[[0, 1, 2]]]
    assert biased.calls == 2
    assert LLMJudge(ByLength(), mode="listwise").rank(["q"], [["bb", "ccc", "a"]]) == [[[1], [0], [2]]]


def test_parsers_and_aggregators():
    assert parse_choice("A") == "A" and parse_choice("  b") is None and parse_choice("Response B.") == "B"
    assert parse_choice("I prefer B because A is wrong") == "B"
    assert parse_order("2 > 1 > 3", 3) == [1, 0, 2]
    assert parse_order("3 > 3 > 7 > 1", 3) == [2, 0]
    assert borda([2, 0], 3) == {2: 2.0, 0: 1.0, 1: 0.0}
    assert borda([], 3) == {0: 1.0, 1: 1.0, 2: 1.0}
    assert copeland([[0, 2, 2], [0, 0, 1], [0, 1, 0]]) == [[0], [1, 2]]


def test_teacher_without_chat_is_rejected():
    with pytest.raises(AlignError, match="has no chat"):
        LLMJudge(object())


def test_pairwise_judge_fn_for_win_rates_cancels_position_bias():
    from align.eval.winrate import judge_pairwise

    biased = pairwise_judge_fn(AlwaysA())
    assert biased("q", "x", "yy") == "first"
    assert judge_pairwise(biased, "q", "x", "yy") == 0.5  # swapped orders cancel: a tie
    consistent = pairwise_judge_fn(PrefersLonger())
    assert consistent("q", "x", "yy") == "second"
    assert judge_pairwise(consistent, "q", "long answer", "short") == 1.0

    class Mumbles:
        def chat(self, conversations, *, max_tokens, temperature):
            return ["hmm"] * len(conversations)

    assert pairwise_judge_fn(Mumbles())("q", "a", "b") == "tie"


@pytest.mark.parametrize("answer, verdict", [
    ("A better answer is B", "B"),  # the article "A" is not a verdict
    ("Both are fine. A is longer, but B answers the question.\nVerdict: B", "B"),
    ("Verdict: tie", "tie"),
    ("**Verdict:** A", "A"),
    ("Verdict: B\nOn reflection, no.\nVerdict: A", "A"),  # the final verdict counts
    ("B is better than A", "B"),
    ("Comparing A and B, I cannot tell.", None),  # both letters, no verdict: not guessed
])
def test_parse_choice_reads_the_final_verdict(answer, verdict):
    assert parse_choice(answer) == verdict


def test_pairwise_prompt_asks_for_a_verdict_line_and_ties_count_half_without_being_unparsed():
    from align.preferences.judges import pairwise_question

    question = pairwise_question("q", "x", "y")[-1]["content"]
    assert 'Verdict: A", "Verdict: B" or "Verdict: tie"' in question

    class Undecided:
        def chat(self, conversations, *, max_tokens, temperature):
            return ["Both are equally good.\nVerdict: tie"] * len(conversations)

    judge = LLMJudge(Undecided())
    assert judge.rank(["q"], [["a", "b"]]) == [[[0, 1]]]
    assert judge.unparsed == 0
    assert pairwise_judge_fn(Undecided())("q", "a", "b") == "tie"
