"""Data loading: every accepted format becomes prompt/completion; bad records name file and line."""

from __future__ import annotations

import json

import pytest

from align.data import load_examples, split_examples
from align.errors import AlignError


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_alpaca_json(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"instruction": "Add.", "input": "2 and 3", "output": "5"},
                                {"instruction": "Say hi.", "input": "", "output": "Hi"}]))
    ex = load_examples(str(path))
    assert ex[0]["prompt"] == [{"role": "user", "content": "Add.\n\n2 and 3"}]
    assert ex[0]["completion"] == [{"role": "assistant", "content": "5"}]
    assert ex[1]["prompt"][0]["content"] == "Say hi."


def test_self_instruct_one_example_per_instance(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"instruction": "Classify.", "is_classification": True,
                                                "instances": [{"input": "a", "output": "x"}, {"input": "b", "output": "y"}]}])
    ex = load_examples(str(path))
    assert [e["completion"][0]["content"] for e in ex] == ["x", "y"]


def test_chat_last_assistant_is_completion(tmp_path):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "a2"}]
    ex = load_examples(str(write_jsonl(tmp_path / "c.jsonl", [{"messages": msgs}])))
    assert len(ex[0]["prompt"]) == 4 and ex[0]["completion"][0]["content"] == "a2"


def test_system_prompt_and_max_samples(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)])
    ex = load_examples({"path": str(path), "max_samples": 3, "system_prompt": "Be brief."})
    assert len(ex) == 3 and ex[0]["prompt"][0] == {"role": "system", "content": "Be brief."}


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "oops"\n')
    with pytest.raises(AlignError, match=rf"{path}:2: not valid JSON"):
        load_examples(str(path))


def test_unrecognised_record_names_line_and_expected_keys(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"instruction": "a", "output": "b"}, {"question": "q"}])
    with pytest.raises(AlignError) as err:
        load_examples(str(path))
    assert f"{path}:2" in str(err.value) and "Alpaca" in str(err.value)


def test_wrong_type_and_empty_output(tmp_path):
    with pytest.raises(AlignError, match=r":1: key 'output' must be a string"):
        load_examples(str(write_jsonl(tmp_path / "t.jsonl", [{"instruction": "a", "output": 3}])))
    with pytest.raises(AlignError, match="empty output"):
        load_examples(str(write_jsonl(tmp_path / "e.jsonl", [{"instruction": "a", "output": "  "}])))


def test_bad_chat_role(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"messages": [{"role": "human", "content": "x"}]}])
    with pytest.raises(AlignError, match=r"messages\[0\].role is 'human'"):
        load_examples(str(path))


def test_csv_through_datasets(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,input,output\nSay yes.,,yes\n")
    ex = load_examples(str(path))
    assert ex[0]["completion"][0]["content"] == "yes"


def test_missing_file():
    with pytest.raises(AlignError, match="not found"):
        load_examples("./no/such/file.jsonl")


def test_split_is_deterministic_and_disjoint():
    ex = [{"i": i} for i in range(20)]
    a1, b1 = split_examples(ex, 0.25, seed=1)
    a2, b2 = split_examples(ex, 0.25, seed=1)
    assert a1 == a2 and b1 == b2 and len(b1) == 5
    assert not {e["i"] for e in a1} & {e["i"] for e in b1}


def test_gold_prompt_splits_by_name():
    from align.data import load_prompts

    train, heldout = load_prompts("gold:train"), load_prompts("gold:heldout")
    assert len(train) == 315 and len(heldout) == 105
    assert not {p[-1]["content"] for p in train} & {p[-1]["content"] for p in heldout}
    with pytest.raises(AlignError, match="the gold splits are train and heldout"):
        load_prompts("gold:test")
    focus_train, focus_heldout = load_prompts("gold:focus:train"), load_prompts("gold:focus:heldout")
    assert len(focus_train) == 225 and len(focus_heldout) == 75
    with pytest.raises(AlignError, match="shipped sets are full, focus"):
        load_prompts("gold:nope:train")


@pytest.mark.parametrize("name", ["empty.json", "empty.jsonl"])
def test_empty_file_says_so_with_its_path(tmp_path, name):
    path = tmp_path / name
    path.write_text("\n  \n")
    with pytest.raises(AlignError) as err:
        load_examples(str(path))
    assert str(err.value).startswith(f"{path}: empty file") and "Expecting value" not in str(err.value)


def test_hub_dataset_id_without_network_fails_fast(monkeypatch):
    import time

    from huggingface_hub import constants

    from align import hub

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # a closed local port: no Hub
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    hub._probe.cache_clear()
    started = time.perf_counter()
    with pytest.raises(AlignError, match="'align-tests/no-such-data' is a Hugging Face Hub id, but this machine has "
                                         "no access to the Hugging Face Hub"):
        load_examples("align-tests/no-such-data")
    assert time.perf_counter() - started < 60  # no retries with backoff; loose for a busy machine
    hub._probe.cache_clear()
