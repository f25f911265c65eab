"""Our seed file is well formed and varied; files in the original format load; bad lines fail clearly."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from align.data_gen.filters import instruction_drop_reason
from align.data_gen.seeds import default_seed_path, load_seed_tasks
from align.errors import AlignError

# Two lines copied in shape from yizhongw/self-instruct's seed_tasks.jsonl (content our own).
ORIGINAL_STYLE = (
    '{"id": "seed_task_0", "name": "breakfast_ideas", "instruction": "Is there anything I can eat for a '
    'breakfast that doesn\'t include eggs, yet includes protein?", "instances": [{"input": "", "output": '
    '"Yes: Greek yogurt with nuts, or a tofu scramble."}], "is_classification": false}\n'
    '{"id": "seed_task_1", "name": "antonym", "instruction": "Give the antonym of the word.", "instances": '
    '[{"input": "hot", "output": "cold"}, {"input": "early", "output": "late"}], "is_classification": false}\n'
)


def test_our_seed_file_is_large_valid_and_unique():
    tasks = load_seed_tasks()
    assert len(tasks) >= 110
    assert [t.id for t in tasks] == [f"seed_task_{i}" for i in range(len(tasks))]
    assert len({t.name for t in tasks}) == len(tasks)
    assert len({t.instruction.lower() for t in tasks}) == len(tasks)
    for t in tasks:
        assert t.name and t.name == t.name.lower() and " " not in t.name
        assert t.instances and all(inst.output.strip() for inst in t.instances)
        assert instruction_drop_reason(t.instruction) is None, t.instruction


def test_our_seed_file_is_diverse():
    tasks = load_seed_tasks()
    share = sum(t.is_classification for t in tasks) / len(tasks)
    assert 0.25 <= share <= 0.40
    first_words = Counter(t.instruction.split()[0].lower() for t in tasks)
    assert first_words.most_common(1)[0][1] / len(tasks) < 0.2
    assert sum(bool(t.instances[0].input) for t in tasks) >= len(tasks) // 3


def test_our_seed_file_lines_are_in_the_standard_key_order():
    for line in default_seed_path().read_text(encoding="utf-8").splitlines():
        assert list(json.loads(line)) == ["id", "name", "instruction", "instances", "is_classification"]


def test_original_format_loads(tmp_path):
    path = tmp_path / "seed_tasks.jsonl"
    path.write_text(ORIGINAL_STYLE + "\n", encoding="utf-8")
    tasks = load_seed_tasks(path)
    assert [t.name for t in tasks] == ["breakfast_ideas", "antonym"]
    assert [(i.input, i.output) for i in tasks[1].instances] == [("hot", "cold"), ("early", "late")]
    assert tasks[0].first_instance.input == ""


def test_extra_keys_are_ignored(tmp_path):
    path = tmp_path / "s.jsonl"
    rec = {"id": "a", "name": "n", "instruction": "Do it.", "instances": [{"input": "", "output": "ok"}],
           "is_classification": True, "category": "misc"}
    path.write_text(json.dumps(rec) + "\n")
    assert load_seed_tasks(path)[0].is_classification is True


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"id": "x", "name": "n", "instances": [{"input": "", "output": "o"}], "is_classification": false}', "'instruction'"),
        ('{"id": "x", "name": "n", "instruction": "Hi there.", "instances": [], "is_classification": false}', "'instances'"),
        ('{"id": "x", "name": "n", "instruction": "Hi there.", "instances": [{"input": "a"}], "is_classification": false}', "'instances.0.output'"),
        ('{"id": "x", "name": "n", "instruction": "Hi there.", "instances": [{"output": "o"}], "is_classification": "maybe"}', "'is_classification'"),
        ('{"id": "x", "name": "n", "instruction": "  ", "instances": [{"output": "o"}], "is_classification": false}', "'instruction'"),
    ],
)
def test_malformed_lines_name_file_line_and_expectation(tmp_path, line, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(ORIGINAL_STYLE + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(AlignError) as info:
        load_seed_tasks(path)
    message = str(info.value)
    assert f"{path}:4" in message  # two good lines, a blank line, then the bad one
    assert expected in message


def test_duplicate_ids_missing_file_and_empty_file(tmp_path):
    path = tmp_path / "dup.jsonl"
    first = ORIGINAL_STYLE.splitlines()[0]
    path.write_text(first + "\n" + first + "\n")
    with pytest.raises(AlignError, match=r"dup.jsonl:2: duplicate id 'seed_task_0' \(first used on line 1\)"):
        load_seed_tasks(path)
    with pytest.raises(AlignError, match="not found"):
        load_seed_tasks(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(AlignError, match="no seed tasks"):
        load_seed_tasks(tmp_path / "empty.jsonl")
