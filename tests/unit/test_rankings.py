"""Rankings: pair expansion, the accepted file formats (rankings, pairs, Anthropic HH), clear errors."""

from __future__ import annotations

import json

import pytest

from align.errors import AlignError
from align.preferences.rankings import (
    JsonlAppender,
    _split_hh,
    bad_record_limit,
    expand_pairs,
    group_by_prompt,
    normalize_ranking,
    read_rankings,
    read_rankings_checked,
    response_messages,
    split_by_prompt,
    split_hh,
)


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


# --------------------------------------------------------------------------- expand_pairs


@pytest.mark.parametrize("k", [2, 3, 4, 9])
def test_expand_pairs_without_ties_gives_k_choose_2(k):
    pairs = expand_pairs([[i] for i in range(k)])
    assert len(pairs) == k * (k - 1) // 2
    assert len(set(pairs)) == len(pairs)
    assert all(b < w for b, w in pairs)  # index order == rank order here


def test_expand_pairs_order_is_by_better_group_then_worse_group():
    assert expand_pairs([[2], [0], [1]]) == [(2, 0), (2, 1), (0, 1)]


def test_expand_pairs_skips_pairs_inside_tie_groups():
    # 4 responses, 1 and 3 tied: 6 pairs minus the tied one.
    pairs = expand_pairs([[0], [1, 3], [2]])
    assert pairs == [(0, 1), (0, 3), (0, 2), (1, 2), (3, 2)]
    assert (1, 3) not in pairs and (3, 1) not in pairs
    assert expand_pairs([[0, 1, 2]]) == []  # one tie group: no preference at all


def test_normalize_ranking_accepts_flat_groups_and_mixed():
    assert normalize_ranking([2, 0, 1], 3, "f:1") == [[2], [0], [1]]
    assert normalize_ranking([[2], [0, 1]], 3, "f:1") == [[2], [0, 1]]
    assert normalize_ranking([1, [0, 2]], 3, "f:1") == [[1], [0, 2]]


@pytest.mark.parametrize("raw, needle", [
    ([0, 0, 1], "index 0 appears twice"),
    ([0, 1], "indices [2] are missing"),
    ([0, 1, 5], "index 5 is out of range for 3 responses"),
    ([0, "1", 2], "is not an index"),
    ([[0], [], [1, 2]], "is not an index"),
    ("0>1>2", "expected 'ranking'"),
])
def test_normalize_ranking_errors_name_the_place_and_problem(raw, needle):
    with pytest.raises(AlignError) as err:
        normalize_ranking(raw, 3, "data.jsonl:7")
    assert str(err.value).startswith("data.jsonl:7: ")
    assert needle in str(err.value)


# --------------------------------------------------------------------------- readers


def test_read_rankings_flat_and_tie_groups(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"prompt": "Say hi", "responses": ["hi", "hello", "yo"], "ranking": [1, 0, 2]},
        {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Add"}],
         "responses": ["a", "b", "c"], "ranking": [[2], [0, 1]], "scores": [0, 0, 1]},
    ])
    first, second = read_rankings(path)
    assert first.prompt == [{"role": "user", "content": "Say hi"}]
    assert first.ranking == [[1], [0], [2]] and first.k == 3
    assert second.ranking == [[2], [0, 1]] and second.prompt_text == "Add"
    assert first.where.endswith("r.jsonl:1")


def test_read_rankings_from_rank_stage_dir(tmp_path):
    with pytest.raises(AlignError, match="holds no rankings.jsonl"):
        read_rankings(tmp_path)
    write_jsonl(tmp_path / "rankings.jsonl", [{"prompt": "p", "responses": ["a", "b"], "ranking": [[0], [1]]}])
    assert read_rankings(tmp_path)[0].responses == ["a", "b"]


def test_plain_pairs_are_rankings_with_k_2(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "Go away."}]},
    ])
    a, b = read_rankings(path)
    assert (a.responses, a.ranking) == (["4", "5"], [[0], [1]])
    assert b.responses == ["Hello!", "Go away."] and b.prompt == [{"role": "user", "content": "Hi"}]


def test_anthropic_hh_split_at_last_assistant_turn(tmp_path):
    shared = "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.\n\nHuman: And of Italy?"
    rec = {"chosen": shared + "\n\nAssistant: Rome.", "rejected": shared + "\n\nAssistant: Milan, I think."}
    (record,) = read_rankings(write_jsonl(tmp_path / "hh.jsonl", [rec]))
    assert record.prompt == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert record.responses == ["Rome.", "Milan, I think."]
    assert record.ranking == [[0], [1]]


def test_hh_response_containing_assistant_word_is_kept_whole():
    messages, chosen, rejected = split_hh("\n\nHuman: hi\n\nAssistant: I am an Assistant: yes",
                                          "\n\nHuman: hi\n\nAssistant: no", "x:1")
    assert messages == [{"role": "user", "content": "hi"}]
    assert (chosen, rejected) == ("I am an Assistant: yes", "no")


@pytest.mark.parametrize("rec, needle", [
    ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: OTHER\n\nAssistant: c"},
     "differ before their last Assistant turn"),
    ({"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: a\n\nAssistant: c"}, "'chosen' has no '\\n\\nAssistant:'"),
    ({"prompt": "p", "responses": ["a", "b"]}, "missing 'ranking'"),
    ({"prompt": "p", "responses": ["a"], "ranking": [0]}, "at least 2 strings"),
    ({"prompt": "", "responses": ["a", "b"], "ranking": [0, 1]}, "empty prompt"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "'chosen' must be a string"),
    ({"question": "p", "answer": "a"}, "unrecognised record with keys ['answer', 'question']"),
])
def test_malformed_records_name_file_and_line(tmp_path, rec, needle):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, rec])
    with pytest.raises(AlignError) as err:
        read_rankings(path)
    assert f"{path}:2: " in str(err.value)
    assert needle in str(err.value)


def test_invalid_json_line_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": \n')
    with pytest.raises(AlignError, match=r"bad.jsonl:2: not valid JSON"):
        read_rankings(path)


# --------------------------------------------------------------------------- grouping / splitting / writing


def test_group_by_prompt_merges_pairs_and_duplicate_responses(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        {"prompt": "q", "chosen": "good", "rejected": "worse"},
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"prompt": "other", "responses": ["x", "y", "z"], "ranking": [[0], [1, 2]]},
    ])
    first, second = group_by_prompt(read_rankings(path))
    assert first.responses == ["good", "bad", "worse", "same"]  # "good" appears once: forwarded once
    assert first.pairs == [(0, 1), (0, 2)]  # the same/same pair carries no preference
    assert second.pairs == [(0, 1), (0, 2)] and second.k == 3


def test_split_by_prompt_is_deterministic_and_disjoint(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(20)]
    groups = group_by_prompt(read_rankings(write_jsonl(tmp_path / "p.jsonl", rows)))
    train, held = split_by_prompt(groups, 0.25, seed=3)
    again = split_by_prompt(groups, 0.25, seed=3)[1]
    assert len(held) == 5 and len(train) == 15
    assert [g.prompt for g in held] == [g.prompt for g in again]
    assert not {g.prompt[0]["content"] for g in held} & {g.prompt[0]["content"] for g in train}


def test_appender_drops_partial_last_line_and_knows_done_prompts(tmp_path):
    path = tmp_path / "rankings.jsonl"
    path.write_text(json.dumps({"prompt": "a", "responses": ["x", "y"], "ranking": [0, 1]}) + '\n{"prompt": "b", "resp')
    with JsonlAppender(path) as writer:
        assert writer.done == {JsonlAppender.key("a")}
        writer.write({"prompt": "b", "responses": ["x", "y"], "ranking": [1, 0]})
    records = read_rankings(path)
    assert [r.prompt_text for r in records] == ["a", "b"]


def test_skipped_label_records_are_ignored(tmp_path):
    import json

    from align.preferences.rankings import read_rankings

    path = tmp_path / "labels.jsonl"
    rows = [{"prompt": "p", "responses": ["a", "b"], "ranking": [[1], [0]], "labeler": "x"},
            {"prompt": "q", "responses": ["c", "d"], "skipped": True, "labeler": "x"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records = read_rankings(path)
    assert len(records) == 1


# --------------------------------------------------------------------------- identical responses


def test_identical_responses_at_different_ranks_tie_instead_of_contradicting(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"prompt": "q", "responses": ["same", "other", "same", "worst"], "ranking": [0, 1, 2, 3]},
    ])
    (record,) = read_rankings(path)
    # "same" > "other" > "same": the copies and what lies between them form one tie group
    assert record.ranking == [[0, 1, 2], [3]]
    (group,) = group_by_prompt([record])
    pairs = {(group.responses[b], group.responses[w]) for b, w in group.pairs}
    assert pairs == {("same", "worst"), ("other", "worst")}
    assert not any((w, b) in pairs for b, w in pairs)  # no A > B together with B > A


def test_identical_responses_keep_the_groups_outside_their_span():
    from align.preferences.rankings import RankingRecord, tie_identical_responses

    assert tie_identical_responses(["a", "b", "c", "a", "d"], [[0], [1], [3], [2], [4]]) == [[0, 1, 3], [2], [4]]
    assert tie_identical_responses(["a", "b", "a", "b"], [[0], [1], [3], [2]]) == [[0, 1, 3, 2]]
    assert tie_identical_responses(["a", "b", "c"], [[2], [0, 1]]) == [[2], [0, 1]]  # distinct: unchanged
    assert RankingRecord([{"role": "user", "content": "q"}], ["x", "y", "x"], [[2], [1], [0]]).ranking == [[2, 1, 0]]


# --------------------------------------------------------------------------- HH pairs that differ early, bad records

EARLY = {  # the assistant's FIRST reply differs, then the conversation goes on differently
    "chosen": "\n\nHuman: Can you help me?\n\nAssistant: Sure, with what?\n\nHuman: My bike.\n\nAssistant: Check the chain.",
    "rejected": "\n\nHuman: Can you help me?\n\nAssistant: No.\n\nHuman: Please?\n\nAssistant: Still no.",
}


def test_hh_pair_differing_in_an_earlier_turn_splits_at_last_shared_human_turn(tmp_path):
    (record,) = read_rankings(write_jsonl(tmp_path / "hh.jsonl", [EARLY]))
    assert record.prompt == [{"role": "user", "content": "Can you help me?"}]
    assert record.split_early and record.ranking == [[0], [1]]
    assert response_messages(record.responses[0]) == [
        {"role": "assistant", "content": "Sure, with what?"}, {"role": "user", "content": "My bike."},
        {"role": "assistant", "content": "Check the chain."}]
    assert response_messages(record.responses[1]) == [
        {"role": "assistant", "content": "No."}, {"role": "user", "content": "Please?"},
        {"role": "assistant", "content": "Still no."}]


def test_hh_split_keeps_shared_turns_up_to_the_last_shared_human_turn():
    shared = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c"
    messages, chosen, rejected = split_hh(shared + "\n\nAssistant: same\n\nHuman: d\n\nAssistant: good",
                                          shared + "\n\nAssistant: same\n\nHuman: e\n\nAssistant: bad", "x:1")
    assert [m["content"] for m in messages] == ["a", "b", "c"]  # "same" is shared but is not a Human turn
    assert chosen == "same\n\nHuman: d\n\nAssistant: good"
    assert rejected == "same\n\nHuman: e\n\nAssistant: bad"


def test_plain_response_is_one_assistant_turn():
    assert response_messages("I am an Assistant: yes") == [{"role": "assistant", "content": "I am an Assistant: yes"}]


def test_unusable_records_are_skipped_up_to_max_bad_records_and_counted(tmp_path):
    rows = [EARLY, *({"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(3)),
            {"chosen": "\n\nHuman: x\n\nAssistant: y", "rejected": "\n\nHuman: OTHER\n\nAssistant: z"}]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    records, report = read_rankings_checked(path, max_bad_records=1)
    assert len(records) == report.records == 4 and report.split_early == 1
    assert [where for where, _ in report.bad] == [f"{path}:5"]
    records, report = read_rankings_checked(path, max_bad_records=0.2)  # 1 of 5 records = 0.2
    assert len(report.bad) == 1
    with pytest.raises(AlignError, match=r"1 of 5 records are unusable.*hh.jsonl:5: .*share no Human turn"):
        read_rankings_checked(path, max_bad_records=0.1)
    with pytest.raises(AlignError, match=r"hh.jsonl:5: 'chosen' and 'rejected' differ before"):
        read_rankings_checked(path)  # 0: the first unusable record fails the read with its own message


def test_too_many_bad_records_names_the_first_three(tmp_path):
    rows = [{"prompt": "ok", "chosen": "a", "rejected": "b"}] + [{"question": i} for i in range(5)]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(AlignError) as err:
        read_rankings_checked(path, max_bad_records=2)
    message = str(err.value)
    assert "5 of 6 records are unusable" in message
    assert all(f"bad.jsonl:{line}:" in message for line in (2, 3, 4)) and "bad.jsonl:5:" not in message


def test_bad_record_limit_fraction_or_count():
    assert bad_record_limit(0.01, 1849) == 18 and bad_record_limit(0.01, 50) == 0
    assert bad_record_limit(3, 10) == 3 and bad_record_limit(0, 10) == 0


def test_trl_message_pairs_without_prompt_split_at_the_last_shared_user_turn(tmp_path):
    """Conversational pairs (TRL's implicit-prompt format): sharing all but the last turn, or differing
    earlier (then split like HH transcripts: the responses span the remaining turns)."""
    from align.preferences.rankings import response_messages

    u1, a1 = {"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."}
    u2 = {"role": "user", "content": "Another?"}
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"chosen": [u1, a1, u2, {"role": "assistant", "content": "Pear."}],
         "rejected": [u1, a1, u2, {"role": "assistant", "content": "Rock."}]},
        {"chosen": [u1, a1, u2, {"role": "assistant", "content": "Pear."}],
         "rejected": [u1, {"role": "assistant", "content": "A rock."}, u2, {"role": "assistant", "content": "Stone."}]},
    ])
    late, early = read_rankings(path)
    assert late.prompt == [u1, a1, u2] and late.responses == ["Pear.", "Rock."] and not late.split_early
    assert early.prompt == [u1] and early.split_early and early.ranking == [[0], [1]]
    assert response_messages(early.responses[0]) == [a1, u2, {"role": "assistant", "content": "Pear."}]
    assert response_messages(early.responses[1]) == [{"role": "assistant", "content": "A rock."}, u2,
                                                     {"role": "assistant", "content": "Stone."}]


def test_trl_message_pairs_with_no_shared_user_turn_are_one_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
         "rejected": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
    ])
    with pytest.raises(AlignError, match=r"c.jsonl:1: 'chosen' and 'rejected' message lists share no user turn"):
        read_rankings(path)


def test_hh_shared_turns_are_compared_whitespace_normalised_and_kept_as_written():
    messages, chosen, rejected, early = _split_hh("\n\nHuman: hi  there\n\nAssistant: yo\n\nHuman: ok?\n\nAssistant: yes",
                                                  "\n\nHuman: hi there\n\nAssistant: yo \n\nHuman: ok?\n\nAssistant: no",
                                                  "x:1")
    assert not early and (chosen, rejected) == ("yes", "no")
    assert [m["content"] for m in messages] == ["hi  there", "yo", "ok?"]  # chosen's text, not re-spaced
    # an earlier turn that really differs still splits there; a whitespace difference before it does not
    messages, chosen, rejected, early = _split_hh("\n\nHuman: a  b\n\nAssistant: c\n\nHuman: d\n\nAssistant: e",
                                                  "\n\nHuman: a b\n\nAssistant: X\n\nHuman: d\n\nAssistant: e",
                                                  "x:2")
    assert early and messages == [{"role": "user", "content": "a  b"}]
    assert (chosen, rejected) == ("c\n\nHuman: d\n\nAssistant: e", "X\n\nHuman: d\n\nAssistant: e")


def test_hh_crlf_transcripts_are_read_like_lf(tmp_path):
    rec = {"chosen": "\r\n\r\nHuman: Hi?\r\n\r\nAssistant: Hello.\r\n\r\nHuman: Bye?\r\n\r\nAssistant: Bye!",
           "rejected": "\r\n\r\nHuman: Hi?\r\n\r\nAssistant: Hello.\r\n\r\nHuman: Bye?\r\n\r\nAssistant: No."}
    (record,) = read_rankings(write_jsonl(tmp_path / "hh.jsonl", [rec]))
    assert record.prompt == [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
                             {"role": "user", "content": "Bye?"}]
    assert record.responses == ["Bye!", "No."] and not record.split_early


def test_trl_message_pairs_compare_shared_turns_whitespace_normalised(tmp_path):
    """A trailing newline or doubled space in one copy of a shared turn is the same conversation (as for HH):
    the pair keeps its one-turn responses and chosen's texts, not an early split."""
    u1, a1 = {"role": "user", "content": "Name a  fruit."}, {"role": "assistant", "content": "Apple."}
    u2 = {"role": "user", "content": "Another?"}
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"chosen": [u1, a1, u2, {"role": "assistant", "content": "Pear."}],
         "rejected": [{"role": "user", "content": "Name a fruit.\n"}, {"role": "assistant", "content": "Apple. "},
                      u2, {"role": "assistant", "content": "Rock."}]},
        {"chosen": [u1, a1, u2, {"role": "assistant", "content": "Pear."}],
         "rejected": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "A  rock."},
                      u2, {"role": "assistant", "content": "Stone."}]},
    ])
    same, differs = read_rankings(path)
    assert not same.split_early and same.prompt == [u1, a1, u2] and same.responses == ["Pear.", "Rock."]
    assert differs.split_early and differs.prompt == [u1]  # a real difference in turn 2 still splits there
