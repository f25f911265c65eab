"""IFEval offline: the official prompts, the official checkers' verdicts, the trivial floor, paired changes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from align.errors import AlignError
from align.eval import ifeval, ifeval_punkt
from align.eval.ifeval import (
    IFEvalConfig,
    compare_ifeval,
    known_instruction_ids,
    load_ifeval_prompts,
    score_ifeval,
    trivial_baseline,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ifeval" / "gpt4_expected.jsonl"


@pytest.fixture(scope="module")
def prompts() -> list[ifeval.IFEvalPrompt]:
    return load_ifeval_prompts()


def test_the_541_official_prompts_load_with_unique_keys_and_known_instructions(prompts):
    assert len(prompts) == ifeval.NUM_PROMPTS == 541
    assert len({p.key for p in prompts}) == 541
    assert sum(len(p.instruction_id_list) for p in prompts) == 834
    assert all(len(p.kwargs) == len(p.instruction_id_list) for p in prompts)
    used = {iid for p in prompts for iid in p.instruction_id_list}
    assert used <= known_instruction_ids() and len(used) == 25
    assert [p.key for p in load_ifeval_prompts(5)] == [p.key for p in prompts[:5]]


def test_fixture_reproduces_the_official_per_prompt_verdicts(prompts):
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    by_key = {p.key: p for p in prompts}
    chosen = [by_key[r["key"]] for r in rows]
    result = score_ifeval(chosen, [r["response"] for r in rows])
    assert len(rows) >= 36
    assert result.follow_strict == [r["follow_strict"] for r in rows]
    assert result.follow_loose == [r["follow_loose"] for r in rows]
    covered = {iid for r in rows for iid in r["instruction_id_list"]}
    assert {"length_constraints:number_sentences", "change_case:capital_word_frequency"} <= covered
    assert len(covered) == 25
    assert result.follow_strict != result.follow_loose  # some verdicts differ between strict and loose


def test_sentences_are_split_by_nltk_punkt_not_at_every_period():
    # Punkt knows "Dr." and "D.C." do not end a sentence; a split at every ". " would count 5 here
    assert ifeval_punkt.split_sentences("Dr. Smith went to Washington D.C. on Monday. He was tired. Really?") == [
        "Dr. Smith went to Washington D.C. on Monday.", "He was tired.", "Really?"]


def test_trivial_answer_scores_the_floor(prompts):
    result = trivial_baseline(prompts)
    assert result.prompt_strict == pytest.approx(62 / 541)  # 0.115
    assert result.instruction_strict == pytest.approx(191 / 834)  # 0.229
    assert result.prompt_loose == result.prompt_strict  # one line, no '*': every loose variant is the same text
    types = result.per_instruction_type()
    assert types["punctuation:no_comma"]["strict"] == 1.0 and types["detectable_format:title"]["strict"] == 0.0


def test_empty_response_follows_nothing_and_counts_every_instruction(prompts):
    result = score_ifeval(prompts[:3], ["", "  \n", "Ok."])
    assert result.follow_strict[0] == [False] * len(prompts[0].instruction_id_list)
    assert not any(result.follow_loose[1])
    assert result.metrics()["instructions"] == sum(len(p.instruction_id_list) for p in prompts[:3])


def test_a_random_letter_check_is_reproducible_and_leaves_global_random_alone(prompts):
    odd = [p for p in prompts if p.key in (1122, 1129)]  # their `letter` is '#' / '!': the checker draws one
    random.seed(5)
    expected_next = random.random()
    random.seed(5)
    first = score_ifeval(odd, ["abc " * 50] * 2)
    assert random.random() == expected_next
    assert score_ifeval(odd, ["abc " * 50] * 2) == first


def test_compare_against_itself_is_a_zero_change_with_a_zero_interval(prompts):
    result = trivial_baseline(prompts[:60])
    change = compare_ifeval(result, result, seed=3, resamples=500)
    for metric in ("prompt_strict", "instruction_strict"):
        assert change[metric]["gain"] == 0.0
        assert change[metric]["ci_low"] == change[metric]["ci_high"] == 0.0
    assert change["instruction_strict"]["pooled_gain"] == 0.0


def test_compare_gives_the_change_in_the_official_numbers(prompts):
    chosen = prompts[:40]
    base = trivial_baseline(chosen)
    other = score_ifeval(chosen, ["ok"] * 40)  # lowercase, no period: a different pattern of passes
    change = compare_ifeval(other, base, resamples=500)
    assert change["prompt_strict"]["gain"] == pytest.approx(other.prompt_strict - base.prompt_strict)
    assert change["instruction_strict"]["pooled_gain"] == pytest.approx(other.instruction_strict - base.instruction_strict)
    assert change["prompt_strict"]["ci_low"] <= change["prompt_strict"]["gain"] <= change["prompt_strict"]["ci_high"]


def test_mismatched_lengths_and_prompts_are_clear_errors(prompts):
    with pytest.raises(AlignError, match="3 prompts but 2 responses"):
        score_ifeval(prompts[:3], ["a", "b"])
    with pytest.raises(AlignError, match="same prompts"):
        compare_ifeval(trivial_baseline(prompts[:3]), trivial_baseline(prompts[1:4]))
    with pytest.raises(AlignError, match="num_prompts"):
        load_ifeval_prompts(0)


def test_config_rejects_unknown_keys_and_documents_each_field():
    assert IFEvalConfig().num_prompts is None and IFEvalConfig().max_new_tokens == 256
    with pytest.raises(ValueError):
        IFEvalConfig(num_prompt=10)
    assert all(f.description for f in IFEvalConfig.model_fields.values())
