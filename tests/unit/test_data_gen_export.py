"""Exports are loadable by datasets.load_dataset("json") and by align's own data loader."""

from __future__ import annotations

import json

import pytest

from align.data import load_examples
from align.data_gen.export import (
    export,
    to_alpaca,
    write_alpaca_json,
    write_chat_jsonl,
    write_self_instruct_jsonl,
)
from align.data_gen.seeds import load_seed_tasks
from align.errors import AlignError

TASKS = [
    {
        "instruction": "Give the antonym of the word.",
        "instances": [{"input": "hot", "output": "cold"}, {"input": "early", "output": "late"}],
        "is_classification": False,
    },
    {"instruction": "Name a prime number larger than 10.", "instances": [{"input": "", "output": "13"}]},
]


def test_alpaca_records_one_per_instance():
    assert to_alpaca(TASKS) == [
        {"instruction": "Give the antonym of the word.", "input": "hot", "output": "cold"},
        {"instruction": "Give the antonym of the word.", "input": "early", "output": "late"},
        {"instruction": "Name a prime number larger than 10.", "input": "", "output": "13"},
    ]


def test_all_formats_load_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    alpaca = write_alpaca_json(TASKS, tmp_path / "alpaca.json")
    si = write_self_instruct_jsonl(TASKS, tmp_path / "si.jsonl")
    chat = write_chat_jsonl(TASKS, tmp_path / "chat.jsonl")
    cache = str(tmp_path / "hf-cache")

    ds = datasets.load_dataset("json", data_files=str(alpaca), split="train", cache_dir=cache)
    assert ds.column_names == ["instruction", "input", "output"] and ds.num_rows == 3
    assert ds[1]["output"] == "late"

    ds = datasets.load_dataset("json", data_files=str(si), split="train", cache_dir=cache)
    assert ds.num_rows == 2 and ds[0]["instances"][1] == {"input": "early", "output": "late"}
    assert ds[1]["id"] == "task_1" and ds[1]["is_classification"] is False

    ds = datasets.load_dataset("json", data_files=str(chat), split="train", cache_dir=cache)
    assert ds.num_rows == 3
    assert ds[0]["messages"] == [
        {"role": "user", "content": "Give the antonym of the word.\n\nhot"},
        {"role": "assistant", "content": "cold"},
    ]
    assert ds[2]["messages"][0]["content"] == "Name a prime number larger than 10."


def test_exports_feed_align_data_loader(tmp_path):
    for fmt, name in [("alpaca", "a.json"), ("self_instruct", "s.jsonl"), ("chat", "c.jsonl")]:
        path = export(TASKS, tmp_path / name, fmt)
        examples = load_examples(str(path))
        assert len(examples) == 3
        assert examples[0]["completion"] == [{"role": "assistant", "content": "cold"}]


def test_self_instruct_export_round_trips_seed_tasks(tmp_path):
    from align.data_gen.seeds import load_seed_tasks as load

    seeds = load_seed_tasks()[:5]
    path = write_self_instruct_jsonl(seeds, tmp_path / "seeds.jsonl")
    assert load(path) == seeds
    assert json.loads(path.read_text().splitlines()[0])["id"] == "seed_task_0"


def test_bad_tasks_and_formats_are_rejected(tmp_path):
    with pytest.raises(AlignError, match="task 0"):
        to_alpaca([{"instruction": "x"}])
    with pytest.raises(AlignError, match=r"instances\[0\]"):
        to_alpaca([{"instruction": "x", "instances": [{"input": "a"}]}])
    with pytest.raises(AlignError, match="unknown export format 'csv'"):
        export(TASKS, tmp_path / "x.csv", "csv")


@pytest.mark.parametrize("writer", [write_alpaca_json, write_chat_jsonl, write_self_instruct_jsonl])
def test_a_failed_write_leaves_the_previous_file_whole(tmp_path, writer):
    """Exports are written to a temporary file and renamed into place: never half a file, never a stray temp."""
    path = tmp_path / "out.json"
    writer(TASKS, path)
    before = path.read_bytes()
    with pytest.raises(AlignError):
        writer([*TASKS, {"instruction": "broken"}], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
