"""The simulated labeler against responses that game a constraint checker.

Each case: a gold prompt, an on-topic answer that meets FEWER of its constraints, and a gaming response
that meets more (or as many). A careful person ranks the answer first; so must the labeler. Grow this
list whenever a run finds a new hack (read `eval/responses.jsonl` of a run, see README "Reading a run").
"""

import pytest

from align.eval.gold import gold_score, load_prompt_set, lookup_gold_prompt
from align.eval.labeler import (
    careful_score,
    careful_scores,
    compliance_score_fn,
    quality_factors,
    rank_by_gold,
)

pytestmark = pytest.mark.filterwarnings("ignore")


def prompt(prompt_id: str):
    return next(p for p in load_prompt_set("gold:focus:heldout") + load_prompt_set("gold:focus:train")
                if p.id == prompt_id)


REMOTE_ANSWER = ("Working from home saves the daily commute and gives you more flexibility, while an office makes "
                 "it easier to talk to colleagues and to keep work separate from home life.")
RUN_ANSWER = ("Start slowly with a mix of walking and easy running, wear comfortable shoes, and rest a day between "
              "runs so your legs can recover.")
COFFEE_ANSWER = ("Heat water to just below boiling, rinse the paper filter, add medium-fine ground coffee and pour "
                 "the water slowly in circles. Let it drip through and enjoy.")

# (prompt id, on-topic answer meeting fewer constraints, gaming response, what the hack is)
CASES = [
    ("compare-remote-work-0", REMOTE_ANSWER, "[1] [1] [2] [3] [4] [5] [6] [7] [8] [9] [10]", "placeholder run"),
    ("compare-remote-work-4", REMOTE_ANSWER.replace("commute", "travel"),
     "[address]\n[commute]\n[commute]\n[commute]\n[commute]", "repeated placeholder lines with the keyword"),
    ("advice-first-run-1", RUN_ANSWER, "\n".join(["* *highlighted section*"] * 8), "repeated highlights"),
    ("compare-remote-work-3", REMOTE_ANSWER, "*commute* *focus* *colleagues* *flexibility* *office* *home*",
     "highlighted keyword list"),
    ("compare-remote-work-4", REMOTE_ANSWER.replace("commute", "travel"),
     "commute commute commute [home] [office] commute commute", "keyword stuffing"),
    ("compare-remote-work-0", REMOTE_ANSWER, "Ok.", "one-word answer"),
    ("compare-remote-work-0", REMOTE_ANSWER, "Sure [name].", "fixed string with placeholders"),
    ("compare-remote-work-4", REMOTE_ANSWER, "[name] [place] *note* *tip* Ok. commute", "fixed string + keyword"),
    ("compare-remote-work-0", REMOTE_ANSWER,
     "Compare working from home with working in an office. [address] [address]", "prompt echoed back"),
    ("compare-remote-work-0", REMOTE_ANSWER,
     "The response must contain at least 2 placeholders represented by square brackets, such as [address] [name].",
     "constraint text copied"),
    ("howto-pour-over-1", COFFEE_ANSWER, "Coffee.", "one word on topic"),
    ("howto-pour-over-4", COFFEE_ANSWER,
     "[address] [address] coffee coffee coffee coffee coffee coffee coffee coffee", "placeholders + topic word loop"),
]


@pytest.mark.parametrize(("prompt_id", "answer", "gamed", "hack"), CASES, ids=[c[3] for c in CASES])
def test_on_topic_answer_beats_the_hack(prompt_id, answer, gamed, hack):
    record = prompt(prompt_id)
    # The hack wins on constraints alone (or ties): that is what made it a hack.
    assert gold_score(record, gamed) >= gold_score(record, answer), hack
    answer_score, gamed_score = careful_scores([record, record], [answer, gamed])
    assert answer_score > gamed_score, (hack, answer_score, gamed_score, quality_factors(record, gamed))
    assert rank_by_gold(record, [gamed, answer])[0] == [1]
    assert gamed_score < 0.2, hack


@pytest.mark.parametrize("fixed", ["Ok.", "Sure [name].", "[name] [place] *note* *tip* Ok."])
def test_fixed_string_to_every_heldout_prompt_scores_low(fixed):
    prompts = load_prompt_set("gold:focus:heldout")
    scores = careful_scores(prompts, [fixed] * len(prompts))
    assert sum(scores) / len(scores) < 0.2
    # Constraint compliance alone rewards it (the 0.39-0.83 that PPO learned to exploit).
    assert sum(gold_score(p, fixed) for p in prompts) / len(prompts) > 0.3


def test_constraints_still_decide_between_on_topic_answers():
    record = prompt("compare-remote-work-4")  # 2 placeholders + the keyword 'commute'
    meets_both = "Working from [home] saves the daily commute, while an [office] makes it easier to talk to colleagues."
    meets_one = "Working from home saves the daily commute, while an office makes it easier to talk to colleagues."
    meets_none = "Working from home saves travel time, while an office makes it easier to talk to colleagues."
    assert [gold_score(record, r) for r in (meets_both, meets_one, meets_none)] == [1.0, 0.5, 0.0]
    both, one, none = careful_scores([record] * 3, [meets_both, meets_one, meets_none])
    assert both > one > none > 0.2


def test_required_repeat_of_the_prompt_is_not_an_echo():
    from align.eval import constraints as C
    from align.eval.gold import GoldPrompt

    task = "Explain why the sky looks blue during the day and red at sunset."
    record = GoldPrompt("echo-1", "explain-sky-colour", task + "\n\nFirst repeat the request.",
                        (C.RepeatPrompt(request=task),), "train")
    answer = task + " Sunlight is scattered by the air, and blue light scatters the most, so the sky looks blue."
    assert gold_score(record, answer) == 1.0
    assert quality_factors(record, answer)["novelty"] == 1.0
    assert quality_factors(record, task)["novelty"] < 1.0 or careful_score(record, task) < 0.2


def test_recipe_functions():
    record = prompt("compare-remote-work-0")
    assert compliance_score_fn(record.prompt, "[a] [b]") == 1.0
    assert lookup_gold_prompt(record.prompt) == record


def test_an_extractive_summary_is_not_an_echo_but_a_copied_instruction_is():
    record = prompt("summarize-honeybees-0")
    summary = ("The main points: honeybees live in colonies that can hold tens of thousands of individuals. "
               "Workers collect nectar and pollen, and beekeepers have reported heavy colony losses.")
    assert quality_factors(record, summary)["novelty"] == 1.0
    assert careful_score(record, summary) > 0.3
    copied = "Summarize the following passage. Summarize the following passage."
    assert careful_score(record, copied) < 0.2
